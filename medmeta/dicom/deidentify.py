"""De-identify a DICOM header: PS3.15 Annex E Basic Application Level Confidentiality Profile.

Options applied on top of the Basic Profile (``medmeta.dicom.basic_profile``):

- Retain Longitudinal Temporal Information with Modified Dates: every DA and DT attribute
  the table would remove, empty or dummy is shifted by the patient's date offset instead (DT
  keeps its time part). Without a Patient ID such dates are removed. Times follow the table.
- Retain Patient Characteristics, for Patient's Sex only (kept); Patient's Age is kept but
  capped at 090Y. Patient's Birth Date is always removed.

Beyond the table: private attributes are removed at every depth, any other PN is replaced
by a dummy, public attributes whose VR is unknown are removed, and so are group lengths,
the file meta attributes that name systems or carry private data, and the preamble's
content. Pixel Data is never decoded or changed. Steps are looked up by (tag, VR), so
elements that need nothing are never converted from their raw form.

Choices the table leaves open: a sequence that is to be emptied or dummied (Z, D) becomes
an empty sequence (a valid dummy item can not be made up in general); an X/Z/U* sequence is
kept and walked, so the instance UIDs inside get new UIDs and the rest of each item follows
the table.

Messages never quote values: an element whose value can not be converted is removed.
"""

from __future__ import annotations

import contextvars
import logging
import re
import warnings
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from medmeta.dicom.basic_profile import BASIC_PROFILE, REPEATING_GROUPS
from medmeta.pseudonyms import Pseudonymizer

DUMMY_TEXT = "ANONYMIZED"
MAX_AGE_YEARS = 89
CAPPED_AGE = "090Y"
DEIDENTIFICATION_METHOD = [
    "DICOM PS3.15 Basic Application Confidentiality Profile",
    "Retain Longitudinal Temporal Information Modified Dates Option",
    "Retain Patient Characteristics Option (sex; age capped at 90Y)",
    "medmeta",
]
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
PATIENT_CHARACTERISTICS_CODE = ("113108", "Retain Patient Characteristics Option")

PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_NAME = 0x00100010
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
PATIENT_AGE = 0x00101010
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
# File meta attributes that name the sending or receiving systems, or carry private data.
FILE_META_REMOVED = (
    0x00020016,  # SourceApplicationEntityTitle
    0x00020017,  # SendingApplicationEntityTitle
    0x00020018,  # ReceivingApplicationEntityTitle
    0x00020026,  # SourcePresentationAddress
    0x00020027,  # SendingPresentationAddress
    0x00020028,  # ReceivingPresentationAddress
    0x00020100,  # PrivateInformationCreatorUID
    0x00020102,  # PrivateInformation
)

# What is done to one element; resolved once per (tag, VR).
KEEP = "keep"
REMOVE = "remove"
EMPTY = "empty"
DUMMY = "dummy"
NEW_UID = "new_uid"
SHIFT_DATE = "shift_date"
WALK = "walk"
PSEUDONYM_ID = "pseudonym_id"
PSEUDONYM_NAME = "pseudonym_name"
CAP_AGE = "cap_age"

SPECIAL_STEPS = {
    PATIENT_ID: PSEUDONYM_ID,
    PATIENT_NAME: PSEUDONYM_NAME,
    PATIENT_BIRTH_DATE: REMOVE,
    PATIENT_SEX: KEEP,
    PATIENT_AGE: CAP_AGE,
}
# Combined actions of the table, reduced to the one this module applies.
COMBINED_ACTIONS = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D"}
TEXT_VRS = {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
STRING_VRS = TEXT_VRS | {"DA", "DS", "DT", "IS", "TM", "UI"}
ASCII_VRS = {"AS", "DA", "DT", "UI"}  # values in the default repertoire whatever the charset
BYTES_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
DUMMY_BY_VR = {
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "TM": "000000",
    "UR": "https://anonymized.invalid/",
}
Element = DataElement | RawDataElement
AGE_PATTERN = re.compile(r"(\d{3})([DWMY])")  # three digits fit at most 999 months: < 90 years


_QUIET = contextvars.ContextVar("medmeta_deidentifying", default=False)


class _DropWhileDeidentifying(logging.Filter):
    """pydicom logs what it warns, values included: drop its records during ``deidentify``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _QUIET.get()


logging.getLogger("pydicom").addFilter(_DropWhileDeidentifying())


@dataclass(frozen=True)
class DeidResult:
    """What ``deidentify`` did that the caller needs to know."""

    patient_id: str | None  # the pseudonym of the Patient ID, None when there was none
    date_offset_days: int | None  # the shift applied to dates, None when they were removed


def deidentify(ds: Dataset, pseudo: Pseudonymizer, issuer_aliases: tuple[tuple[str, str], ...] = ()) -> DeidResult:
    """De-identify ``ds`` in place (file meta included) and say how.

    The Patient ID is pseudonymised within its issuer (IssuerOfPatientID, through
    ``issuer_aliases`` when the records name the same issuer otherwise), as records are.
    """
    quiet = _QUIET.set(True)
    try:
        with warnings.catch_warnings():  # pydicom's warnings may quote the values they reject
            warnings.simplefilter("ignore")
            return _deidentify(ds, pseudo, dict(issuer_aliases))
    finally:
        _QUIET.reset(quiet)


def _deidentify(ds: Dataset, pseudo: Pseudonymizer, issuer_aliases: dict[str, str]) -> DeidResult:
    mrn = _patient_id_text(ds)
    issuer = _issuer_text(ds)
    issuer = issuer_aliases.get(issuer, issuer) or None
    patient_id = pseudo.patient_id(mrn, issuer) if mrn else None
    offset = pseudo.date_offset_days(mrn, issuer) if mrn else None
    cleaner = _Cleaner(pseudo, patient_id, offset)
    cleaner.clean(ds, top_level=True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        cleaner.clean_file_meta(meta)
    _mark_deidentified(ds, dates_shifted=offset is not None)
    if getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128
    return DeidResult(patient_id=patient_id, date_offset_days=offset)


class _Cleaner:
    def __init__(self, pseudo: Pseudonymizer, patient_id: str | None, offset: int | None):
        self.pseudo = pseudo
        self.patient_id = patient_id
        self.offset = offset

    def clean(self, ds: Dataset, top_level: bool = False) -> None:
        for elem in list(ds.values()):  # raw elements stay raw unless a step needs the value
            step, vr = _step_for(int(elem.tag), elem.VR)
            if step == KEEP or (step in (EMPTY, DUMMY) and _is_empty(elem)):
                continue
            try:
                self.apply(ds, elem.tag, elem, step, vr, top_level)
            except Exception:  # noqa: BLE001 - a malformed element is dropped, never quoted
                ds.pop(elem.tag, None)

    def clean_file_meta(self, meta: Dataset) -> None:
        for tag in FILE_META_REMOVED:
            if tag in meta:
                del meta[tag]
        tag = BaseTag(MEDIA_STORAGE_SOP_INSTANCE_UID)
        if tag in meta:
            try:
                self.apply(meta, tag, meta.get_item(tag), NEW_UID, "UI", False)
            except Exception:  # noqa: BLE001
                meta.pop(tag, None)

    def apply(
        self, ds: Dataset, tag: BaseTag, elem: Element, step: str, vr: str, top_level: bool
    ) -> None:
        if step == REMOVE:
            del ds[tag]
        elif step == WALK:
            for item in ds[tag].value:
                self.clean(item)
        else:
            new_value = self.new_value(ds, tag, elem, step, vr, top_level)
            if new_value is None:
                del ds[tag]
            else:
                ds[tag] = _element(tag, vr, new_value)

    def new_value(
        self, ds: Dataset, tag: BaseTag, elem: Element, step: str, vr: str, top_level: bool
    ) -> object:
        """The element's new value; None to remove it."""
        if step == EMPTY:
            return _empty(vr)
        if step == DUMMY:
            return _dummy(vr)
        if step == PSEUDONYM_NAME:
            return (self.patient_id or "") if top_level else DUMMY_TEXT
        texts = _old_texts(ds, tag, elem, vr)
        if not texts:
            return ""
        if step == NEW_UID:
            return _one_or_many([self.pseudo.uid(uid) for uid in texts])
        if step == SHIFT_DATE:
            if self.offset is None:
                return None
            shifted = [_shift(text, vr, self.offset) for text in texts]
            return None if None in shifted else _one_or_many(shifted)
        if step == PSEUDONYM_ID:
            return self.pseudo.patient_id("\\".join(texts))
        if step == CAP_AGE:
            return _capped_age("\\".join(texts))
        raise ValueError("unknown step")


def _old_texts(ds: Dataset, tag: BaseTag, elem: Element, vr: str) -> list[str]:
    """The old values as stripped text. ASCII-only VRs are read from the raw bytes, which is
    quicker than pydicom's conversion; others are converted (with the character set)."""
    if isinstance(elem, RawDataElement) and vr in ASCII_VRS and isinstance(elem.value, bytes):
        text = elem.value.decode("latin-1").strip(" \x00")
        return [part.strip(" \x00") for part in text.split("\\")] if text else []
    converted = ds[tag]
    if converted.VR != vr:
        raise ValueError("the element does not have the expected VR")
    return _texts(converted.value)


_STEP_CACHE: dict[str | None, dict[int, tuple[str, str]]] = {}  # VR -> tag -> (step, VR)


def _step_for(tag: int, vr: str | None) -> tuple[str, str]:
    """The step for an element and the VR to write it with; cached per (tag, VR)."""
    if tag & 0x10000:
        return REMOVE, "UN"  # private (odd group): not cached, there are too many
    steps = _STEP_CACHE.get(vr)
    if steps is None:
        steps = _STEP_CACHE[vr] = {}
    found = steps.get(tag)
    if found is None:
        found = steps[tag] = _resolve_step(tag, vr)
    return found


def _resolve_step(tag: int, raw_vr: str | None) -> tuple[str, str]:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 or (element == 0 and group != 0x0002):
        return REMOVE, "UN"  # private attributes and group lengths
    vr = _known_vr(tag, raw_vr)
    if vr is None:
        return REMOVE, "UN"  # content that can not be vetted
    if tag in SPECIAL_STEPS:
        return SPECIAL_STEPS[tag], vr
    action = _table_action(tag)
    return _step_for_action(action, vr), vr


def _known_vr(tag: int, raw_vr: str | None) -> str | None:
    if raw_vr and raw_vr != "UN":
        return raw_vr
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0]  # "US or SS" and the like: the file's VR was unknown anyway


def _table_action(tag: int) -> str | None:
    action = BASIC_PROFILE.get(tag)
    if action is None:
        for mask, value, group_action in REPEATING_GROUPS:
            if tag & mask == value:
                return group_action
    return action


def _step_for_action(action: str | None, vr: str) -> str:
    if action is None or action == "K":
        return DUMMY if vr == "PN" else WALK if vr == "SQ" else KEEP
    if action == "X/Z/U*":
        return NEW_UID if vr == "UI" else WALK if vr == "SQ" else EMPTY
    action = COMBINED_ACTIONS.get(action, action)
    if vr in ("DA", "DT"):
        return SHIFT_DATE  # X, Z, D and C all become a shift under the Modified Dates Option
    if action == "U" or (action == "D" and vr == "UI"):
        return NEW_UID if vr == "UI" else REMOVE
    if action in ("Z", "D") and vr == "SQ":
        return EMPTY
    return {"Z": EMPTY, "D": DUMMY}.get(action, REMOVE)  # X, C and anything unknown


def _element(tag: int, vr: str, value: object) -> DataElement:
    """A new element; not validated, as every value this module writes is valid."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _is_empty(elem: Element) -> bool:
    if isinstance(elem, RawDataElement):
        return elem.length == 0  # a deferred value is None but not empty
    return elem.is_empty


def _empty(vr: str) -> object:
    if vr == "SQ":
        return []
    return "" if vr in STRING_VRS else None


def _dummy(vr: str) -> object:
    if vr in DUMMY_BY_VR:
        return DUMMY_BY_VR[vr]
    if vr in TEXT_VRS:
        return DUMMY_TEXT
    if vr in BYTES_VRS:
        return b"\x00\x00"
    return 0


def _patient_id_text(ds: Dataset) -> str:
    """The stripped Patient ID (the MRN); empty when missing, empty or unreadable."""
    try:
        return "\\".join(_texts(ds[PATIENT_ID].value)) if PATIENT_ID in ds else ""
    except Exception:  # noqa: BLE001 - an unreadable Patient ID counts as none
        return ""


def _issuer_text(ds: Dataset) -> str:
    """The stripped Issuer of Patient ID; empty when missing or unreadable."""
    try:
        return "\\".join(_texts(ds[ISSUER_OF_PATIENT_ID].value)).strip() if ISSUER_OF_PATIENT_ID in ds else ""
    except Exception:  # noqa: BLE001 - an unreadable issuer counts as none
        return ""


def _texts(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def _one_or_many(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def _shift(text: str, vr: str, offset: int) -> str | None:
    """A DA or DT value moved by ``offset`` days; None when it is not a full date."""
    if text == "":
        return ""
    head, rest = text[:8], text[8:]
    if not head.isdigit() or len(head) < 8 or (vr == "DA" and rest):
        return None
    try:
        day = date(int(head[:4]), int(head[4:6]), int(head[6:8])) + timedelta(days=offset)
    except (ValueError, OverflowError):
        return None
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" + rest


def _capped_age(text: str) -> str | None:
    """An AS value, 090Y when over 89 years; None when it is not an AS value."""
    match = AGE_PATTERN.fullmatch(text)
    if match is None:
        return None
    over = match.group(2) == "Y" and int(match.group(1)) > MAX_AGE_YEARS
    return CAPPED_AGE if over else text


def _mark_deidentified(ds: Dataset, dates_shifted: bool) -> None:
    codes = [BASIC_PROFILE_CODE, PATIENT_CHARACTERISTICS_CODE]
    if dates_shifted:
        codes.insert(1, MODIFIED_DATES_CODE)
    marks = {
        0x00120062: ("CS", "YES"),  # PatientIdentityRemoved
        0x00120063: ("LO", DEIDENTIFICATION_METHOD),  # DeidentificationMethod
        0x00120064: ("SQ", [_code_item(*code) for code in codes]),  # ...MethodCodeSequence
        0x00280303: ("CS", "MODIFIED" if dates_shifted else "REMOVED"),
    }  # the last is LongitudinalTemporalInformationModified
    for tag, (vr, value) in marks.items():
        ds[BaseTag(tag)] = _element(tag, vr, value)


def _code_item(value: str, meaning: str) -> Dataset:
    item = {
        0x00080100: _element(0x00080100, "SH", value),  # CodeValue
        0x00080102: _element(0x00080102, "SH", "DCM"),  # CodingSchemeDesignator
        0x00080104: _element(0x00080104, "LO", meaning),  # CodeMeaning
    }
    return Dataset({BaseTag(tag): elem for tag, elem in item.items()})
