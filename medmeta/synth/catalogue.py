"""What the synthetic cohort is made of: diseases, drugs and lab analytes.

Everything here is fixed (not drawn from the seed), so every seed yields the same tasks: the
same disease labels, the same drug-response models and the same image patterns per disease.
Lab values are held in each analyte's canonical unit (the one in config/units.yaml) and
converted to a site's unit only when that site's files are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Disease:
    code: str  # ICD-10-CM, with the dot
    name: str
    weight: int  # patients per 240: the cohort is split by these quotas
    lab_shifts: dict[str, float] = field(default_factory=dict)  # canonical units
    age: float = 64.0  # mean age at diagnosis

    @property
    def dotless(self) -> str:
        return self.code.replace(".", "")


@dataclass(frozen=True)
class Drug:
    atc: str
    name: str
    indications: tuple[str, ...]  # ICD-10-CM codes it is usually prescribed for
    weights: dict[str, float]  # response model: feature name -> logit weight
    disease_effects: dict[str, float] = field(default_factory=dict)  # disease code -> logit


@dataclass(frozen=True)
class Analyte:
    name: str  # the key in config/units.yaml
    loinc: str  # the canonical LOINC code
    unit: str  # the canonical UCUM unit
    mean: float  # a healthy adult, canonical unit
    sd: float
    low: float  # plausible range, canonical unit
    high: float
    male_shift: float = 0.0
    per_visit: bool = True  # False: measured once (height, cholesterol)


COMMON_DISEASES: tuple[Disease, ...] = (
    Disease("J18.9", "Pneumonia, unspecified organism", 30,
            {"crp": 80, "wbc": 6, "body_temperature": 1.3, "heart_rate": 15}, age=62),
    Disease("E11.9", "Type 2 diabetes mellitus without complications", 30,
            {"glucose": 4.5, "body_weight": 12, "cholesterol_total": 0.6}),
    Disease("I50.9", "Heart failure, unspecified", 28,
            {"sodium": -4, "body_weight": 8, "creatinine": 25, "heart_rate": 12, "systolic_bp": -10}),
    Disease("N18.30", "Chronic kidney disease, stage 3 unspecified", 26,
            {"creatinine": 90, "hemoglobin": -1.6, "potassium": 0.5}),
    Disease("C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung", 25,
            {"hemoglobin": -1.2, "crp": 20, "body_weight": -8}),
    Disease("J44.9", "Chronic obstructive pulmonary disease, unspecified", 19,
            {"wbc": 1.5, "crp": 8, "heart_rate": 8}),
    Disease("I48.91", "Unspecified atrial fibrillation", 15, {"heart_rate": 25}),
    Disease("M06.9", "Rheumatoid arthritis, unspecified", 12, {"crp": 18, "hemoglobin": -0.8}, age=56),
    Disease("G35.D", "Multiple sclerosis, unspecified", 12, {"body_temperature": 0.1}, age=41),
    Disease("I63.9", "Cerebral infarction, unspecified", 10, {"systolic_bp": 20, "cholesterol_total": 0.8}),
    Disease("K50.90", "Crohn's disease, unspecified, without complications", 10,
            {"crp": 25, "hemoglobin": -1.3, "body_weight": -6}, age=37),
    Disease("D57.1", "Sickle-cell disease without crisis", 7, {"hemoglobin": -3.5, "wbc": 3.5}, age=29),
    Disease("E84.0", "Cystic fibrosis with pulmonary manifestations", 6,
            {"body_weight": -14, "crp": 15, "wbc": 3, "sodium": -2}, age=24),
    Disease("E75.22", "Gaucher disease", 5, {"hemoglobin": -2.2}, age=41),
    Disease("G12.21", "Amyotrophic lateral sclerosis", 5, {"body_weight": -10, "creatinine": -25}, age=60),
)

# The long tail: rarer diseases a cohort draws only when asked for more than the common ones
# (``medmeta synth --diseases N``), e.g. to meta-train on many diseases.
RARER_DISEASES: tuple[Disease, ...] = (
    Disease("I21.9", "Acute myocardial infarction, unspecified", 8, {"heart_rate": 10, "crp": 12, "wbc": 2}),
    Disease("I26.99", "Other pulmonary embolism without acute cor pulmonale", 6, {"heart_rate": 18, "crp": 10}),
    Disease("J45.909", "Unspecified asthma, uncomplicated", 8, {"wbc": 1.0}, age=38),
    Disease("J84.10", "Pulmonary fibrosis, unspecified", 5, {"crp": 6, "heart_rate": 8}, age=68),
    Disease("K70.30", "Alcoholic cirrhosis of liver without ascites", 6, {"sodium": -3, "hemoglobin": -1.2}, age=55),
    Disease("K85.90", "Acute pancreatitis without necrosis or infection, unspecified", 6,
            {"crp": 60, "wbc": 4, "glucose": 1.5}, age=52),
    Disease("K51.90", "Ulcerative colitis, unspecified, without complications", 7, {"crp": 15, "hemoglobin": -1.0},
            age=40),
    Disease("E03.9", "Hypothyroidism, unspecified", 8, {"cholesterol_total": 0.9, "heart_rate": -8, "body_weight": 5},
            age=55),
    Disease("E05.90", "Thyrotoxicosis, unspecified without thyrotoxic crisis or storm", 5,
            {"heart_rate": 20, "body_weight": -6}, age=45),
    Disease("E10.9", "Type 1 diabetes mellitus without complications", 6, {"glucose": 5.5, "body_weight": -3}, age=28),
    Disease("D50.9", "Iron deficiency anemia, unspecified", 8, {"hemoglobin": -2.8, "heart_rate": 8}, age=45),
    Disease("D69.6", "Thrombocytopenia, unspecified", 5, {"hemoglobin": -0.6}, age=58),
    Disease("C50.919", "Malignant neoplasm of unspecified site of unspecified female breast", 7,
            {"hemoglobin": -0.8, "crp": 8}, age=58),
    Disease("C18.9", "Malignant neoplasm of colon, unspecified", 6, {"hemoglobin": -1.8, "body_weight": -5}, age=67),
    Disease("C25.9", "Malignant neoplasm of pancreas, unspecified", 5, {"glucose": 2.0, "body_weight": -10}, age=70),
    Disease("C71.9", "Malignant neoplasm of brain, unspecified", 5, {"body_weight": -3}, age=57),
    Disease("C90.00", "Multiple myeloma not having achieved remission", 5,
            {"hemoglobin": -2.0, "creatinine": 40, "crp": 10}, age=69),
    Disease("G30.9", "Alzheimer's disease, unspecified", 7, {"body_weight": -4}, age=78),
    Disease("G40.909", "Epilepsy, unspecified, not intractable, without status epilepticus", 6, {}, age=35),
    Disease("I61.9", "Nontraumatic intracerebral hemorrhage, unspecified", 5, {"systolic_bp": 30}, age=66),
    Disease("I71.40", "Abdominal aortic aneurysm, without rupture, unspecified", 5,
            {"systolic_bp": 12, "cholesterol_total": 0.5}, age=72),
    Disease("I73.9", "Peripheral vascular disease, unspecified", 6, {"cholesterol_total": 0.9, "glucose": 1.0},
            age=70),
    Disease("M32.9", "Systemic lupus erythematosus, unspecified", 5, {"crp": 10, "hemoglobin": -1.0, "wbc": -2},
            age=38),
    Disease("M45.9", "Ankylosing spondylitis of unspecified sites in spine", 5, {"crp": 14}, age=36),
    Disease("M81.0", "Age-related osteoporosis without current pathological fracture", 7, {"body_weight": -6}, age=74),
    Disease("N04.9", "Nephrotic syndrome with unspecified morphologic changes", 5,
            {"cholesterol_total": 2.0, "creatinine": 20, "body_weight": 4}, age=45),
    Disease("A41.9", "Sepsis, unspecified organism", 6, {"crp": 120, "wbc": 9, "body_temperature": 1.6,
                                                        "heart_rate": 25, "systolic_bp": -20}),
    Disease("A15.0", "Tuberculosis of lung", 5, {"crp": 35, "body_weight": -7, "body_temperature": 0.7}, age=44),
    Disease("I42.9", "Cardiomyopathy, unspecified", 5, {"heart_rate": 10, "sodium": -2, "systolic_bp": -8}, age=56),
    Disease("D86.0", "Sarcoidosis of lung", 5, {"crp": 9}, age=46),
)

DISEASES = COMMON_DISEASES + RARER_DISEASES  # the whole catalogue: a cohort of N diseases takes the first N
DEFAULT_DISEASES = len(COMMON_DISEASES)

COMORBIDITIES: dict[str, str] = {
    "I10": "Essential (primary) hypertension",
    "E78.5": "Hyperlipidemia, unspecified",
}

# Features of the response models are standardised baseline values (see cohort.features).
DRUGS: tuple[Drug, ...] = (
    Drug("A10BA02", "metformin", ("E11.9",),
         {"intercept": -0.3, "glucose": 0.9, "creatinine": -1.2, "age": -0.4},
         {"E11.9": 1.2}),
    Drug("C09AA05", "ramipril", ("I50.9", "N18.30", "I10"),
         {"intercept": 0.2, "age": -0.8, "male": 0.6, "sodium": 0.7, "creatinine": -0.5}),
    Drug("C10AA05", "atorvastatin", ("E78.5", "I63.9", "E11.9"),
         {"intercept": 0.1, "cholesterol_total": 1.1, "age": 0.5, "male": -0.5}),
    Drug("L04AX03", "methotrexate", ("M06.9", "K50.90"),
         {"intercept": -0.4, "crp": 0.9, "hemoglobin": 0.6, "male": 0.7},
         {"M06.9": 1.0, "K50.90": -0.6}),
    Drug("C03CA01", "furosemide", ("I50.9", "N18.30"),
         {"intercept": 0.0, "body_weight": 1.0, "sodium": -0.6, "creatinine": -0.8},
         {"I50.9": 0.9}),
    Drug("J01CR02", "amoxicillin and beta-lactamase inhibitor", ("J18.9", "J44.9", "E84.0"),
         {"intercept": -0.2, "wbc": 0.8, "age": -0.7, "crp": 0.5},
         {"E84.0": -1.5, "J18.9": 0.8}),
    Drug("B01AF01", "rivaroxaban", ("I48.91", "I63.9"),
         {"intercept": 0.3, "age": -0.9, "creatinine": -0.9, "hemoglobin": 0.5}),
    Drug("H02AB06", "prednisolone", ("J44.9", "M06.9", "G35.D", "K50.90"),
         {"intercept": -0.1, "crp": 1.0, "glucose": -0.7, "male": -0.6},
         {"G35.D": 0.8, "C34.90": -1.0}),
)

ANALYTES: tuple[Analyte, ...] = (
    Analyte("glucose", "15074-8", "mmol/L", 5.3, 0.6, 2.5, 30.0),
    Analyte("creatinine", "14682-9", "umol/L", 78, 15, 25, 900, male_shift=10),
    Analyte("cholesterol_total", "14647-2", "mmol/L", 5.0, 0.9, 2.0, 12.0, per_visit=False),
    Analyte("hemoglobin", "718-7", "g/dL", 13.8, 1.0, 5.0, 19.5, male_shift=1.3),
    Analyte("sodium", "2951-2", "mmol/L", 140, 2.5, 118, 158),
    Analyte("potassium", "2823-3", "mmol/L", 4.2, 0.35, 2.6, 6.8),
    Analyte("crp", "1988-5", "mg/L", 3.0, 2.0, 0.2, 400),
    Analyte("wbc", "6690-2", "10*3/uL", 7.0, 1.6, 1.5, 40),
    Analyte("body_weight", "29463-7", "kg", 76, 13, 30, 200, male_shift=9),
    Analyte("body_height", "8302-2", "cm", 168, 7.5, 140, 205, male_shift=7, per_visit=False),
    Analyte("systolic_bp", "8480-6", "mm[Hg]", 126, 14, 80, 220),
    Analyte("heart_rate", "8867-4", "/min", 74, 9, 40, 170),
    Analyte("body_temperature", "8310-5", "Cel", 36.8, 0.25, 35.0, 41.5),
)

# Physical conversions to the canonical unit: canonical = value * scale + offset. They are
# written here from the chemistry, not read from config/units.yaml, so the synthetic sites
# behave like real ones and a wrong factor in the ingest config shows up in its tests.
CONVERSIONS: dict[str, dict[str, tuple[float, float]]] = {
    "glucose": {"mg/dL": (1 / 18.016, 0.0)},
    "creatinine": {"mg/dL": (88.42, 0.0)},
    "cholesterol_total": {"mg/dL": (1 / 38.67, 0.0)},
    "hemoglobin": {"g/L": (0.1, 0.0), "mmol/L": (1.6114, 0.0)},
    "sodium": {"meq/L": (1.0, 0.0)},
    "potassium": {"meq/L": (1.0, 0.0)},
    "crp": {"mg/dL": (10.0, 0.0)},
    "wbc": {"10*9/L": (1.0, 0.0)},
    "body_weight": {"[lb_av]": (0.45359237, 0.0), "g": (0.001, 0.0)},
    "body_height": {"[in_i]": (2.54, 0.0), "m": (100.0, 0.0)},
    "systolic_bp": {"kPa": (7.50062, 0.0)},
    "heart_rate": {"{beats}/min": (1.0, 0.0)},
    "body_temperature": {"[degF]": (5 / 9, -32 * 5 / 9)},
}

DISEASE_BY_CODE: dict[str, Disease] = {d.code: d for d in DISEASES}
DRUG_BY_ATC: dict[str, Drug] = {d.atc: d for d in DRUGS}
ANALYTE_BY_NAME: dict[str, Analyte] = {a.name: a for a in ANALYTES}


def from_canonical(analyte: str, value: float, unit: str) -> float:
    """``value`` (in the analyte's canonical unit) expressed in ``unit``."""
    if unit == ANALYTE_BY_NAME[analyte].unit:
        return value
    scale, offset = CONVERSIONS[analyte][unit]
    return (value - offset) / scale
