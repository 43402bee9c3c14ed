"""medmeta's one settings model (medmeta/settings.py): defaults, a user file over them, one-line
errors naming the file and the key, the old ingest file, and the form Prefect builds from it."""

from __future__ import annotations

import pytest

from medmeta.errors import MedmetaError
from medmeta.ingest.config import IngestConfig
from medmeta.settings import SECTIONS, Settings, load_settings, settings_from_dict


def _file(tmp_path, text: str):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def test_the_defaults_keep_the_access_the_code_uses():
    settings = load_settings()
    assert settings.source == "medmeta/config/pipeline.yaml"
    assert settings.train["steps"] == 300 and settings.evaluate["shots"] == [1, 5]
    assert settings.publish["margin"] == 0.01 and settings.ingest["image_size"] == 64
    assert isinstance(settings.tasksets, list) and all(type(e) is dict for e in settings.tasksets)
    assert all(type(getattr(settings, s)) is dict for s in SECTIONS if s != "tasksets")
    assert settings.arrival["warm_steps"] >= 1 and settings.serve["watch_every"] == 30


def test_a_user_file_overlays_the_defaults(tmp_path):
    settings = load_settings(_file(tmp_path, "ingest: {image_size: 128}\ntrain: {steps: 7}\n"
                                             "validation: {rules: r.yaml}\n"))
    assert settings.ingest["image_size"] == 128 and settings.train["steps"] == 7
    assert settings.train["meta_batch"] == 4 and settings.ingest["batch_size"] == 256  # left out: the defaults
    assert settings.validation["rules"] == "r.yaml" and settings.source.endswith("settings.yaml")
    assert IngestConfig.from_settings(settings).image_size == 128  # what the ingest workers get


@pytest.mark.parametrize("text, line", [
    ("train: {steps: 0}", "train.steps must be a positive integer, got 0"),
    ("train: {stepz: 1}", "unknown setting train.stepz; known: algorithms,"),
    ("train: {algorithms: [maml, foo]}", "train.algorithms[1] must be 'maml', 'fomaml', 'reptile', 'protonet' or"),
    ("tasksets: [{by: disease}, {inputs: images}]", "tasksets[1].by is required"),
    ("tasksets: [{by: disease, colour: red}]", "tasksets[0].colour is not a known key"),
    ("evaluate: {shots: [1]}", "publish.shots (5) must be one of evaluate.shots [1]"),
    ("ingest: {reread_unchanged: 1}", "ingest.reread_unchanged must be true or false, got 1"),
    ("ingest: {dask_address: 'not an address'}", "ingest.dask_address must be a Dask scheduler address"),
    ("publish: {margin: 1}", "publish.margin must be less than 1, got 1"),
    ("train: 5", "train must be a mapping, got 5"),
    ("train: {learner: {sgd: {}}}", "train.learner.sgd must be 'maml',"),
    ("serve: {watch_every: 0}", "serve.watch_every must be a positive integer, got 0"),
    ("image_size: 128\ntrain: {steps: 3}", "image_size is an ingest setting: move it under `ingest:`"),
    ("[1, 2]", "the settings must be a mapping of sections"),
    ("train: {steps: [", "not valid YAML"),
])
def test_a_bad_setting_is_one_line_naming_the_file_and_the_key(tmp_path, text, line):
    path = _file(tmp_path, text)
    with pytest.raises(MedmetaError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and line in message and "\n" not in message


def test_an_old_ingest_file_is_its_ingest_section(tmp_path):
    settings = load_settings(_file(tmp_path, "image_size: 96\nworkers: 2\n"))
    assert (settings.ingest["image_size"], settings.ingest["workers"], settings.train["steps"]) == (96, 2, 300)
    assert IngestConfig.load(tmp_path / "settings.yaml").image_size == 96


def test_dicts_and_paths_are_laid_over_the_defaults(tmp_path):
    """A deployment's parameter (a dict, full or partial) and prefect.yaml's path give the same model."""
    path = _file(tmp_path, "train: {steps: 9}\n")
    from_file = load_settings(path)
    assert Settings.model_validate(from_file.model_dump(mode="json")) == from_file
    assert Settings.model_validate(str(path)) == from_file
    assert Settings.model_validate({"train": {"steps": 9}, "source": str(path)}) == from_file
    assert settings_from_dict(from_file.as_dict(), from_file.source) == from_file  # a torchrun rank's copy
    with pytest.raises(MedmetaError, match="unknown setting colour"):
        Settings.model_validate({"colour": 1})


def test_the_nproc_variable_overrides_train_nproc(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMETA_TRAIN_NPROC", "3")
    settings = load_settings(_file(tmp_path, "train: {nproc: 2}\n"))
    assert settings.train["nproc"] == 3 and settings.source.endswith("with MEDMETA_TRAIN_NPROC")


def test_prefects_custom_run_form_shows_every_section():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline_flow

    schema = parameter_schema(pipeline_flow.fn).model_dump()
    assert "settings" in schema["properties"] and "config" not in schema["properties"]
    shown = schema["definitions"]["Settings"]["properties"]
    assert set(SECTIONS) <= set(shown)
    steps = schema["definitions"]["TrainSection"]["properties"]["steps"]
    assert (steps["type"], steps["minimum"]) == ("integer", 1)
    assert not {"landing", "key", "pseudonym_key"} & set(shown)  # never settings: Prefect stores them
