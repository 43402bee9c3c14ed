"""Records ingest throughput on real FHIR: medmeta's ingest flow against a bare ``json.load`` loop.

The folder: the shared 100-patient Synthea R4 export (``../shared/realdata``, copied at run time,
never into the repository), repeated ``--copies`` times with every UUID replaced by a fresh one per
copy (so each copy is new patients, new resources and new references, and no file is a duplicate
of another). Both contenders run in one process, on the same files, with the page cache warm:
  - bare: ``json.load`` of every file, one process, counting the Bundle entries (nothing else);
  - medmeta: the ``ingest`` flow into a fresh home (hash, sniff, parse, de-identify, stage parts,
    consolidate with references, units and deduplication, snapshot), all cores; the Prefect API is
    started before the clock as in bench/ingest.py; validation is timed on its own line.
Peak memory: the largest resident set of the flow's process and its worker processes, sampled.

    python bench/records.py [--copies 5] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from _report import quiet_prefect_environment, start_ingest_runtime, write_section  # noqa: E402  (bench/_report.py)

quiet_prefect_environment()

SECTION = "records"
REALDATA = Path(os.environ.get("MEDMETA_REALDATA", ROOT.parent / "shared" / "realdata"))
BUNDLES = "synthea_r4_transaction_bundles_100p.zip"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def build_folder(folder: Path, copies: int) -> int:
    """``copies`` renamed copies of the 100-patient export; returns the number of files."""
    if folder.exists():
        shutil.rmtree(folder)
    with zipfile.ZipFile(REALDATA / BUNDLES) as archive:
        members = [m for m in archive.namelist() if m.endswith(".json")]
        originals = {m: archive.read(m) for m in members}
    for copy in range(copies):
        site = folder / "synthea"
        site.mkdir(parents=True, exist_ok=True)
        namespace = uuid.UUID(int=copy + 1)
        fresh = {}

        def renew(match: re.Match) -> bytes:
            old = match.group(0)
            if old not in fresh:
                fresh[old] = str(uuid.uuid5(namespace, old.decode())).encode()
            return fresh[old]

        for n, (member, data) in enumerate(sorted(originals.items())):
            (site / f"copy{copy}_{n:04d}.json").write_bytes(UUID.sub(renew, data))
    return sum(1 for p in folder.rglob("*.json"))


def bare_loop(files: list[Path]) -> tuple[float, int]:
    resources = 0
    start = time.perf_counter()
    for f in files:
        with open(f, "rb") as fh:
            doc = json.load(fh)
        resources += len(doc.get("entry") or []) if doc.get("resourceType") == "Bundle" else 1
    return time.perf_counter() - start, resources


class PeakRss:
    """The largest summed resident set of this process and its children, sampled every 50 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            time.sleep(0.05)


def _tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def medmeta_ingest(folder: Path) -> dict:
    from flows.ingest import ingest_flow
    from flows.validate import validate_flow
    from medmeta.prefect_runtime import embedded_run_settings

    api_start = start_ingest_runtime()
    home = Path(tempfile.mkdtemp(prefix="medmeta-bench-home-"))
    with embedded_run_settings():  # exactly as `medmeta ingest` runs it
        with PeakRss() as rss:
            start = time.perf_counter()
            summary = ingest_flow(str(folder), str(home), run_validation=False)
            ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        validation = validate_flow(str(home))
        validate_s = time.perf_counter() - start
    shutil.rmtree(home, ignore_errors=True)
    return {"ingest_s": ingest_s, "validate_s": validate_s, "summary": summary, "api_s": api_start,
            "peak_rss": rss.peak, "validation_success": bool(validation["success"] if isinstance(validation, dict) else validation.success)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "records")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the results into")
    args = parser.parse_args()
    if not (REALDATA / BUNDLES).exists():
        raise SystemExit(f"{REALDATA / BUNDLES} is missing: set MEDMETA_REALDATA to the shared realdata folder")

    files_total = build_folder(args.data, args.copies)
    files = sorted(args.data.rglob("*.json"))
    for f in files:  # warm the page cache for both contenders
        f.read_bytes()
    load_before = os.getloadavg()[0]
    bare_s, resources = bare_loop(files)
    run = medmeta_ingest(args.data)
    load_after = os.getloadavg()[0]
    summary = run["summary"]

    bare_rps, ingest_rps = resources / bare_s, resources / run["ingest_s"]
    ratio = ingest_rps / bare_rps
    command = f"python bench/records.py --copies {args.copies}"
    text = f"""## Records ingest throughput on real FHIR (issue 11)

`{command}` — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average
{load_before:.1f} before and {load_after:.1f} after. Folder: the shared 100-patient Synthea R4 export copied
{args.copies} times with fresh UUIDs: {files_total} files, {resources:,} resources, {summary['patients']} patients.

| contender | seconds | resources/s |
|---|---:|---:|
| bare loop: `json.load` of every file, 1 process | {bare_s:.2f} | {bare_rps:,.0f} |
| `medmeta ingest` flow (parse, de-identify, parts, consolidation, snapshot), all cores | {run['ingest_s']:.2f} | {ingest_rps:,.0f} |

**medmeta / bare = {ratio:.2f}x** (target: at least 0.5x); peak resident memory of the flow and its
workers **{run['peak_rss'] / 2**20:,.0f} MB** (target: under 1 GB). Stored: {summary['tables']['conditions']:,}
conditions, {summary['tables']['observations']:,} observations, {summary['tables']['medication_exposures']:,}
medication exposures; {summary['rows_quarantined']} rows quarantined. The Prefect API was started before the
clock ({run["api_s"]:.1f} s, the ingest's worker forkserver booting meanwhile as in `medmeta ingest`). Validation of the snapshot with Great Expectations, timed on its own:
{run['validate_s']:.2f} s ({'passed' if run['validation_success'] else 'FAILED'}).
"""
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
