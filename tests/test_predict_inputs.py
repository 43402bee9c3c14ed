"""``medmeta predict``'s inputs, attacked through the real command: a device, a FIFO, an oversized
file, a ragged row, repeated ids, and weights whose safetensors header is forged (with a card that
matches them, so the checksum can not catch it). Each is one line on stderr, exit 2, no traceback,
the registry unchanged; predictions themselves are linear and batched without changing a number."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.records_model import (HEADER, RECORDS_MODEL, forge_weights, publish_records_model, query_rows,
                                 support_rows, write_csv)
from tests.test_cli import ROOT

MEMORY_CAP = 6 * 1024**3  # so an input read without end fails fast (MemoryError) instead of filling the machine


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("predict-inputs") / "home"
    publish_records_model(home)
    return home


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("cases")
    return {"support": write_csv(folder / "support.csv", HEADER, support_rows()),
            "query": write_csv(folder / "query.csv", HEADER, query_rows(5))}


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def predict(home: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medmeta.cli", "predict", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, preexec_fn=_cap_memory)


def refused(home: Path, *args: str) -> str:
    """The one line predict printed when refusing (exit 2, nothing on stdout, no traceback)."""
    result = predict(home, "--model", RECORDS_MODEL, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def registry_bytes(home: Path) -> dict:
    root = home / "registry"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def test_the_model_predicts_each_query_case(home, cases):
    result = predict(home, "--model", RECORDS_MODEL, "--support", str(cases["support"]), "--query",
                     str(cases["query"]), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["classes"] == ["E11.9", "I50.9"] and out["support"] == {"E11.9": 3, "I50.9": 3}
    assert list(out["predictions"]) == [f"q{i}" for i in range(5)]
    assert all(abs(sum(p.values()) - 1) < 1e-5 for p in out["predictions"].values())


@pytest.mark.parametrize("role", ["--query", "--support"])
def test_a_device_is_refused_before_a_byte_is_read(home, cases, role):
    other = "--support" if role == "--query" else "--query"
    line = refused(home, role, "/dev/zero", other, str(cases["support" if other == "--support" else "query"]))
    assert "/dev/zero" in line and "a character device, not a regular file" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["--query", "--support"])
def test_a_fifo_is_refused_not_waited_on(home, cases, tmp_path, role):
    fifo = tmp_path / "cases.csv"
    os.mkfifo(fifo)
    other = "--support" if role == "--query" else "--query"
    line = refused(home, role, str(fifo), other, str(cases["support" if other == "--support" else "query"]))
    assert "cases.csv" in line and "a FIFO (named pipe), not a regular file" in line


@pytest.mark.timeout(60)
def test_a_fifo_in_a_query_folder_is_refused(home, cases, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    os.mkfifo(folder / "a.dcm")
    line = refused(home, "--support", str(cases["support"]), "--query", str(folder))
    assert "a.dcm" in line and "FIFO" in line


def test_a_file_over_the_size_limit_is_refused_naming_the_setting(home, cases):
    size = cases["query"].stat().st_size
    line = refused(home, "--support", str(cases["support"]), "--query", str(cases["query"]),
                   "--max-input-bytes", str(size - 1))
    assert f"holds {size} bytes, over the --max-input-bytes limit of {size - 1}" in line


@pytest.mark.parametrize("extra, fields", [(["surplus"], 6), (None, 4)])
def test_a_ragged_row_is_refused_naming_the_file_and_line(home, cases, tmp_path, extra, fields):
    rows = support_rows()
    rows[3] = rows[3] + extra if extra else rows[3][:-1]
    support = write_csv(tmp_path / "ragged.csv", HEADER, rows)
    line = refused(home, "--support", str(support), "--query", str(cases["query"]))
    assert f"support {support}: line 5 has {fields} fields, the header has 5" in line
    first = support_rows()
    first[0] = first[0] + ["surplus"]  # the first row ragged too (DictReader's None key)
    support = write_csv(tmp_path / "ragged-first.csv", HEADER, first)
    assert "line 2 has 6 fields" in refused(home, "--support", str(support), "--query", str(cases["query"]))


def test_repeated_ids_are_named_by_line_not_by_value(home, cases, tmp_path):
    rows = query_rows(6)
    rows[4][0] = rows[1][0]
    query = write_csv(tmp_path / "twice.csv", HEADER, rows)
    line = refused(home, "--support", str(cases["support"]), "--query", str(query))
    assert "every case needs its own id, but line 6 repeats the id of line 3" in line and "q1" not in line


@given(st.lists(st.sampled_from("abcdef"), max_size=30))
@settings(max_examples=200, deadline=None)
def test_repeated_ids_equals_the_plain_quadratic_reference(ids):
    from medmeta.predict.cases import repeated_ids

    reference = [(i, ids.index(x)) for i, x in enumerate(ids) if ids.index(x) != i]
    assert repeated_ids(ids) == reference


def _safetensors(header: bytes, length: int | None = None, body: bytes = b"") -> bytes:
    return (len(header) if length is None else length).to_bytes(8, "little") + header + body


@pytest.mark.parametrize("data, reason", [
    (_safetensors(b"{}", length=2**63), "its safetensors header declares 9223372036854775808 bytes, over the limit"),
    (_safetensors(b"{}" + b" " * 64, length=10**6), "header declares 1000000 bytes, but the file holds 66"),
    (_safetensors(b"[1, 2]"), "its safetensors header is not a JSON object"),
    (_safetensors(b"\xff\xfe{"), "its safetensors header is not JSON text"),
    (b"\x01\x02", "holds 2 bytes, fewer than the 8 of a safetensors header length"),
    (_safetensors(b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}', body=b"\0" * 8),
     "safetensors can not read it"),
])
def test_forged_weights_are_refused_in_one_line(home, cases, tmp_path, data, reason):
    from medmeta import registry

    name = "forged-" + hashlib.sha256(data).hexdigest()[:8]
    forge_weights(publish_records_model(home, name), data)
    before = registry_bytes(home)
    result = predict(home, "--model", name, "--support", str(cases["support"]), "--query", str(cases["query"]))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "SafetensorError" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr, result.stderr
    assert f"registry/{name}/versions/1/model.safetensors is damaged" in result.stderr
    assert registry_bytes(home) == before
    with pytest.raises(registry.DamagedEntry, match="restore"):
        registry.load(home, name)


def test_predictions_in_batches_equal_one_forward_unless_the_backbone_normalises_over_the_set(home):
    import torch

    from medmeta import registry
    from medmeta.predict.run import QUERY_BATCH, in_batches, query_batch
    from medmeta.training.models import build_learner

    found, weights = registry.load(home, RECORDS_MODEL)
    learner = build_learner(found.card["config"]["spec"])
    learner.load_state_dict(weights)
    learner.eval()
    support = torch.randn(6, 5)
    adapted = learner.adapt(support, torch.tensor([0, 1, 0, 1, 0, 1]))
    query = torch.randn(QUERY_BATCH * 2 + 3, 5)
    assert query_batch(learner, query) == QUERY_BATCH
    assert torch.allclose(in_batches(adapted, query, QUERY_BATCH), adapted(query), atol=1e-6)
    conv = build_learner({"algorithm": "protonet", "backbone": {"name": "conv4", "config": {
        "in_channels": 1, "image_size": 16, "hidden": 4}}, "learner": {}, "n_way": 2})
    assert query_batch(conv, torch.zeros(QUERY_BATCH + 5, 1, 16, 16)) == QUERY_BATCH + 5  # batch norm over the set
