"""Fake but realistic PHI: names, addresses, phones, e-mails, clinicians.

Every value is drawn from small fixed lists with a seeded generator. Domains are the
reserved ``example.*`` ones and phone numbers use the fictional 555-01xx range (site A) or
plausible formats elsewhere; none of it belongs to a real person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEMALE_FIRST = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Nancy", "Lisa", "Margaret", "Sandra", "Ashley", "Emily", "Donna", "Michelle",
    "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura", "Helen", "Sharon",
    "Cynthia", "Kathleen", "Amy", "Anna", "Ruth", "Maria", "Sophie", "Chloé", "Zoë", "Ingrid",
    "Fatima", "Mei", "Aisha", "Renée", "Greta", "Lucía", "Noor", "Hannah", "Eva",
)
MALE_FIRST = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul",
    "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward",
    "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Lars", "José", "Ahmed", "Wei", "Jürgen",
    "Pieter", "Mohammed", "Raj", "Luca", "Sven", "Tomás", "Henrik", "Omar", "Felix",
)
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Müller", "Schmidt", "de Vries",
    "Jansen", "van Dijk", "Bakker", "O'Brien", "Kowalski", "Novák", "Rossi", "Dubois", "Chen",
    "Wang", "Kim", "Patel", "Singh", "Okafor", "Haddad", "Johansson", "Nielsen", "Fischer",
)
STREET_NAMES = (
    "Maple", "Oak", "Cedar", "Elm", "Pine", "Washington", "Lake", "Hill", "Park", "Main",
    "Church", "Mill", "River", "Spring", "Highland", "Sunset", "Willow", "Chestnut", "Franklin",
    "Lincoln", "Meadow", "Harbor", "Orchard", "Bridge",
)
STREET_KINDS = ("St", "Ave", "Rd", "Ln", "Dr", "Ct", "Blvd", "Way")
CITIES = {
    "site_a": (("Boston", "02118"), ("Cambridge", "02139"), ("Somerville", "02143"),
               ("Quincy", "02169"), ("Newton", "02458"), ("Brookline", "02446"),
               ("Medford", "02155"), ("Waltham", "02453")),
    "site_b": (("Utrecht", "3511 AB"), ("Amersfoort", "3811 CD"), ("Zeist", "3701 EF"),
               ("Nieuwegein", "3431 GH"), ("Houten", "3991 JK"), ("Hilversum", "1211 LM")),
    "site_c": (("Leeds", "LS1 4AP"), ("York", "YO1 7HH"), ("Harrogate", "HG1 2RS"),
               ("Wakefield", "WF1 2TT"), ("Bradford", "BD1 1HY"), ("Halifax", "HX1 1QE")),
}
MAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
CLINICIAN_TITLES = ("Dr.", "Dr.", "Dr.", "NP", "PA")


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str
    street: str
    city: str
    postcode: str
    phone: str
    email: str

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def dicom_name(self) -> str:
        """The name in DICOM PN form: ``Family^Given``."""
        return f"{self.last_name}^{self.first_name}"


def _pick(rng: np.random.Generator, options: tuple) -> object:
    return options[int(rng.integers(len(options)))]


def _phone(rng: np.random.Generator, site: str) -> str:
    digits = rng.integers(0, 10, size=8)
    if site == "site_a":
        return f"({_pick(rng, ('617', '857', '781'))}) 555-01{digits[0]}{digits[1]}"
    if site == "site_b":
        return "+31 6 " + "".join(map(str, digits))
    return "07700 900" + "".join(map(str, digits[:3]))


def _email(rng: np.random.Generator, first: str, last: str) -> str:
    local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
    local = local.encode("ascii", "ignore").decode() + str(int(rng.integers(1, 99)))
    return f"{local}@{_pick(rng, MAIL_DOMAINS)}"


def make_person(rng: np.random.Generator, sex: str, site: str) -> Person:
    """A fake person of ``sex`` living near ``site``."""
    first_names = FEMALE_FIRST if sex == "female" else MALE_FIRST
    if sex not in ("female", "male"):
        first_names = FEMALE_FIRST + MALE_FIRST
    first, last = _pick(rng, first_names), _pick(rng, LAST_NAMES)
    city, postcode = _pick(rng, CITIES[site])
    street = f"{int(rng.integers(1, 1200))} {_pick(rng, STREET_NAMES)} {_pick(rng, STREET_KINDS)}"
    return Person(first, last, street, city, postcode, _phone(rng, site), _email(rng, first, last))


def make_clinician(rng: np.random.Generator) -> str:
    """A clinician's name as it appears in an export, e.g. ``Dr. Ana Lopez``."""
    first = _pick(rng, FEMALE_FIRST + MALE_FIRST)
    return f"{_pick(rng, CLINICIAN_TITLES)} {first} {_pick(rng, LAST_NAMES)}"


def dicom_person_name(name: str) -> str:
    """A clinician name as written by ``make_clinician`` in DICOM PN form (``Family^Given^^Title``)."""
    title, given, family = name.split(" ", 2)
    return f"{family}^{given}^^{title}"
