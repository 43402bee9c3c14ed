"""``medmeta serve``: register the deployments with the Prefect server in ``PREFECT_API_URL``, run
their flows in this process and watch the landing folder (one long-lived ``LandingWatcher``, no flow
run per look) until stopped.

Stopping (SIGTERM or Ctrl-C) is ``stop_serving``: the watcher stops, the runner cancels the flow runs
it started, every schedule this process created is paused (the deployments too), and any run of these
deployments (or subflow run of one) still Pending (Submitting included), Running or Cancelling is
marked Cancelled with the reason. ``serve`` then returns: the command exits 0, whichever signal it was
(stopping is what an operator asked for; a non-zero code would make a service manager report a failure).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from uuid import UUID

from deployments.definitions import WATCHING, ServeSettings, build_deployments, landing_token, landings_env
from medmeta.errors import MedmetaError
from tasks.concurrency import ensure_training_limit

STOP_TIMEOUT_S = 30.0  # for the runner to cancel its flow runs


def require_server(timeout_s: float = 5.0) -> str:
    """The API URL of a healthy Prefect server, or a MedmetaError that says what is wrong."""
    import httpx

    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        raise MedmetaError(
            "no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to a running "
            "server; start a local one with `medmeta server`"
        )
    try:
        response = httpx.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError as error:
        raise MedmetaError(f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(error).__name__}); "
                           "is it running? `medmeta server` starts one") from None
    if response.status_code != 200:
        raise MedmetaError(f"the Prefect server at PREFECT_API_URL={url} is not healthy (HTTP {response.status_code})")
    return url


def say(line: str) -> None:
    """One line on stderr: what the serve process tells its operator (a log line per arrival)."""
    print(line, file=sys.stderr, flush=True)


def serve(settings: ServeSettings) -> None:
    """Register and serve the nightly and on-new-cases deployments and watch the landing folder
    (blocks until SIGTERM or SIGINT; then stops cleanly and returns)."""
    require_server()
    ensure_training_limit()  # visible (Concurrency page) before the first pipeline trains
    os.environ.update(landings_env(settings))  # the flow-run subprocesses resolve the landing token with it
    deployments = build_deployments(settings)
    asyncio.run(_serve(settings, deployments, landing_token(settings)))


async def _serve(settings: ServeSettings, deployments: list, token: str) -> None:
    from prefect.runner import Runner

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    why: list[str] = []

    def stop_on(signum: int) -> None:
        if not why:
            why.append(signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_on, signum)
    runner = Runner(name=f"medmeta-serve-{token[:8]}", pause_on_shutdown=False)  # we pause, all of them
    # Runner.start sets its own SIGTERM handler (it stops the loop from inside the handler and
    # exits): ours only asks this coroutine to stop
    runner.handle_sigterm = lambda signum, frame: loop.call_soon_threadsafe(stop_on, signum)
    ids = [await runner.aadd_deployment(d) for d in deployments]
    watcher = _landing_watcher(settings, token)
    running = asyncio.create_task(runner.start())
    await asyncio.sleep(0)
    try:
        watcher.start()
    except BaseException:
        running.cancel()
        raise
    journal = _change_journal(settings, token) if watcher.mode == "inotify" else None
    say(f"medmeta serve: {', '.join(d.name for d in deployments)} served; {WATCHING} {token} "
        f"({watcher.mode}{', change journal kept' if journal else ''}); stop with Ctrl-C or SIGTERM")
    waiting = asyncio.create_task(stopping.wait())
    await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
    reason = f"medmeta serve was stopped ({why[0] if why else 'its runner ended'})"
    say(f"{reason}: stopping the watcher, cancelling its runs, pausing its schedules")
    await asyncio.to_thread(watcher.stop)
    if journal is not None:
        journal.stop()
    if not running.done():
        try:
            await asyncio.wait_for(runner.astop(), STOP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001: tidied below whatever the runner managed
            say(f"the runner did not stop cleanly ({type(error).__name__}); tidying its runs")
        try:
            await asyncio.wait_for(running, STOP_TIMEOUT_S)
        except BaseException:  # noqa: BLE001: cancelled or timed out: the state sweep below still runs
            pass
    waiting.cancel()
    try:
        paused, cancelled = await asyncio.wait_for(stop_serving(ids, reason), STOP_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001: the server went first (or hangs): say so, do not hang
        raise MedmetaError(f"medmeta serve stopped, but the Prefect server did not answer "
                           f"({type(error).__name__}): its schedules may still be active; pause them in the UI "
                           "or run `medmeta serve` again and stop it") from None
    say(f"paused {paused} schedules of {len(ids)} deployments; {cancelled} unfinished runs marked Cancelled")


def _landing_watcher(settings: ServeSettings, token: str):
    from flows.landing_flow import home_pseudonymizer
    from medmeta.home import Home
    from medmeta.landing.watcher import LandingWatcher, polling_asked
    from tasks.watch import announce_arrival

    def arrived(changes) -> None:
        announce_arrival(token, changes)
        say(f"landing {token}: {changes.new} new, {changes.changed} changed, {changes.removed} removed files "
            f"({changes.files} in all): medmeta.cases.arrived")

    return LandingWatcher(settings.landing, Home.at(settings.home).ledger, home_pseudonymizer(settings.home),
                          arrived, settle_s=settings.settle_s, polling=settings.watch_polling or polling_asked(),
                          poll_every_s=settings.watch_every_s)


def _change_journal(settings: ServeSettings, token: str):
    """The landing folder's change journal, kept while serving (``medmeta.landing.journal``): ingest runs
    then skip the ``stat`` of each file in folders nothing touched. None, said in one line, when it can not
    be kept (no inotify, out of watches, a network file system): runs then ``stat`` every file."""
    from medmeta.landing.journal import started

    try:
        return started(settings.landing, settings.home)
    except MedmetaError as error:
        say(f"{error}; ingest looks at every file")
        return None


async def stop_serving(deployment_ids: list[UUID], reason: str) -> tuple[int, int]:
    """Pause every schedule of ``deployment_ids`` (and the deployments), mark their unfinished flow runs
    and those runs' unfinished subflow runs Cancelled with ``reason``; (schedules paused, runs cancelled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    unfinished = FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]))
    paused = cancelled = 0
    async with get_client() as client:
        for deployment_id in deployment_ids:
            deployment = await client.read_deployment(deployment_id)
            for schedule in deployment.schedules:
                if schedule.active:
                    await client.update_deployment_schedule(deployment_id, schedule.id, active=False)
                paused += 1
            await client.pause_deployment(deployment_id)
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(state=unfinished), limit=200)
        parents = [run.id for run in runs]
        while parents:  # their subflows ran in the same (now stopped) processes
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=unfinished, parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)), limit=200)
            runs.extend(children)
            parents = [run.id for run in children]
        for run in runs:
            await client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
            cancelled += 1
    return paused, cancelled
