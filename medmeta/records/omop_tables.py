"""The OMOP CDM 5.4 tables, and which of them a file's header is.

The column lists are those of the OHDSI DDL for CDM 5.4 (OHDSI/CommonDataModel,
``inst/ddl/5.4/postgresql/OMOPCDM_postgresql_5.4_ddl.sql``): per table the columns declared
NOT NULL (``required``) and the others (``optional``). A header is a table's when it holds every
required column of it, whatever the case and whatever else it holds; when several tables fit, the
one sharing the most columns with the header wins (a header fitting two tables equally well is
no table). Only the names are here: no vocabulary content.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CdmTable:
    name: str
    required: frozenset[str]
    optional: frozenset[str]

    @property
    def columns(self) -> frozenset[str]:
        return self.required | self.optional


def _table(name: str, required: str, optional: str = "") -> CdmTable:
    return CdmTable(name, frozenset(required.split()), frozenset(optional.split()))


CDM54_TABLES: dict[str, CdmTable] = {t.name: t for t in (
    # Clinical data
    _table("person", "person_id gender_concept_id year_of_birth race_concept_id ethnicity_concept_id",
           "month_of_birth day_of_birth birth_datetime location_id provider_id care_site_id person_source_value "
           "gender_source_value gender_source_concept_id race_source_value race_source_concept_id "
           "ethnicity_source_value ethnicity_source_concept_id"),
    _table("observation_period", "observation_period_id person_id observation_period_start_date "
           "observation_period_end_date period_type_concept_id"),
    _table("visit_occurrence", "visit_occurrence_id person_id visit_concept_id visit_start_date visit_end_date "
           "visit_type_concept_id",
           "visit_start_datetime visit_end_datetime provider_id care_site_id visit_source_value "
           "visit_source_concept_id admitted_from_concept_id admitted_from_source_value discharged_to_concept_id "
           "discharged_to_source_value preceding_visit_occurrence_id"),
    _table("visit_detail", "visit_detail_id person_id visit_detail_concept_id visit_detail_start_date "
           "visit_detail_end_date visit_detail_type_concept_id visit_occurrence_id",
           "visit_detail_start_datetime visit_detail_end_datetime provider_id care_site_id visit_detail_source_value "
           "visit_detail_source_concept_id admitted_from_concept_id admitted_from_source_value "
           "discharged_to_source_value discharged_to_concept_id preceding_visit_detail_id parent_visit_detail_id"),
    _table("condition_occurrence", "condition_occurrence_id person_id condition_concept_id condition_start_date "
           "condition_type_concept_id",
           "condition_start_datetime condition_end_date condition_end_datetime condition_status_concept_id "
           "stop_reason provider_id visit_occurrence_id visit_detail_id condition_source_value "
           "condition_source_concept_id condition_status_source_value"),
    _table("drug_exposure", "drug_exposure_id person_id drug_concept_id drug_exposure_start_date "
           "drug_exposure_end_date drug_type_concept_id",
           "drug_exposure_start_datetime drug_exposure_end_datetime verbatim_end_date stop_reason refills quantity "
           "days_supply sig route_concept_id lot_number provider_id visit_occurrence_id visit_detail_id "
           "drug_source_value drug_source_concept_id route_source_value dose_unit_source_value"),
    _table("procedure_occurrence", "procedure_occurrence_id person_id procedure_concept_id procedure_date "
           "procedure_type_concept_id",
           "procedure_datetime procedure_end_date procedure_end_datetime modifier_concept_id quantity provider_id "
           "visit_occurrence_id visit_detail_id procedure_source_value procedure_source_concept_id "
           "modifier_source_value"),
    _table("device_exposure", "device_exposure_id person_id device_concept_id device_exposure_start_date "
           "device_type_concept_id",
           "device_exposure_start_datetime device_exposure_end_date device_exposure_end_datetime unique_device_id "
           "production_id quantity provider_id visit_occurrence_id visit_detail_id device_source_value "
           "device_source_concept_id unit_concept_id unit_source_value unit_source_concept_id"),
    _table("measurement", "measurement_id person_id measurement_concept_id measurement_date "
           "measurement_type_concept_id",
           "measurement_datetime measurement_time operator_concept_id value_as_number value_as_concept_id "
           "unit_concept_id range_low range_high provider_id visit_occurrence_id visit_detail_id "
           "measurement_source_value measurement_source_concept_id unit_source_value unit_source_concept_id "
           "value_source_value measurement_event_id meas_event_field_concept_id"),
    _table("observation", "observation_id person_id observation_concept_id observation_date "
           "observation_type_concept_id",
           "observation_datetime value_as_number value_as_string value_as_concept_id qualifier_concept_id "
           "unit_concept_id provider_id visit_occurrence_id visit_detail_id observation_source_value "
           "observation_source_concept_id unit_source_value qualifier_source_value value_source_value "
           "observation_event_id obs_event_field_concept_id"),
    _table("death", "person_id death_date",
           "death_datetime death_type_concept_id cause_concept_id cause_source_value cause_source_concept_id"),
    _table("note", "note_id person_id note_date note_type_concept_id note_class_concept_id note_text "
           "encoding_concept_id language_concept_id",
           "note_datetime note_title provider_id visit_occurrence_id visit_detail_id note_source_value note_event_id "
           "note_event_field_concept_id"),
    _table("note_nlp", "note_nlp_id note_id lexical_variant nlp_date",
           "section_concept_id snippet offset note_nlp_concept_id note_nlp_source_concept_id nlp_system nlp_datetime "
           "term_exists term_temporal term_modifiers"),
    _table("specimen", "specimen_id person_id specimen_concept_id specimen_type_concept_id specimen_date",
           "specimen_datetime quantity unit_concept_id anatomic_site_concept_id disease_status_concept_id "
           "specimen_source_id specimen_source_value unit_source_value anatomic_site_source_value "
           "disease_status_source_value"),
    _table("fact_relationship", "domain_concept_id_1 fact_id_1 domain_concept_id_2 fact_id_2 relationship_concept_id"),
    # Health system data
    _table("location", "location_id",
           "address_1 address_2 city state zip county location_source_value country_concept_id country_source_value "
           "latitude longitude"),
    _table("care_site", "care_site_id",
           "care_site_name place_of_service_concept_id location_id care_site_source_value "
           "place_of_service_source_value"),
    _table("provider", "provider_id",
           "provider_name npi dea specialty_concept_id care_site_id year_of_birth gender_concept_id "
           "provider_source_value specialty_source_value specialty_source_concept_id gender_source_value "
           "gender_source_concept_id"),
    # Health economics data
    _table("payer_plan_period", "payer_plan_period_id person_id payer_plan_period_start_date "
           "payer_plan_period_end_date",
           "payer_concept_id payer_source_value payer_source_concept_id plan_concept_id plan_source_value "
           "plan_source_concept_id sponsor_concept_id sponsor_source_value sponsor_source_concept_id "
           "family_source_value stop_reason_concept_id stop_reason_source_value stop_reason_source_concept_id"),
    _table("cost", "cost_id cost_event_id cost_domain_id cost_type_concept_id",
           "currency_concept_id total_charge total_cost total_paid paid_by_payer paid_by_patient paid_patient_copay "
           "paid_patient_coinsurance paid_patient_deductible paid_by_primary paid_ingredient_cost "
           "paid_dispensing_fee payer_plan_period_id amount_allowed revenue_code_concept_id "
           "revenue_code_source_value drg_concept_id drg_source_value"),
    # Standardized derived elements
    _table("drug_era", "drug_era_id person_id drug_concept_id drug_era_start_date drug_era_end_date",
           "drug_exposure_count gap_days"),
    _table("dose_era", "dose_era_id person_id drug_concept_id unit_concept_id dose_value dose_era_start_date "
           "dose_era_end_date"),
    _table("condition_era", "condition_era_id person_id condition_concept_id condition_era_start_date "
           "condition_era_end_date", "condition_occurrence_count"),
    _table("episode", "episode_id person_id episode_concept_id episode_start_date episode_object_concept_id "
           "episode_type_concept_id",
           "episode_start_datetime episode_end_date episode_end_datetime episode_parent_id episode_number "
           "episode_source_value episode_source_concept_id"),
    _table("episode_event", "episode_id event_id episode_event_field_concept_id"),
    # Metadata
    _table("metadata", "metadata_id metadata_concept_id metadata_type_concept_id name",
           "value_as_string value_as_concept_id value_as_number metadata_date metadata_datetime"),
    _table("cdm_source", "cdm_source_name cdm_source_abbreviation cdm_holder source_release_date cdm_release_date "
           "cdm_version_concept_id vocabulary_version",
           "source_description source_documentation_reference cdm_etl_reference cdm_version"),
    # Vocabulary
    _table("concept", "concept_id concept_name domain_id vocabulary_id concept_class_id concept_code "
           "valid_start_date valid_end_date", "standard_concept invalid_reason"),
    _table("vocabulary", "vocabulary_id vocabulary_name vocabulary_concept_id",
           "vocabulary_reference vocabulary_version"),
    _table("domain", "domain_id domain_name domain_concept_id"),
    _table("concept_class", "concept_class_id concept_class_name concept_class_concept_id"),
    _table("concept_relationship", "concept_id_1 concept_id_2 relationship_id valid_start_date valid_end_date",
           "invalid_reason"),
    _table("relationship", "relationship_id relationship_name is_hierarchical defines_ancestry "
           "reverse_relationship_id relationship_concept_id"),
    _table("concept_synonym", "concept_id concept_synonym_name language_concept_id"),
    _table("concept_ancestor", "ancestor_concept_id descendant_concept_id min_levels_of_separation "
           "max_levels_of_separation"),
    _table("source_to_concept_map", "source_code source_concept_id source_vocabulary_id target_concept_id "
           "target_vocabulary_id valid_start_date valid_end_date", "source_code_description invalid_reason"),
    _table("drug_strength", "drug_concept_id ingredient_concept_id valid_start_date valid_end_date",
           "amount_value amount_unit_concept_id numerator_value numerator_unit_concept_id denominator_value "
           "denominator_unit_concept_id box_size invalid_reason"),
    # Results
    _table("cohort", "cohort_definition_id subject_id cohort_start_date cohort_end_date"),
    _table("cohort_definition", "cohort_definition_id cohort_definition_name definition_type_concept_id "
           "subject_concept_id", "cohort_definition_description cohort_definition_syntax cohort_initiation_date"),
)}


def normalise_column(name) -> str:
    """A header cell as the CDM spells it: trimmed, lower case, without a BOM or quotes."""
    return str(name).strip().strip('"').removeprefix("\ufeff").lower()


def recognise_cdm_table(columns) -> str | None:
    """The CDM 5.4 table whose required columns ``columns`` holds (any case, extra columns allowed)."""
    header = {normalise_column(c) for c in columns}
    fits = [t for t in CDM54_TABLES.values() if t.required <= header]
    if not fits:
        return None
    shared = sorted(((len(t.columns & header), t.name) for t in fits), reverse=True)
    if len(shared) > 1 and shared[0][0] == shared[1][0]:
        return None
    return shared[0][1]
