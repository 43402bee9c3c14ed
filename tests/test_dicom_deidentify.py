"""De-identification of DICOM headers (PS3.15 Basic Profile) on real DICOM files."""

from __future__ import annotations

import io
import logging
import re
import warnings
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.data import get_testdata_file

from medmeta.dicom.basic_profile import BASIC_PROFILE
from medmeta.dicom.deidentify import DeidResult, deidentify
from medmeta.pseudonyms import Pseudonymizer

PSEUDO = Pseudonymizer(b"test-key-0123456789abcdef")
MARKER = "PHIMARK7731"
UID_MARKER = "1.2.826.0.1.3680043.9.7731.424242"
UID_MARKER_DIGITS = "7731.424242"
STRING_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
# Retain Patient Characteristics Option: kept on purpose, so not planted.
KEPT_BY_OPTION = {0x00100040, 0x00101010}  # PatientSex, PatientAge
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def pydicom_data_dir() -> Path:
    data_store = pytest.importorskip("data_store")
    return Path(data_store.__file__).parent / "data"


def read(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name), force=True)


def profile_tags(vrs: set[str]) -> list[int]:
    """Table attributes with one of ``vrs`` that the profile does not keep."""
    return [
        tag
        for tag, action in BASIC_PROFILE.items()
        if action != "K" and tag not in KEPT_BY_OPTION and tag >> 16 not in (0x0000, 0x0002)
        and dictionary_VR(tag) in vrs
    ]


def planted_value(vr: str, index: int) -> str:
    if vr == "UI":
        return f"{UID_MARKER}.{index}"
    if vr == "UR":
        return f"http://{MARKER}.example/"
    return MARKER


def plant(ds: Dataset) -> None:
    """Put the markers into every string attribute and UID of the table, into private tags,
    and into PNs the table does not list."""
    for index, tag in enumerate(profile_tags(STRING_VRS | {"UI"})):
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, planted_value(vr, index))
    for tag in unlisted_person_name_tags():
        ds.add_new(tag, "PN", MARKER)
    block = ds.private_block(0x0011, f"{MARKER} CREATOR", create=True)
    block.add_new(0x01, "LO", MARKER)
    block.add_new(0x02, "UI", f"{UID_MARKER}.999")
    ds.add_new(0x00190010, "LO", MARKER)  # a private creator with no block behind it


def unlisted_person_name_tags() -> list[int]:
    entries = pydicom.datadict.DicomDictionary.items()
    return [tag for tag, entry in entries if entry[0] == "PN" and tag not in BASIC_PROFILE]


def marked_item() -> Dataset:
    item = Dataset()
    plant(item)
    inner = Dataset()
    plant(inner)
    item.ReferencedSeriesSequence = [inner]  # a sequence the table does not list: walked
    return item


def plant_nested(ds: Dataset) -> None:
    ds.ReferencedSeriesSequence = [marked_item()]  # not in the table: kept and walked
    ds.ReferencedImageSequence = [marked_item()]  # X/Z/U*: kept and walked
    for tag in profile_tags({"SQ"}):  # sequences the table removes or empties
        ds.add_new(tag, "SQ", [marked_item()])


def serialized(ds: Dataset) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds.to_json(), buffer.getvalue()


def private_tags(ds: Dataset) -> list[int]:
    found = []
    for elem in ds.elements():
        if elem.tag.is_private:
            found.append(elem.tag)
        elif isinstance(elem, DataElement) and elem.VR == "SQ":
            for item in elem.value:
                found.extend(private_tags(item))
    return found


def dicom_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_no_planted_phi_survives_anywhere():
    ds = read("CT_small.dcm")
    plant(ds)
    plant_nested(ds)
    ds.file_meta.SourceApplicationEntityTitle = MARKER
    ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_MARKER}.1000"
    as_json, as_bytes = serialized(ds)
    assert MARKER in as_json and MARKER.encode() in as_bytes  # the test plants what it checks

    deidentify(ds, PSEUDO)

    as_json, as_bytes = serialized(ds)
    for text in (MARKER, UID_MARKER_DIGITS):
        assert text not in as_json
        assert text.encode() not in as_bytes
    assert private_tags(ds) == []


def test_profile_table_is_complete_and_well_formed():
    assert len(BASIC_PROFILE) > 500
    actions = {"X", "Z", "D", "U", "K", "C", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert set(BASIC_PROFILE.values()) <= actions
    for tag in BASIC_PROFILE:
        get_entry(tag)  # every tag is a real attribute
    assert BASIC_PROFILE[0x00100010] == "Z"  # PatientName
    assert BASIC_PROFILE[0x0020000D] == "U"  # StudyInstanceUID
    assert BASIC_PROFILE[0x00081140] == "X/Z/U*"  # ReferencedImageSequence


def test_uids_are_replaced_consistently():
    first, second = read("CT_small.dcm"), read("MR_small.dcm")
    shared_study = "1.2.826.0.1.3680043.9.7731.1"
    first.StudyInstanceUID = second.StudyInstanceUID = shared_study
    original_series = (first.SeriesInstanceUID, second.SeriesInstanceUID)

    deidentify(first, PSEUDO)
    deidentify(second, PSEUDO)

    assert first.StudyInstanceUID == second.StudyInstanceUID == PSEUDO.uid(shared_study)
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SeriesInstanceUID == PSEUDO.uid(original_series[0])
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    for uid in (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID):
        assert len(uid) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)+", uid)
        assert uid not in original_series


def test_uids_inside_sequences_are_replaced():
    ds = read("rtplan.dcm")
    referenced = ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID

    deidentify(ds, PSEUDO)

    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == PSEUDO.uid(referenced)


def test_referenced_image_sequence_keeps_its_links_with_new_uids():
    ds = read("CT_small.dcm")
    image = Dataset()
    image.ReferencedSOPClassUID = ds.SOPClassUID
    image.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7731.2"
    image.PatientID = "OTHER-MRN"
    ds.ReferencedImageSequence = [image]  # X/Z/U*: the UIDs inside are replaced

    deidentify(ds, PSEUDO)

    (item,) = ds.ReferencedImageSequence
    assert item.ReferencedSOPClassUID == ds.SOPClassUID
    assert item.ReferencedSOPInstanceUID == PSEUDO.uid("1.2.826.0.1.3680043.9.7731.2")
    assert item.PatientID == PSEUDO.patient_id("OTHER-MRN")


def test_dates_are_shifted_and_intervals_kept():
    ds = read("CT_small.dcm")
    mrn = str(ds.PatientID).strip()
    ds.PatientBirthDate = "19500101"
    ds.StudyDate, ds.AcquisitionDate = "20040119", "20040301"
    ds.AcquisitionDateTime = "20040301112936.123456+0100"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it is not a DA value
        ds.SeriesDate = "2004-03-01"  # and so it is removed

    result = deidentify(ds, PSEUDO)

    offset = PSEUDO.date_offset_days(mrn)
    assert result == DeidResult(patient_id=PSEUDO.patient_id(mrn), date_offset_days=offset)
    assert ds.StudyDate == (date(2004, 1, 19) + timedelta(days=offset)).strftime("%Y%m%d")
    study, acquisition = (date.fromisoformat(str(v)) for v in (ds.StudyDate, ds.AcquisitionDate))
    assert acquisition - study == date(2004, 3, 1) - date(2004, 1, 19)
    assert ds.AcquisitionDateTime == ds.AcquisitionDate + "112936.123456+0100"
    assert "PatientBirthDate" not in ds
    assert "SeriesDate" not in ds
    assert ds.StudyTime == "" and ds.SeriesTime == "000000"  # times follow the table: Z, X/D
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_without_patient_id_dates_are_removed():
    ds = read("CT_small.dcm")
    del ds.PatientID

    result = deidentify(ds, PSEUDO)

    assert result == DeidResult(patient_id=None, date_offset_days=None)
    assert "StudyDate" not in ds and "ContentDate" not in ds
    assert ds.PatientName == ""
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_patient_characteristics():
    ds = read("CT_small.dcm")
    ds.PatientSex, ds.PatientAge = "F", "093Y"

    deidentify(ds, PSEUDO)

    assert ds.PatientSex == "F"
    assert ds.PatientAge == "090Y"
    younger = read("CT_small.dcm")
    younger.PatientAge = "045Y"
    deidentify(younger, PSEUDO)
    assert younger.PatientAge == "045Y"


def test_marks_the_dataset_and_still_writes_and_reads():
    ds = read("CT_small.dcm")
    mrn = str(ds.PatientID).strip()
    pixels = ds.PixelData

    deidentify(ds, PSEUDO)

    _, as_bytes = serialized(ds)
    again = pydicom.dcmread(io.BytesIO(as_bytes))
    assert again.PatientIdentityRemoved == "YES"
    assert again.PatientID == again.PatientName == PSEUDO.patient_id(mrn)
    codes = [item.CodeValue for item in again.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108"]
    schemes = {item.CodingSchemeDesignator for item in again.DeidentificationMethodCodeSequence}
    assert schemes == {"DCM"}
    assert "medmeta" in again.DeidentificationMethod
    assert again.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert again.PixelData == pixels
    assert again.pixel_array.shape == (128, 128)


def test_pydicom_neither_warns_nor_logs_while_deidentifying(caplog):
    def with_overlong_patient_id() -> Dataset:
        ds = read("CT_small.dcm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.PatientID = MARKER * 8  # longer than LO allows: pydicom warns on reading it
        _, as_bytes = serialized(ds)
        return pydicom.dcmread(io.BytesIO(as_bytes))

    with pytest.warns(UserWarning):
        with_overlong_patient_id().PatientID  # noqa: B018 - the read is what warns
    ds = with_overlong_patient_id()
    caplog.clear()

    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        result = deidentify(ds, PSEUDO)

    assert seen == [] and caplog.records == []
    assert result.patient_id == PSEUDO.patient_id(MARKER * 8)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the odd files it reads
@pytest.mark.parametrize("folder", ["pydicom", "pydicom-data"])
def test_every_test_file_deidentifies_without_error(folder):
    root = PYDICOM_TEST_FILES if folder == "pydicom" else pydicom_data_dir()
    done = 0
    for path in dicom_files(root):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001 - not a file pydicom reads: out of scope
            continue
        deidentify(ds, PSEUDO)
        assert private_tags(ds) == [], path.name
        assert ds.PatientIdentityRemoved == "YES"
        done += 1
    assert done > 20
