"""Ingest throughput: medmeta's ingest flow against a bare single-process pydicom loop.

Both run in one process, on the same files, with the page cache warm:
  - bare: ``pydicom.dcmread(f).pixel_array`` for every file, one process;
  - medmeta: the ``ingest`` flow into a fresh home (hash, sniff, decode, de-identify,
    normalise, resize, cache, parts, consolidation, snapshot), all cores. The Prefect API is
    started before the clock starts; its start-up is reported on its own line.

    python bench/ingest.py [--images 2000] [--size 256] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package
from _report import quiet_prefect_environment, start_ingest_runtime, write_section  # noqa: E402  (bench/_report.py)

quiet_prefect_environment()

SECTION = "ingest"


def build_folder(folder: Path, images: int, size: int) -> int:
    from medmeta.synth.generate import generate_images

    if folder.exists():
        shutil.rmtree(folder)
    generate_images(folder / "synthetic", count=images, size=size, seed=0)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import pydicom_test_files

    real = folder / "pydicom"
    real.mkdir(parents=True)
    for i, path in enumerate(pydicom_test_files()):
        shutil.copyfile(path, real / f"{i:04d}_{path.name}")
    return sum(1 for p in folder.rglob("*") if p.is_file())


def bare_loop(files: list[Path]) -> tuple[float, int]:
    import pydicom

    decoded = 0
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            try:
                pydicom.dcmread(f).pixel_array
                decoded += 1
            except Exception:
                pass
    return time.perf_counter() - start, decoded


def medmeta_ingest(folder: Path) -> tuple[float, dict, float]:
    from flows.ingest import ingest_flow
    from medmeta.prefect_runtime import embedded_run_settings

    api_start = start_ingest_runtime()
    home = Path(tempfile.mkdtemp(prefix="medmeta-bench-home-"))
    with embedded_run_settings():  # exactly as `medmeta ingest` runs it
        start = time.perf_counter()
        summary = ingest_flow(str(folder), str(home), run_validation=False)  # validation: bench/validation.py
        elapsed = time.perf_counter() - start
    shutil.rmtree(home, ignore_errors=True)
    return elapsed, summary, api_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "ingest")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the results into")
    args = parser.parse_args()

    files_total = build_folder(args.data, args.images, args.size)
    files = sorted(p for p in args.data.rglob("*") if p.is_file())
    for f in files:  # warm the page cache for both contenders
        f.read_bytes()
    bare_s, bare_decoded = bare_loop(files)
    ingest_s, summary, api_s = medmeta_ingest(args.data)

    bare_fps, ingest_fps = len(files) / bare_s, len(files) / ingest_s
    ratio = ingest_fps / bare_fps
    command = f"python bench/ingest.py --images {args.images} --size {args.size}"
    text = f"""## Ingest throughput (issue 2)

`{command}` (also `make bench`) — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.
Folder: {args.images} synthetic {args.size}x{args.size} CT/MR files (the synth's mix of transfer syntaxes)
plus pydicom's and pydicom-data's real test files: {files_total} files in all. Page cache warm for both.

| contender | files | seconds | files/s |
|---|---:|---:|---:|
| bare loop: `dcmread` + `pixel_array`, 1 process ({bare_decoded} decoded, the rest raise) | {len(files)} | {bare_s:.2f} | {bare_fps:.0f} |
| `medmeta ingest` flow, {summary['files_ingested']} ingested, {summary['files_quarantined']} quarantined, {summary['images']} images | {summary['files_seen']} | {ingest_s:.2f} | {ingest_fps:.0f} |

**medmeta / bare = {ratio:.2f}x** (target: at least 1.5x). medmeta does more per file than the bare loop:
SHA-256, content sniffing, de-identification, rescale/VOI/photometric handling, normalise and resize,
the pixel cache, a part per file, consolidation and the snapshot. The Prefect API was started before the
clock started ({api_s:.1f} s for the embedded server); a cold `medmeta ingest` pays that once per command.
As `medmeta ingest` does with the embedded server, flow-run heartbeats are off (`medmeta/prefect_runtime.py`).
"""
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
