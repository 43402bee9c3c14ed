"""What every bench script shares: its section of BENCHMARKS.md and a description of the machine."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def quiet_prefect_environment() -> None:
    """What a bench needs before Prefect is imported: its own Prefect home, no analytics, room for the
    embedded server to start on a loaded machine, warnings only, and a throwaway pseudonym key."""
    import tempfile

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="medmeta-bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MEDMETA_PSEUDONYM_KEY", "benchmark-only-key-0123456789abcdef")


def start_ingest_runtime() -> float:
    """What `medmeta ingest` has running before its flow starts: the Prefect API (a trivial flow starts
    the embedded server) and the ingest's worker forkserver booting meanwhile; returns the seconds taken.
    Benches call it before their clock."""
    import time

    from prefect import flow

    from medmeta.ingest.pool import start_forkserver

    @flow
    def warm_up() -> int:
        return 1

    start = time.perf_counter()
    start_forkserver()
    warm_up()
    return time.perf_counter() - start


def run_medmeta(root: Path, *args: str, env: dict):
    """``medmeta ARGS`` in a subprocess; exits the bench with medmeta's stderr when it fails."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True, env=env,
                            cwd=root)
    if result.returncode != 0:
        raise SystemExit(f"medmeta {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def write_section(out: Path, section: str, text: str) -> None:
    """Replace the text between ``<!-- bench:SECTION:begin -->`` and ``<!-- bench:SECTION:end -->``
    in ``out`` (appending the block when it is not there yet); the rest of the file is kept."""
    begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = out.read_text() if out.exists() else "# Benchmarks\n"
    if begin in current:
        current = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    out.write_text(current)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``1.02 0.80 0.41``."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def revision(root: Path, paths: tuple[str, ...] = ("metalearn",)) -> str:
    """The commit measured, e.g. ``31bc721``, plus ``+ uncommitted changes in metalearn`` when the
    working tree differs from it there."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *paths], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return head + (f" + uncommitted changes in {', '.join(paths)}" if dirty else "")


MODEL_TABLE_HEAD = ("| algorithm | shots | meta-learner | from scratch | pretrain + fine-tune | vs from scratch "
                    "| vs pretrain + fine-tune |\n|---|---:|---:|---:|---:|---:|---:|")


def model_table_rows(run: dict) -> list[str]:
    """One Markdown row per model and shot count of a ``medmeta run --json`` summary: accuracy in %,
    mean ± 95% interval, for the meta-learner and both baselines on the same episodes."""
    lines = []
    for model in run["models"]:
        for entry in model["evaluation"]:
            meta, scratch, pre = entry["meta"], entry["from_scratch"], entry["pretrain_finetune"]
            lines.append(f"| {model['algorithm']} | {entry['shots']} | {100 * meta['accuracy']:.1f} ± {100 * meta['ci95']:.1f} | "
                         f"{100 * scratch['accuracy']:.1f} ± {100 * scratch['ci95']:.1f} | "
                         f"{100 * pre['accuracy']:.1f} ± {100 * pre['ci95']:.1f} | "
                         f"{100 * (meta['accuracy'] - scratch['accuracy']):+.1f} | "
                         f"{100 * (meta['accuracy'] - pre['accuracy']):+.1f} |")
    return lines
