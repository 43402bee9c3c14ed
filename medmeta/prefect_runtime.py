"""How medmeta runs flows against Prefect's embedded server.

With no ``PREFECT_API_URL``, Prefect starts a server inside this process that lives and dies
with it. Flow-run heartbeats exist so that a server can mark a run whose process died as
crashed; the embedded server dies with that process, so they can not serve their purpose, and
in Prefect 3.8 they cost every flow run about one second (the engine joins a thread that sleeps
in 1 s steps). Against a real server (``PREFECT_API_URL`` set: deployments, workers) they stay on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def embedded_run_settings() -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class Stopped(KeyboardInterrupt):
    """A ``medmeta`` command stopped by SIGTERM or SIGINT (``signal``). A KeyboardInterrupt, so
    that Prefect's engine marks the flow run Crashed as it does on Ctrl-C, and the stack unwinds:
    ``atexit`` then stops the embedded server's subprocess (a process killed by SIGTERM's default
    action runs no ``atexit``, which left the server behind as an orphan)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signal = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports it: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signal


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT raise ``Stopped`` in the main thread (once; a second signal while
    stopping is ignored, so the unwinding is not cut short). The handlers before are restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def stop(signum, frame):
        if raised:
            return
        raised.append(signum)
        raise Stopped(signum)

    before = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
