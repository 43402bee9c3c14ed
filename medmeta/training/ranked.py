"""Meta-training on N processes: the torchrun launcher (flow side) and the rank entry point.

``run_torchrun(nproc, entry, on_report=...)`` runs ``python -m torch.distributed.run --standalone
--nproc_per_node N <entry>`` with this interpreter and waits for it. The ranks talk back through
their stdout: a line ``MEDMETA-RANKED {json}`` is a report (``rank``: each rank's pid at start;
``step`` / ``validation``: rank 0's progress; ``progress``: rank 0's evaluation progress; ``error``: a rank's own failure), handed to
``on_report`` as it arrives, so a Prefect task can keep its progress artifact live. Other lines
are logged. When a rank dies (killed, out of memory, an exception) torchrun's agent stops the
others and exits non-zero; ``RankFailed`` then names the rank and how it ended, within seconds
(the process group's timeout bounds a survivor blocked in an all-reduce, see
``metalearn.distributed``). Nothing is half-written: rank 0 writes checkpoints atomically.

``python -m medmeta.training.ranked --home H --taskset T --algorithm A --settings FILE`` is what
each rank runs (``train_model_ranked``): it joins the process group (gloo on CPU, NCCL on CUDA,
one GPU per local rank; the CUDA branch is untested here) and trains with
``medmeta.training.train.train_in_process``; rank 0 alone writes the model folder.
``... --home H --evaluate MODEL --settings FILE`` (``evaluate_model_ranked``) evaluates a trained
model instead (gloo, on CPU): each rank scores a share of the meta-test episodes with
``medmeta.training.evaluate.evaluate_in_process``; rank 0 alone writes evaluation.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from medmeta.errors import MedmetaError

PREFIX = "MEDMETA-RANKED "
MONITOR_INTERVAL_S = 0.5  # how often torchrun's agent looks at its workers
RERUN_TRAINING = "The last checkpoint is intact: run the training again to resume from it"


class RankFailed(MedmetaError):
    """A training or evaluation rank died or failed; ``rank`` is None when torchrun did not say which."""

    def __init__(self, message: str, rank: int | None, exitcode: int | None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode


def report(kind: str, **fields) -> None:
    """Write one report line for the launcher (any rank; the launcher reads them all).

    The ranks share torchrun's stdout pipe: the line goes out in one ``write`` (atomic on a pipe up
    to PIPE_BUF, 4 KiB), never as ``print``'s separate text and newline writes, which two ranks
    interleave into one unreadable line (a lost report: a rank's pid, say).
    """
    line = (PREFIX + json.dumps({"kind": kind, **fields}, default=str) + "\n").encode()
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    while line:
        line = line[os.write(fd, line):]


def check_nproc(nproc: int, device: str = "auto", job: str = "training") -> int:
    """``nproc`` when it is a sound world size: at least 1; at most the CPU cores on CPU, the GPUs on CUDA
    (``job``: "training" or "evaluation", for the message)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise MedmetaError(f"nproc must be a positive integer ({job} processes), got {nproc!r}")
    if nproc == 1:
        return nproc
    gpus = _cuda_count() if device == "auto" or device.startswith("cuda") else 0
    if device.startswith("cuda") or (device == "auto" and gpus):
        if nproc > gpus:
            raise MedmetaError(f"nproc {nproc} is more than the {gpus} GPUs of this machine (one rank per GPU)")
        return nproc
    cores = os.cpu_count() or 1
    if nproc > cores:
        raise MedmetaError(f"nproc {nproc} is more than the {cores} CPU cores of this machine; "
                           f"use at most {cores} {job} processes on CPU")
    return nproc


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA runtime counts as none
        return 0


def torchrun_command(nproc: int, entry: Sequence[str]) -> list[str]:
    """The torchrun command line: this interpreter, one node, ``nproc`` ranks; ``entry`` is a script
    and its arguments, or ``["-m", module, ...]``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--monitor-interval={MONITOR_INTERVAL_S}", "--max-restarts=0", *entry]


_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def _failures(stderr: str) -> list[tuple[int, int]]:
    """(rank, exit code) of each failure in torchrun's ChildFailedError summary."""
    return [(int(r), int(c)) for r, c in _FAILURE.findall(stderr)]


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def run_torchrun(nproc: int, entry: Sequence[str], *, on_report: Callable[[dict], None] | None = None,
                 on_line: Callable[[str], None] | None = None, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, threads_per_rank: int | None = None,
                 job: str = "training") -> None:
    """Run ``entry`` on ``nproc`` ranks with torchrun and wait; reports go to ``on_report`` as they come.

    Raises ``RankFailed`` naming the failed rank (a rank killed by a signal first, else the
    rank's own error report, else torchrun's first observed failure). The launcher's own
    SIGINT/SIGTERM/exception stops torchrun (which stops the ranks: they checkpoint and exit).
    ``job`` ("training" or "evaluation") names what the ranks do in the error's message.
    """
    rerun = (RERUN_TRAINING if job == "training" else
             "Nothing of the evaluation was written: run it again")
    cores = os.cpu_count() or 1
    threads = threads_per_rank or max(1, cores // nproc)
    run_env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(torchrun_command(nproc, entry), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=run_env, cwd=cwd, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=400)

    def drain_stderr() -> None:
        for line in proc.stderr:
            tail.append(line)

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    errors: list[dict] = []
    try:
        for line in proc.stdout:
            if line.startswith(PREFIX):
                try:
                    message = json.loads(line[len(PREFIX):])
                except json.JSONDecodeError:
                    continue
                if message.get("kind") == "error":
                    errors.append(message)
                if on_report is not None:
                    on_report(message)
            elif on_line is not None:
                on_line(line.rstrip("\n"))
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it: the ranks checkpoint and stop
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    if code == 0:
        return
    stderr = "".join(tail)
    _log_tail(stderr, job, code)
    root_cause = _failures(stderr.rpartition("Root Cause")[2])  # torchrun's first observed failure
    failures = root_cause + _failures(stderr.rpartition("Root Cause")[0])
    # killed from outside (SIGKILL: out of memory or an operator): that rank is the story. SIGTERM is
    # torchrun stopping the rest; SIGABRT is a rank's own native abort, often a consequence of a
    # peer's failure, so a rank's own error report comes first
    killed = [(r, c) for r, c in failures if c < 0 and c not in (-signal.SIGTERM, -signal.SIGABRT)]
    killed += [(r, c) for r, c in failures if c == -signal.SIGABRT and not errors]
    if killed:
        rank, exitcode = killed[0]
        raise RankFailed(f"{job} rank {rank} of {nproc} {_how(exitcode)}; the others were stopped. {rerun}",
                         rank, exitcode)
    if errors:
        first = errors[0]
        raise RankFailed(f"{job} rank {first.get('rank')} of {nproc} failed: {first.get('message')}",
                         first.get("rank"), code)
    if failures:
        rank, exitcode = failures[0]
        raise RankFailed(f"{job} rank {rank} of {nproc} {_how(exitcode)}; {rerun[0].lower()}{rerun[1:]}",
                         rank, exitcode)
    last = next((ln.strip() for ln in reversed(tail) if ln.strip()), "no output")
    raise RankFailed(f"torchrun with {nproc} ranks exited with code {code}: {last[:300]}", None, code)


def _log_tail(stderr: str, job: str, code: int, lines: int = 60) -> None:
    """The end of torchrun's and the ranks' stderr, logged when they fail: the one-line error says
    which rank and how, the log keeps what the rank said (a C++ abort's message, a traceback)."""
    import logging

    last = [ln for ln in stderr.splitlines() if ln.strip()][-lines:]
    logging.getLogger("medmeta.training").warning("%s ranks failed (torchrun exit code %s); the end of their "
                                                  "stderr:\n%s", job, code, "\n".join(last))


# -- the rank side ------------------------------------------------------------------------------


def launch_ranks(nproc: int, home, job_args: Sequence[str], settings, *, on_report: Callable[[dict], None],
                 job: str = "training") -> None:
    """Run this module on ``nproc`` torchrun ranks for ``home`` with ``job_args`` (``--taskset T
    --algorithm A`` or ``--evaluate MODEL``) and the pipeline ``settings``, handed over in a
    temporary file; each rank's plain output line goes to the log, its reports to ``on_report``."""
    import logging
    import tempfile

    log = logging.getLogger("medmeta.training")
    with tempfile.TemporaryDirectory(prefix="medmeta-ranked-") as scratch:
        settings_file = Path(scratch) / "settings.json"
        settings_file.write_text(json.dumps({"settings": settings.as_dict(), "source": settings.source}))
        root = str(Path(__file__).resolve().parents[2])  # the ranks import medmeta (and metalearn) from here
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        run_torchrun(nproc, ["-m", "medmeta.training.ranked", "--home", str(home.root), *job_args,
                             "--settings", str(settings_file)],
                     on_report=on_report, on_line=lambda line: log.info("%s", line), env={"PYTHONPATH": path},
                     job=job)


def _step_fields(r) -> dict:
    return {k: getattr(r, k) for k in r.__dataclass_fields__}


def train_model_ranked(home: str, taskset: str, algorithm: str, settings_file: str) -> int:
    """One rank of a multi-process training (run by torchrun); rank 0 reports progress. Exit code."""
    from medmeta.home import Home
    from medmeta.training.train import train_in_process
    from metalearn import distributed

    settings = _saved_settings(settings_file)
    device = distributed.rank_device(str(settings.train["device"]))

    def train(w) -> None:
        on_step = (lambda r: report("step", **_step_fields(r))) if w.writes else None
        on_validation = (lambda r: report("validation", **_step_fields(r))) if w.writes else None
        train_in_process(Home.at(home), taskset, algorithm, settings, on_step=on_step, on_validation=on_validation,
                         device=str(device))

    return _as_rank(device, train)


def evaluate_model_ranked(home: str, model: str, settings_file: str) -> int:
    """One rank of a multi-process evaluation (run by torchrun): gloo on CPU, as one process
    evaluates; each rank scores its share of the episodes, rank 0 writes. Exit code."""
    import torch

    from medmeta.home import Home
    from medmeta.training.evaluate import evaluate_in_process, report_progress

    settings = _saved_settings(settings_file)
    return _as_rank(torch.device("cpu"), lambda w: evaluate_in_process(
        Home.at(home), model, settings, on_progress=report_progress if w.writes else None))


def _saved_settings(settings_file: str):
    from medmeta.training.settings import settings_from_dict

    saved = json.loads(Path(settings_file).read_text())
    return settings_from_dict(saved["settings"], saved["source"])


def _as_rank(device, body: Callable) -> int:
    """Join the process group on ``device``, report this rank, run ``body(world)``; a failure is
    reported (named for the launcher) before the exit code 1 or the traceback."""
    from metalearn import distributed

    w = distributed.init_process_group(device)
    report("rank", rank=w.rank, pid=os.getpid(), world=w.size, device=str(device))
    try:
        body(w)
    except MedmetaError as error:
        report("error", rank=w.rank, type=type(error).__name__, message=str(error))
        return 1
    except Exception as error:  # noqa: BLE001 - named for the launcher, then the traceback for the log
        report("error", rank=w.rank, type=type(error).__name__, message=f"{type(error).__name__}: {error}")
        raise
    finally:
        distributed.close_process_group()
    return 0


def exit_now(code: int) -> None:
    """End a rank without interpreter finalisation once its work is done and its files are closed:
    a native library's exit-time destructor (gloo's, a thread pool's) must not turn a finished rank
    into a failed one that takes its peers down with it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmeta.training.ranked")
    parser.add_argument("--home", required=True)
    parser.add_argument("--taskset", help="train ALGORITHM on this task set")
    parser.add_argument("--algorithm")
    parser.add_argument("--evaluate", metavar="MODEL", help="evaluate this trained model instead")
    parser.add_argument("--settings", required=True, help="the pipeline settings as JSON (written by the launcher)")
    args = parser.parse_args(argv)
    if args.evaluate:
        return evaluate_model_ranked(args.home, args.evaluate, args.settings)
    if not (args.taskset and args.algorithm):
        parser.error("--taskset and --algorithm are required to train (or --evaluate MODEL)")
    return train_model_ranked(args.home, args.taskset, args.algorithm, args.settings)


if __name__ == "__main__":
    exit_now(main())
