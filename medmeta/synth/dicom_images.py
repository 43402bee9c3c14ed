"""Synthetic CT and MR DICOM files, as a PACS export hands them over.

Each site has its own scanner, image size and mix of transfer syntaxes (Explicit VR Little
Endian mostly, plus RLE Lossless, JPEG 2000 Lossless, Implicit VR, Deflated). Headers carry
realistic PHI where real ones do: patient module, physicians, accession number, a nested
Request Attributes Sequence with a person name inside, and a private block. UIDs and dates are
drawn from the seed, so the same seed gives byte-identical files. File names are numbers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    UID,
)

from medmeta.synth.archive import write_zip
from medmeta.synth.cohort import LAST_RECORD, Cohort, Patient, age_at, build_cohort
from medmeta.synth.people import LAST_NAMES, MALE_FIRST, FEMALE_FIRST, dicom_person_name
from medmeta.synth.phantoms import render
from medmeta.synth.seeding import rng_for, uid_from

IMAGE_CHANCE = 0.85  # patients with any image
TWO_IMAGES_CHANCE = 0.4
COMPRESSED = (RLELossless, JPEG2000Lossless)
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
PRIVATE_CREATOR = "ACME_PACS 3.1"


@dataclass(frozen=True)
class SiteImaging:
    site: str
    institution: str
    address: str
    manufacturer: str
    models: dict[str, str]  # modality -> scanner model
    sizes: dict[str, int]  # modality -> rows = columns
    bits_stored: int
    signed_ct: bool
    charset: str
    syntaxes: tuple[tuple[str, float], ...]  # transfer syntax -> share
    serial: str  # the scanner's serial number


SITES = {
    "site_a": SiteImaging(
        "site_a", "Bayview General Hospital", "1200 Harbor Blvd, Boston, MA 02118", "SIEMENS",
        {"CT": "SOMATOM Definition AS"}, {"CT": 256}, 12, False, "ISO_IR 100",
        ((ExplicitVRLittleEndian, 0.7), (RLELossless, 0.15), (JPEG2000Lossless, 0.15)), "45123"),
    "site_b": SiteImaging(
        "site_b", "Sint Anna Ziekenhuis", "Oudegracht 200, 3511 AB Utrecht", "Philips Medical Systems",
        {"MR": "Ingenia"}, {"MR": 192}, 12, False, "ISO_IR 192",
        ((ExplicitVRLittleEndian, 0.6), (DeflatedExplicitVRLittleEndian, 0.25), (JPEG2000Lossless, 0.15)), "PMS70211"),
    "site_c": SiteImaging(
        "site_c", "Northern Research Infirmary", "Infirmary Road, Leeds LS1 4AP", "GE MEDICAL SYSTEMS",
        {"CT": "Revolution CT", "MR": "SIGNA Explorer"}, {"CT": 224, "MR": 160}, 16, True, "ISO_IR 100",
        ((ExplicitVRLittleEndian, 0.45), (ImplicitVRLittleEndian, 0.2), (RLELossless, 0.2),
         (JPEG2000Lossless, 0.15)), "GE8810034"),
}


@dataclass(frozen=True)
class Protocol:
    study: str  # StudyDescription
    series: str  # SeriesDescription
    body_part: str
    field_of_view: float  # mm
    thickness: str  # mm


PROTOCOLS = {
    "CT": Protocol("CT THORAX W/O CONTRAST", "Axial 5.0 B31f", "CHEST", 350.0, "5"),
    "MR": Protocol("MRI BRAIN W/O CONTRAST", "T1 SE AX", "HEAD", 230.0, "4"),
}


@dataclass(frozen=True)
class ImageSpec:
    purpose: str  # "cohort" or "bench": keeps the two sets of UIDs apart
    site: str
    number: int  # the file number within its site
    patient: Patient
    modality: str
    size: int
    transfer_syntax: str
    study_date: date

    @property
    def file_name(self) -> str:
        return f"{self.number:05d}.dcm"


# ---------------------------------------------------------------- planning


def mrn_issuer(site: str) -> str:
    """The issuer of a site's MRNs, as its records name it (FHIR identifier system, site mapping issuer)."""
    return f"urn:medmeta:{site.replace('_', '-')}:mrn"


def pick_syntax(rng: np.random.Generator, site: SiteImaging) -> str:
    uids, shares = zip(*site.syntaxes)
    return str(uids[int(rng.choice(len(uids), p=np.array(shares) / sum(shares)))])


def study_day(rng: np.random.Generator, patient: Patient, nth: int) -> date:
    offset = int(rng.integers(-10, 60)) + nth * int(rng.integers(30, 300))
    return min(patient.diagnosis_date + timedelta(days=offset), LAST_RECORD)


def patient_images(rng: np.random.Generator, purpose: str, patient: Patient, count: int, first_number: int,
                   size: int | None = None) -> list[ImageSpec]:
    """``count`` image specs for one patient, numbered from ``first_number`` (``size``: the site's)."""
    site = SITES[patient.site]
    specs = []
    for nth in range(count):
        modality = str(rng.choice(sorted(site.sizes)))
        specs.append(ImageSpec(purpose, patient.site, first_number + nth, patient, modality,
                               size or site.sizes[modality], pick_syntax(rng, site), study_day(rng, patient, nth)))
    return specs


def plan_cohort_images(cohort: Cohort) -> list[ImageSpec]:
    """1-2 images for most patients of every site, numbered per site."""
    specs = []
    for site in SITES:
        number = 1
        for patient in cohort.at(site):
            rng = rng_for(cohort.seed, "imaging-plan", patient.mrn)
            if rng.random() >= IMAGE_CHANCE:
                continue
            count = 2 if rng.random() < TWO_IMAGES_CHANCE else 1
            specs += patient_images(rng, "cohort", patient, count, number)
            number += count
    return specs


# ---------------------------------------------------------------- header


def file_meta(spec: ImageSpec, sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the final one is set after encoding
    meta.SourceApplicationEntityTitle = f"PACS_{spec.site[-1].upper()}"
    return meta


def staff_name(rng: np.random.Generator) -> str:
    first = (FEMALE_FIRST + MALE_FIRST)[int(rng.integers(len(FEMALE_FIRST) + len(MALE_FIRST)))]
    return f"{LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}^{first}"


def add_patient(ds: Dataset, spec: ImageSpec, rng: np.random.Generator) -> None:
    p = spec.patient
    ds.PatientName = p.person.dicom_name
    ds.PatientID = p.mrn
    ds.IssuerOfPatientID = mrn_issuer(spec.site)  # the records' MRN system: images and records link
    ds.OtherPatientIDs = f"INS{int(rng.integers(10**8, 10**9))}"
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = {"male": "M", "female": "F"}.get(p.sex, "O")
    ds.PatientAge = f"{age_at(p.birth_date, spec.study_date):03d}Y"
    ds.PatientAddress = f"{p.person.street}, {p.person.city} {p.person.postcode}"
    ds.PatientTelephoneNumbers = p.person.phone


def add_study(ds: Dataset, spec: ImageSpec, rng: np.random.Generator, uids: dict) -> None:
    minutes, seconds = int(rng.integers(7 * 60, 19 * 60)), int(rng.integers(60))
    day, clock = spec.study_date.strftime("%Y%m%d"), f"{minutes // 60:02d}{minutes % 60:02d}{seconds:02d}"
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = clock
    ds.AccessionNumber = f"{spec.site[-1].upper()}{day}{int(rng.integers(10000)):04d}"
    ds.StudyID = str(int(rng.integers(1000, 99999)))
    ds.StudyDescription = PROTOCOLS[spec.modality].study
    ds.ReferringPhysicianName = dicom_person_name(spec.patient.attending)


def add_series(ds: Dataset, spec: ImageSpec, rng: np.random.Generator, uids: dict) -> None:
    protocol = PROTOCOLS[spec.modality]
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = int(rng.integers(1, 12))
    ds.SeriesDescription = protocol.series
    ds.Modality = spec.modality
    ds.BodyPartExamined = protocol.body_part
    ds.PatientPosition = "HFS"
    ds.OperatorsName = staff_name(rng)
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""


def add_equipment(ds: Dataset, spec: ImageSpec) -> None:
    site = SITES[spec.site]
    ds.Manufacturer = site.manufacturer
    ds.ManufacturerModelName = site.models[spec.modality]
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = site.address
    ds.StationName = f"{spec.modality}{spec.site[-1].upper()}01"
    ds.DeviceSerialNumber = site.serial
    ds.SoftwareVersions = "VB20A"


def add_request(ds: Dataset, spec: ImageSpec, rng: np.random.Generator, study_uid: str) -> None:
    """The nested Request Attributes Sequence, with a referenced study and a person name."""
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    referenced.ReferencedSOPInstanceUID = study_uid
    request = Dataset()
    request.RequestedProcedureID = f"RP{int(rng.integers(10**7, 10**8))}"
    request.ScheduledProcedureStepID = f"SPS{int(rng.integers(10**6, 10**7))}"
    request.RequestedProcedureDescription = PROTOCOLS[spec.modality].study
    request.RequestingPhysician = dicom_person_name(spec.patient.attending)
    request.ReferencedStudySequence = Sequence([referenced])
    ds.RequestAttributesSequence = Sequence([request])


def add_private(ds: Dataset, spec: ImageSpec) -> None:
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"{spec.patient.person.full_name} {spec.patient.mrn}")
    block.add_new(0x11, "LO", spec.patient.person.phone)


def add_plane(ds: Dataset, spec: ImageSpec, rng: np.random.Generator) -> None:
    protocol = PROTOCOLS[spec.modality]
    spacing = f"{protocol.field_of_view / spec.size:.6f}"
    corner = f"{-protocol.field_of_view / 2:.2f}"
    z = f"{rng.uniform(-200, 50):.2f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = protocol.thickness
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [corner, corner, z]
    ds.SliceLocation = z
    ds.InstanceNumber = int(rng.integers(1, 120))


def add_ct(ds: Dataset) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.XRayTubeCurrent = 220
    ds.ExposureTime = 500
    ds.ConvolutionKernel = "B31f"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]


def add_mr(ds: Dataset, site: str) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "520"
    ds.EchoTime = "12"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "3" if site == "site_b" else "1.5"
    ds.WindowCenter = "450"
    ds.WindowWidth = "900"


# ---------------------------------------------------------------- pixels


def pixel_format(spec: ImageSpec) -> tuple[int, int]:
    """(BitsStored, PixelRepresentation) of the spec's site and modality."""
    site = SITES[spec.site]
    signed = site.signed_ct and spec.modality == "CT"
    return site.bits_stored, int(signed)


def stored_pixels(spec: ImageSpec, rng: np.random.Generator) -> np.ndarray:
    """The pixels as stored: CT as HU + 1024 (RescaleIntercept -1024), MR as is."""
    image = render(spec.modality, spec.patient.disease, spec.size, rng)
    if spec.modality == "CT":
        image = image + 1024
    _, signed = pixel_format(spec)
    return np.rint(image).astype(np.int16 if signed else np.uint16)


def add_pixels(ds: Dataset, spec: ImageSpec, pixels: np.ndarray) -> None:
    bits, signed = pixel_format(spec)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = signed
    ds.PixelData = pixels.tobytes()


# ---------------------------------------------------------------- assembly


def build_dataset(spec: ImageSpec, seed: int) -> Dataset:
    """The full dataset of one image (pixels native; see ``encode``)."""
    rng = rng_for(seed, spec.purpose, spec.site, spec.number)
    uids = {name: uid_from(rng) for name in ("study", "series", "sop", "frame")}
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    ds = Dataset()
    ds.file_meta = file_meta(spec, sop_class, uids["sop"])
    ds.SpecificCharacterSet = SITES[spec.site].charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    add_patient(ds, spec, rng)
    add_study(ds, spec, rng, uids)
    add_series(ds, spec, rng, uids)
    add_equipment(ds, spec)
    add_request(ds, spec, rng, uids["study"])
    add_plane(ds, spec, rng)
    add_ct(ds) if spec.modality == "CT" else add_mr(ds, spec.site)
    add_pixels(ds, spec, stored_pixels(spec, rng))
    add_private(ds, spec)
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """The Part 10 file of ``ds`` in ``transfer_syntax``."""
    if transfer_syntax in COMPRESSED:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def image_bytes(spec: ImageSpec, seed: int) -> bytes:
    return encode(build_dataset(spec, seed), spec.transfer_syntax)


def write_cohort_images(cohort: Cohort, out: Path) -> dict:
    """Sites A and B as ``imaging/<site>/<n>.dcm``, site C as ``imaging/site_c_images.zip``."""
    specs = plan_cohort_images(cohort)
    zipped = {}
    for spec in specs:
        data = image_bytes(spec, cohort.seed)
        if spec.site == "site_c":
            zipped[f"site_c/{spec.file_name}"] = data
        else:
            path = out / "imaging" / spec.site / spec.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    write_zip(out / "imaging" / "site_c_images.zip", zipped)
    return image_summary(specs)


def image_summary(specs: list[ImageSpec]) -> dict:
    def count(key) -> dict:
        values = [key(s) for s in specs]
        return {v: values.count(v) for v in sorted(set(values))}

    return {
        "total": len(specs),
        "per_site": count(lambda s: s.site),
        "per_modality": count(lambda s: s.modality),
        "per_transfer_syntax": count(lambda s: UID(s.transfer_syntax).name),
        "per_site_modality_size": count(lambda s: f"{s.site}/{s.modality}/{s.size}x{s.size}"),
        "patients_with_images": len({s.patient.mrn for s in specs}),
    }


def generate_images(out: Path, *, count: int, size: int = 256, seed: int = 0) -> int:
    """Write ``count`` CT/MR files of ``size`` x ``size`` as ``out/<site>/<n>.dcm``.

    Two images per synthetic patient, with each site's modalities and transfer syntax mix.
    For ingest benchmarks; returns the number of files written.
    """
    out = Path(out)
    patients = build_cohort(max(1, (count + 1) // 2), seed).patients
    numbers = {site: 1 for site in SITES}
    written = 0
    for index, patient in enumerate(patients):
        rng = rng_for(seed, "bench-plan", index)
        for spec in patient_images(rng, "bench", patient, min(2, count - written), numbers[patient.site], size):
            path = out / spec.site / spec.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(spec, seed))
            written += 1
        numbers[patient.site] += 2
    return written
