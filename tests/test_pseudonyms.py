"""Keyed pseudonyms and where the key comes from (env, Prefect Secret block, key file)."""

from __future__ import annotations

import os

import pytest

from medmeta.errors import MedmetaError
from medmeta.pseudonyms import KEY_BLOCK_ENV, KEY_ENV, Pseudonymizer, create_key_file, load_key


def test_pseudonyms_are_stable_keyed_and_purpose_separated():
    a, b = Pseudonymizer(b"k" * 20), Pseudonymizer(b"j" * 20)
    assert a.patient_id("A123") == a.patient_id(" A123 ") != b.patient_id("A123")
    assert a.patient_id("A123") != a.patient_id("A124")
    assert a.uid("1.2.3") == a.uid("1.2.3") and len(a.uid("1.2.3")) <= 64
    offsets = {a.date_offset_days(str(i)) for i in range(5000)}
    assert 0 not in offsets and min(offsets) >= -365 and max(offsets) <= 365
    assert "k" * 20 not in repr(a)
    with pytest.raises(MedmetaError, match="at least"):
        Pseudonymizer(b"short")


def test_key_from_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "from-the-environment-0123")
    assert load_key(tmp_path / "absent.key") == b"from-the-environment-0123"


def test_a_key_in_the_environment_made_from_the_key_file_is_the_same_key(monkeypatch, tmp_path):
    """A Kubernetes Secret (or an env file) made from H/secrets/pseudonym.key keeps its newline:
    the key, and so every pseudonym, must be the file's."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_BLOCK_ENV, raising=False)
    key_file = tmp_path / "secrets" / "pseudonym.key"
    create_key_file(key_file)
    from_file = load_key(key_file)
    monkeypatch.setenv(KEY_ENV, key_file.read_text())  # with its trailing newline
    assert key_file.read_text().endswith("\n")
    assert load_key(tmp_path / "absent.key") == from_file


def test_key_file_must_be_private(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_BLOCK_ENV, raising=False)
    key_file = tmp_path / "secrets" / "pseudonym.key"
    assert create_key_file(key_file) and not create_key_file(key_file)
    assert len(load_key(key_file)) == 64
    os.chmod(key_file, 0o644)
    with pytest.raises(MedmetaError, match="readable by others"):
        load_key(key_file)
    with pytest.raises(MedmetaError, match="no pseudonym key"):
        load_key(tmp_path / "missing.key")


@pytest.mark.usefixtures("prefect_api")
def test_key_from_a_prefect_secret_block(monkeypatch, tmp_path):
    from prefect.blocks.system import Secret

    Secret(value="from-a-prefect-secret-block-0123").save("medmeta-test-pseudonym-key", overwrite=True)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_BLOCK_ENV, "medmeta-test-pseudonym-key")
    assert load_key(tmp_path / "absent.key") == b"from-a-prefect-secret-block-0123"


def test_heartbeats_are_off_only_for_the_embedded_server():
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from medmeta.prefect_runtime import embedded_run_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), embedded_run_settings():
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}), embedded_run_settings():
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 180
