"""The arrival fast path, end to end: file drop to a published model, as an operator runs it.

A real ``medmeta server`` and ``medmeta serve --watch-every 5`` with the demo settings
(medmeta/config/pipeline-demo.yaml) on a home that already ran the demo (``make demo``: built here
first unless --home and --landing name one; not timed). Then, timed from the moment the files are
in the landing folder (moved in from a staging folder beside it):

  1. rare: new cases of a disease the champion never saw (``medmeta.synth.arrivals``) -> the
     champion adapted to it, published in the registry (target: at most 60 s);
  2. known: new cases of a class the champion meta-trained on -> a warm-started candidate
     published through the champion gate (target: at most 5 minutes).

The registry under the home is polled every 0.5 s; each arrival run's own summary
(``H/runs/arrival-*.json``) gives its stage durations, and the Prefect API when the run started.

    python bench/arrival.py [--home H --landing L] [--watch-every 5] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package
from _report import load_average, machine, revision, write_section  # noqa: E402  (bench/_report.py)
from tests.prefect_server import free_port, stop, wait_until  # noqa: E402  (the tests' process helpers)

SECTION = "arrival"
DEMO_SETTINGS = ROOT / "medmeta" / "config" / "pipeline-demo.yaml"
DEMO_RULES = ROOT / "validation" / "deliveries" / "images.yaml"
RARE, RARE_CASES = "I21.9", 4  # the long tail of the synthetic catalogue: never in the demo cohort
KNOWN, KNOWN_CASES = "J18.9", 6  # the demo's commonest disease: meta-learning splits
ADAPTED_TARGET_S, GATED_TARGET_S = 60, 300


def medmeta_env(api_url: str | None, prefect_home: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PREFECT_HOME"] = str(prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(more)
    return env


def medmeta(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "medmeta.cli", *args], capture_output=True, text=True, env=env,
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"medmeta {args[0]} failed:\n{result.stderr[-3000:]}")


def build_demo(work: Path, env: dict[str, str], settings: Path) -> tuple[Path, Path, float]:
    """``make demo``'s three commands into ``work`` (``settings``: the demo's unless
    --build-config says otherwise); returns (home, landing, seconds)."""
    home, landing = work / "home", work / "landing"
    started = time.perf_counter()
    medmeta("key", "create", "--home", str(home), env=env)
    medmeta("synth", "--out", str(landing), "--patients", "240", "--seed", "0", "--faults", env=env)
    medmeta("run", str(landing), "--home", str(home), "--config", str(settings), "--rules", str(DEMO_RULES),
            env=env)
    return home, landing, time.perf_counter() - started


@contextmanager
def started(args: list[str], env: dict[str, str], log: Path):
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "medmeta.cli", *args], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop(process)


def healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def arrival_runs(url: str) -> list:
    """The on-new-cases deployment's flow runs, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.definitions import ON_NEW_CASES

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[ON_NEW_CASES])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)


def deployments_ready(url: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        return len(client.read_deployments()) >= 2  # nightly and on-new-cases (the watcher is a thread of serve)


def settled(url: str, quiet_s: float, serve: subprocess.Popen, log: Path) -> None:
    """Wait until no on-new-cases run is pending and none started for ``quiet_s`` (the watcher's first
    look may report every file of an existing landing folder as new and start one)."""
    last_change, seen = time.monotonic(), None
    while True:
        if serve.poll() is not None:
            raise SystemExit(f"medmeta serve exited: {log.read_text()[-3000:]}")
        runs = arrival_runs(url)
        state = [(r.id, r.state.type.value if r.state else None) for r in runs]
        if state != seen:
            seen, last_change = state, time.monotonic()
        if all(r.state and r.state.is_final() for r in runs) and time.monotonic() - last_change > quiet_s:
            return
        time.sleep(1)


def drop(cases: Path, landing: Path) -> float:
    """Move the staged files into the landing folder; the wall-clock time they were all there."""
    for path in sorted(p for p in cases.rglob("*") if p.is_file()):
        target = landing / path.relative_to(cases)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    return time.time()


def registry_versions(home: Path, name: str) -> list[int]:
    from medmeta import registry

    return registry.versions(home, name) if name in registry.model_names(home) else []


def arrival(url: str, home: Path, landing: Path, staging: Path, diseases: list[str], per_disease: int, batch: int,
            published, timeout_s: float, serve: subprocess.Popen, log: Path) -> dict:
    """Drop the cases, wait for ``published()`` (a registry version), then for the arrival run's end."""
    from medmeta.synth.arrivals import write_new_cases

    before = {r.id for r in arrival_runs(url)}
    write_new_cases(staging / f"batch{batch}", diseases, per_disease, batch=batch)
    t0 = drop(staging / f"batch{batch}", landing)

    def found():
        if serve.poll() is not None:
            raise SystemExit(f"medmeta serve exited: {log.read_text()[-3000:]}")
        return published()

    try:
        version = wait_until(found, timeout_s, what=f"a published model after dropping {', '.join(diseases)}")
    except TimeoutError:
        print(f"no published model {timeout_s:.0f} s after dropping {', '.join(diseases)}", flush=True)
        return {"seconds": None, "version": None, "run_state": "not finished", "run_started_after_s": None,
                "run_total_s": None, "durations": {}, "summary": {}, "load": load_average()}
    seconds = time.time() - t0
    run = wait_until(lambda: next((r for r in arrival_runs(url) if r.id not in before and r.state
                                   and r.state.is_final()), None), timeout_s, what="the arrival run to finish", every_s=1)
    summaries = sorted((home / "runs").glob("arrival-*.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    return {"seconds": round(seconds, 1), "version": version, "run_state": run.state.type.value,
            "run_started_after_s": round(run.start_time.timestamp() - t0, 1) if run.start_time else None,
            "run_total_s": summary.get("durations_s", {}).get("total"), "durations": summary.get("durations_s", {}),
            "summary": summary, "load": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a home that already ran the demo (with --landing)")
    parser.add_argument("--landing", type=Path, help="the landing folder that home ingested")
    parser.add_argument("--work", type=Path, default=None, help="where to build the demo (a temp folder)")
    parser.add_argument("--build-config", type=Path, default=DEMO_SETTINGS,
                        help="the settings the home is built with (the demo's); serve always runs the demo's")
    parser.add_argument("--watch-every", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each published model")
    parser.add_argument("--known-timeout", type=float, default=None,
                        help="seconds to wait for the known-class candidate (default --timeout); past it the "
                             "report says it was not reached")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the results into")
    args = parser.parse_args()
    if (args.home is None) != (args.landing is None):
        parser.error("give both --home and --landing, or neither")
    work = args.work or Path(tempfile.mkdtemp(prefix="medmeta-bench-arrival-"))
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect"
    demo_s = None
    if args.home is None:
        home, landing, demo_s = build_demo(work, medmeta_env(None, prefect_home), args.build_config.resolve())
        print(f"demo built in {demo_s:.0f} s: {home}", flush=True)
    else:
        home, landing = args.home.resolve(), args.landing.resolve()
    os.environ["PREFECT_HOME"] = str(prefect_home)  # this process's Prefect client, before Prefect is imported
    from medmeta.home import Home
    from medmeta.tasksets.store import list_tasksets
    from medmeta.training.adapt import adapted_name
    from medmeta.training.publish import registry_name

    the_home = Home(home)
    taskset = list_tasksets(the_home)[0]["name"]
    model = registry_name(taskset)
    rare_model = adapted_name(model, RARE)
    staging = landing.with_name(landing.name + "-staging")
    shutil.rmtree(staging, ignore_errors=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with started(["server", "--home", str(work / "server-home"), "--port", str(port)],
                 medmeta_env(None, prefect_home), work / "server.log"):
        wait_until(lambda: healthy(url), 180, what="medmeta server")
        serve_log = work / "serve.log"
        with started(["serve", "--landing", str(landing), "--home", str(home), "--config", str(DEMO_SETTINGS),
                      "--watch-every", str(args.watch_every)], medmeta_env(url, prefect_home), serve_log) as serve:
            wait_until(lambda: deployments_ready(url), 180, what="medmeta serve's deployments")
            settled(url, quiet_s=3 * args.watch_every + 15, serve=serve, log=serve_log)
            print(f"served and settled; load {load_average()}", flush=True)
            rare_before = registry_versions(home, rare_model)
            rare = arrival(url, home, landing, staging, [RARE], RARE_CASES, 1,
                           lambda: (registry_versions(home, rare_model)[-1:] or [None])[0]
                           if registry_versions(home, rare_model) != rare_before else None,
                           args.timeout, serve, serve_log)
            print(f"rare: {rare['seconds']} s to {rare_model}@{rare['version']}", flush=True)
            known_before = registry_versions(home, model)
            known = arrival(url, home, landing, staging, [KNOWN], KNOWN_CASES, 2,
                            lambda: registry_versions(home, model)[-1]
                            if registry_versions(home, model) != known_before else None,
                            args.known_timeout or args.timeout, serve, serve_log)
            print(f"known: {known['seconds']} s to {model}@{known['version']}", flush=True)
    shutil.rmtree(staging, ignore_errors=True)
    text = report(args, demo_s, taskset, model, rare_model, rare, known)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


def report(args, demo_s, taskset: str, model: str, rare_model: str, rare: dict, known: dict) -> str:
    warm = (known["summary"].get("warm_starts") or [{}])[0]
    adapted = next((a for a in rare["summary"].get("adapted", []) if a.get("target") == RARE), {})

    def stages(result: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in result["durations"].items()) or "not finished"

    def took(result: dict, limit: float) -> str:
        return f"{result['seconds']:.1f} s" if result["seconds"] is not None else f"not within {limit:.0f} s"

    lines = [
        "## Arrival: file drop to a published model (`bench/arrival.py`)", "",
        f"Command: `python bench/arrival.py --watch-every {args.watch_every}"
        + (" --home H --landing L" if args.home else "")
        + (f" --build-config {args.build_config}" if args.build_config != DEMO_SETTINGS else "") + "`"
        + (f" (the home built first in {demo_s:.0f} s)" if demo_s else ""),
        f"Machine: {machine()}; revision {revision(ROOT, ('flows', 'tasks', 'medmeta'))}.",
        "A real `medmeta server` (SQLite) and `medmeta serve --watch-every "
        f"{args.watch_every}` with the demo settings on a home that ran the demo; task set `{taskset}`. "
        "Timed from the moment the files are in the landing folder to the version appearing in the registry.",
        f"**Load**: 1/5/15-min load averages {rare['load']} (rare) and {known['load']} (known) on "
        f"{os.cpu_count()} cores (above about 1.5: other work shared the machine, slower than a quiet one).", "",
        "| arrival | cases | published | drop -> published | target | arrival run started after | arrival run total |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| new rare disease {RARE} | {RARE_CASES} | `{rare_model}@{rare['version']}` "
        f"({adapted.get('decision', '-')}) | {took(rare, args.timeout)} | {ADAPTED_TARGET_S} s | "
        f"{rare['run_started_after_s']} s | {rare['run_total_s']} s |",
        f"| known class {KNOWN} | {KNOWN_CASES} | `{model}@{known['version']}` "
        f"({warm.get('published', {}).get('decision', '-')}) | {took(known, args.known_timeout or args.timeout)} | "
        f"{GATED_TARGET_S} s | "
        f"{known['run_started_after_s']} s | {known['run_total_s']} s |", "",
        f"Stages of the rare arrival (s): {stages(rare)}.",
        f"Stages of the known arrival (s): {stages(known)}.",
        f"The adapted model's estimate (its gate metric): {adapted.get('estimate') or adapted.get('metrics', {})}.",
    ]
    if warm.get("model"):
        lines.append(f"The warm start: `{warm['model']}`, from `{warm['parent']}` for {warm['steps']} steps; "
                     f"meta-test accuracy {_scores(warm.get('evaluation', []))}; the gate: "
                     f"{warm.get('published', {}).get('decision')} ({warm.get('published', {}).get('reason')}).")
    return "\n".join(lines) + "\n"


def _scores(evaluation: list[dict]) -> str:
    """The warm start's headline (medmeta.training.report.headline) at each shot count, in words."""
    from medmeta.training.report import score

    return "; ".join(f"{e['shots']}-shot meta {score(e.get('meta'))}, from scratch {score(e.get('from_scratch'))}, "
                     f"pretrain+fine-tune {score(e.get('pretrain_finetune'))}" for e in evaluation) or "-"


if __name__ == "__main__":
    main()
