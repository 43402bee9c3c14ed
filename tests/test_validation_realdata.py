"""The default rules on a real third-party export: the shared 100-patient Synthea set, ingested
through the real ingest steps (without Prefect), validates with nothing quarantined, and its
SNOMED CT, LOINC and RxNorm codes really went through their format rules."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medmeta.home import Home
from medmeta.schema import TABLES
from medmeta.terminology.systems import LOINC, RXNORM, SNOMED
from medmeta.pseudonyms import Pseudonymizer
from tests.conftest import TEST_KEY
from tests.realdata import BUNDLES_100P, copy_export, needs_realdata
from validation.coverage import label_coverage
from validation.rules import load_rules
from validation.run import validate_tables
from validation.snapshot import load_tables

KEY = Pseudonymizer(TEST_KEY)  # keys the masks of text samples

pytestmark = needs_realdata


def count_resources(folder) -> dict[str, int]:
    """Conditions and MedicationRequests in the bundles, counted with the test's own code."""
    counts = {"Condition": 0, "MedicationRequest": 0}
    for path in folder.rglob("*.json"):
        for entry in json.loads(path.read_bytes()).get("entry", []):
            kind = entry.get("resource", {}).get("resourceType")
            if kind in counts:
                counts[kind] += 1
    return counts


@pytest.fixture(scope="module")
def synthea(tmp_path_factory):
    from medmeta.ingest.consolidate import consolidate
    from medmeta.ingest.ledger import Ledger
    from medmeta.ingest.pool import WorkerPool
    from medmeta.ingest.setup import IngestSetup
    from medmeta.landing.walk import discover

    root = tmp_path_factory.mktemp("synthea-validation")
    export = copy_export(BUNDLES_100P, root / "landing")
    counts = count_resources(export)
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMETA_PSEUDONYM_KEY", TEST_KEY)
        setup = IngestSetup.create(str(root / "landing"), str(home), workers=1)
        with WorkerPool(setup.worker_context, 1) as pool:
            results = pool.map(discover(setup.source, setup.config))
        ledger = Ledger.load(setup.home.ledger, setup.pseudonymizer)
        ledger.record(setup.source, [o for o, _ in results])
        ledger.save()
        consolidate(setup.home, ledger.active_hashes(), setup.pseudonymizer, setup.config.image_size)
    tables = load_tables(Home(home))  # the one way the store is read (images: read_images)
    return tables, counts


def test_a_records_only_synthea_export_passes_with_nothing_quarantined(synthea):
    tables, counts = synthea
    rules = load_rules()
    report = validate_tables(tables, rules, pseudonymizer=KEY)
    assert report.success and report.warnings == [], [(w.table, w.rule, w.sample) for w in report.warnings]
    assert "images" in report.empty_tables
    kept, quarantined = report.quarantine(tables)
    assert quarantined.empty
    conditions, meds, obs = tables["conditions"], tables["medication_exposures"], tables["observations"]
    # the code formats really applied: every SNOMED CT condition, RxNorm drug, LOINC observation
    assert report.result("conditions", "snomed_format").element_count == (conditions["system"] == SNOMED).sum() > 0
    assert report.result("medication_exposures", "rxnorm_format").element_count == (meds["drug_system"] == RXNORM).sum() > 0
    assert report.result("observations", "loinc_format").element_count == (obs["system"] == LOINC).sum() > 0
    assert report.result("observations", "value_snomed_format").element_count > 0  # categorical answers
    # nearly every resource reached the table the rules looked at (the ingest's own numbers are its tests')
    assert len(conditions) >= 0.95 * counts["Condition"] and len(meds) >= 0.95 * counts["MedicationRequest"]
    coverage = label_coverage(kept, rules)
    diseases = [c for c in coverage if c["kind"] == "disease" and c["system"] == SNOMED]
    assert sum(c["role"] == "meta_train" for c in diseases) >= 5
    # a display is stored when at least display_min_patients (3) patients attest it (medmeta/records/displays.py)
    assert all(c["display"] for c in diseases if c["patients"] >= 3)
