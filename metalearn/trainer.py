"""The outer loop: drive any ``MetaLearner`` with checkpoints, validation and exact resume.

``sample(step) -> Episodes`` must be a deterministic function of the step (0-based); with the
torch RNG state kept in each checkpoint, a run killed at any point and resumed ends with the
same weights as an uninterrupted one (bit for bit on CPU, same thread count).

Per step: ``meta_step`` leaves the meta-gradient in ``p.grad``; a NaN/inf loss or gradient
raises ``DivergenceError`` before the optimizer steps and nothing is written, so the last good
checkpoint stays. Every ``val_every`` steps the learner is scored on fixed validation episodes;
the best weights are kept, and ``patience`` validations without improvement stop the run.
SIGINT/SIGTERM finish the current step, write a checkpoint and raise ``TrainingInterrupted``.

Under ``torchrun`` (a process group initialised, see ``metalearn.distributed``) each rank trains on
its share of every meta-batch and of the validation episodes; the meta-gradient, the metrics and
the stop/divergence flags are all-reduced once per step, so all ranks hold the same weights and
take the same decisions. Rank 0 alone writes checkpoints. A multi-rank run reseeds torch at each
step from (seed, step, rank), so the RNG state a checkpoint keeps (rank 0's) need not match the
world size: a checkpoint of 2 ranks resumes in 1 process and the other way round.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from metalearn import distributed
from metalearn.checkpoint import CHECKPOINT_NAME, current_rng, load_checkpoint, save_checkpoint
from metalearn.episodes import DivergenceError, Episodes
from metalearn.learner import MetaLearner, StepMetrics

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM; ``checkpoint`` is where it can resume from (None if unsaved)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass(frozen=True)
class StepReport:
    step: int  # steps completed, 1..max_steps
    max_steps: int
    loss: float
    accuracy: float | None  # None for regression
    grad_norm: float  # of the meta-gradient, before clipping
    lr: float
    seconds: float  # wall time of this step


@dataclass(frozen=True)
class ValidationReport:
    step: int
    loss: float
    accuracy: float | None
    monitor: str  # "accuracy" (classification, higher is better) or "loss" (regression, lower is better)
    value: float  # the monitored metric at this validation
    best_value: float
    best_step: int
    improved: bool
    bad_validations: int  # consecutive validations without improvement
    patience: int | None


@dataclass
class TrainResult:
    steps: int  # steps completed
    stop_reason: str  # "max_steps" or "early_stopping"
    monitor: str | None
    best_value: float | None
    best_step: int | None  # the weights the learner holds when restore_best and a validation ran
    history: list[dict[str, Any]] = field(default_factory=list)  # per step: step, loss, accuracy, grad_norm
    validations: list[dict[str, Any]] = field(default_factory=list)  # ValidationReport fields
    checkpoint: Path | None = None
    device: str = "cpu"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _finite_grads(params: Sequence[torch.nn.Parameter]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def _finite_params(params: Sequence[torch.nn.Parameter]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


class Trainer:
    """Meta-train ``learner`` on ``sample(step)`` for ``max_steps`` outer steps; see ``fit``.

    ``config`` is the caller's description of the run (algorithm, backbone, task set ...); it is
    stored in each checkpoint, and a checkpoint written with another config is refused on resume.
    """

    def __init__(self, learner: MetaLearner, sample: Callable[[int], Episodes], *, max_steps: int,
                 lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0, grad_clip: float | None = None,
                 val_episodes: Episodes | Sequence[Episodes] | None = None, val_every: int = 100,
                 patience: int | None = None, checkpoint_dir: str | Path | None = None, checkpoint_every: int = 100,
                 seed: int = 0, device: str | torch.device = "auto", amp: bool | None = None,
                 config: dict[str, Any] | None = None, on_step: Callable[[StepReport], None] | None = None,
                 on_validation: Callable[[ValidationReport], None] | None = None, restore_best: bool = True,
                 handle_signals: bool = True):
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if val_every < 1 or checkpoint_every < 1:
            raise ValueError("val_every and checkpoint_every must be at least 1")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be at least 1 (or None), got {patience}")
        self.learner, self.sample, self.max_steps = learner, sample, int(max_steps)
        self.device = pick_device(device)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        if self.amp and self.device.type != "cuda":
            raise ValueError("bf16 autocast (amp) is only used on CUDA")
        if isinstance(val_episodes, Episodes):
            val_episodes = [val_episodes]
        self.val_batches = [b.check().to(self.device) for b in (val_episodes or [])]
        self.val_every, self.patience = int(val_every), patience
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.seed, self.restore_best, self.handle_signals = int(seed), restore_best, handle_signals
        self.on_step, self.on_validation = on_step, on_validation
        self.config = {"run": config or {},
                       "trainer": {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
                                   "grad_clip": grad_clip, "seed": self.seed, "val_every": self.val_every,
                                   "amp": self.amp}}
        self.learner.to(self.device)
        self.params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[optimizer](self.params, lr=lr, weight_decay=weight_decay)
        self.grad_clip = grad_clip
        self._stop_signal: int | None = None
        self.world = distributed.world()
        self._stop_agreed = False

    @property
    def checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT_NAME if self.checkpoint_dir is not None else None

    # -- state -----------------------------------------------------------------------------------

    def _fresh_state(self) -> None:
        torch.manual_seed(self.seed)
        self.step, self.history, self.validations = 0, [], []
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.bad_validations, self.stop_reason = 0, None
        self.last_validation = 0

    def _trainer_state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "bad_validations": self.bad_validations,
                "last_validation": self.last_validation, "stop_reason": self.stop_reason,
                "history": self.history, "validations": self.validations}

    def _save(self, rng: dict[str, Tensor] | None = None) -> Path | None:
        if self.checkpoint_path is None:
            return None
        if not _finite_params(self.params):
            raise DivergenceError(f"weights hold NaN or inf at step {self.step}; not written, "
                                  f"{self.checkpoint_path} keeps the last good state")
        if not self.world.writes:  # rank 0 writes for all (every rank holds the same state)
            return self.checkpoint_path
        return save_checkpoint(self.checkpoint_path, self.learner, self.optimizer, step=self.step, config=self.config,
                               trainer=self._trainer_state(), best_state=self.best_state, rng=rng)

    def _resume(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        ckpt = load_checkpoint(path, self.learner, self.optimizer, config=self.config)
        state = ckpt.trainer
        self.step, self.history, self.validations = ckpt.step, state["history"], state["validations"]
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.bad_validations, self.last_validation = state["bad_validations"], state["last_validation"]
        self.stop_reason = state["stop_reason"]
        if self.stop_reason == "max_steps" and self.step < self.max_steps:
            self.stop_reason = None  # max_steps was raised: train on
        self.best_state = ({k: v.to(self.device) for k, v in ckpt.best_state.items()}
                           if ckpt.best_state is not None else None)
        return True

    # -- one step ------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def _train_step(self, step: int) -> StepReport:
        start = time.perf_counter()
        batch = self.sample(step).check().to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.learner.train()
        if self.world.distributed:
            metrics = self._distributed_meta_step(step, batch)
        else:
            with self._autocast():
                metrics: StepMetrics = self.learner.meta_step(batch)
        if not math.isfinite(metrics.loss):
            raise DivergenceError(f"loss became {metrics.loss} at step {step + 1}; nothing written"
                                  + self._last_good())
        if not _finite_grads(self.params):
            raise DivergenceError(f"meta-gradient holds NaN or inf at step {step + 1}; nothing written"
                                  + self._last_good())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            self.params, self.grad_clip if self.grad_clip is not None else math.inf))
        self._phase = "update"
        self.optimizer.step()
        self._phase = "done"
        if not _finite_params(self.params):
            raise DivergenceError(f"weights became NaN or inf at step {step + 1}; nothing written" + self._last_good())
        return StepReport(step=step + 1, max_steps=self.max_steps, loss=float(metrics.loss),
                          accuracy=None if metrics.accuracy is None else float(metrics.accuracy),
                          grad_norm=grad_norm, lr=float(self.optimizer.param_groups[0]["lr"]),
                          seconds=time.perf_counter() - start)

    def _distributed_meta_step(self, step: int, batch: Episodes) -> StepMetrics:
        """This rank's share of the meta-step, then one all-reduce: the mean meta-gradient over all
        the batch's tasks in every rank's ``p.grad``, the batch's loss and accuracy, and whether any
        rank diverged or was asked to stop."""
        torch.manual_seed(distributed.step_seed(self.seed, step, self.world.rank))
        mine = distributed.shard(batch, self.world)
        local, loss_sum, acc_sum, diverged = 0, 0.0, 0.0, 0.0
        if mine is not None:
            local = mine.tasks
            try:
                with self._autocast():
                    m = self.learner.meta_step(mine)
                loss_sum, acc_sum = m.loss * local, (m.accuracy or 0.0) * local
            except DivergenceError:
                diverged = 1.0
                for p in self.params:
                    p.grad = None
        stop = 0.0 if self._stop_signal is None else 1.0
        loss_sum, acc_sum, diverged, stop = distributed.average_gradients(
            self.params, local, batch.tasks, [loss_sum, acc_sum, diverged, stop])
        self._stop_agreed = stop > 0
        if diverged:
            return StepMetrics(loss=math.nan, accuracy=None)
        return StepMetrics(loss=loss_sum / batch.tasks,
                           accuracy=None if batch.is_regression else acc_sum / batch.tasks)

    def _stop_requested(self) -> bool:
        """A signal arrived: on every rank at once in a multi-rank run (agreed in the step's all-reduce)."""
        return self._stop_agreed if self.world.distributed else self._stop_signal is not None

    def _last_good(self) -> str:
        path = self.checkpoint_path
        return f"; the last good checkpoint is {path}" if path is not None and path.is_file() else ""

    def validate(self) -> StepMetrics:
        """The learner's loss and accuracy on the validation episodes, averaged over tasks."""
        total, loss, acc = 0, 0.0, 0.0
        for batch in self.val_batches:
            if self.world.distributed:  # this rank's share of the episodes, summed over ranks below
                batch = distributed.shard(batch, self.world)
                if batch is None:
                    continue
            with self._autocast():
                m = self.learner.evaluate(batch)
            loss += m.loss * batch.tasks
            acc += (m.accuracy or 0.0) * batch.tasks
            total += batch.tasks
        if self.world.distributed:
            loss, acc, total = distributed.sum_across([loss, acc, total], self.device)
        regression = self.val_batches[0].is_regression
        return StepMetrics(loss=loss / total, accuracy=None if regression else acc / total)

    def _run_validation(self) -> ValidationReport:
        metrics = self.validate()
        if not math.isfinite(metrics.loss):
            raise DivergenceError(f"validation loss became {metrics.loss} at step {self.step}; nothing written"
                                  + self._last_good())
        monitor = "loss" if metrics.accuracy is None else "accuracy"
        value = metrics.loss if monitor == "loss" else metrics.accuracy
        if self.best_value is None:
            improved = True
        else:
            # accuracy is a ratio of counts: compared rounded, so a tie stays a tie however ranks summed it
            improved = value < self.best_value if monitor == "loss" else round(value, 12) > round(self.best_value, 12)
        if improved:
            self.best_value, self.best_step, self.bad_validations = value, self.step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.learner.state_dict().items()}
        else:
            self.bad_validations += 1
        self.last_validation = self.step
        report = ValidationReport(step=self.step, loss=metrics.loss, accuracy=metrics.accuracy, monitor=monitor,
                                  value=value, best_value=self.best_value, best_step=self.best_step,
                                  improved=improved, bad_validations=self.bad_validations, patience=self.patience)
        self.validations.append(asdict(report))
        if self.patience is not None and self.bad_validations >= self.patience:
            self.stop_reason = "early_stopping"
        if self.on_validation is not None:
            self.on_validation(report)
        return report

    def _validation_due(self) -> bool:
        return bool(self.val_batches) and self.step % self.val_every == 0 and self.last_validation != self.step

    # -- the loop ------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop now, whatever the step is doing
            raise KeyboardInterrupt
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def fit(self, resume: bool = True) -> TrainResult:
        """Train to ``max_steps`` or early stopping; resume from ``checkpoint_dir`` when it holds a checkpoint.

        A finished run's checkpoint is returned as is. With ``restore_best`` the learner ends
        holding the best validated weights. Raises ``DivergenceError`` on NaN/inf (nothing
        written), ``TrainingInterrupted`` on SIGINT/SIGTERM (a checkpoint written first), and
        ``CheckpointError`` when the checkpoint belongs to another config or learner.
        """
        self._fresh_state()
        if resume:
            self._resume()
        if self.world.distributed:  # the same start everywhere, whatever each rank built
            distributed.broadcast_module(self.learner)
        self._stop_signal, self._stop_agreed = None, False
        with self._signals():
            self._loop()
        if self.checkpoint_path is not None:
            self._save()
        if self.restore_best and self.best_state is not None:
            self.learner.load_state_dict(self.best_state)
        return TrainResult(steps=self.step, stop_reason=self.stop_reason,
                           monitor=self.validations[-1]["monitor"] if self.validations else None,
                           best_value=self.best_value, best_step=self.best_step, history=self.history,
                           validations=self.validations, checkpoint=self.checkpoint_path, device=str(self.device))

    def _loop(self) -> None:
        # The consistent state to write on an interrupt: (steps done, the RNG state that goes with them).
        consistent_rng = current_rng()
        self._phase = "done"
        try:
            if self.stop_reason != "early_stopping" and self._validation_due():
                self._phase = "validate"
                self._run_validation()  # a validation the interrupted run owed
                self._phase = "done"
            while self.stop_reason is None and self.step < self.max_steps:
                if self._stop_requested():
                    raise KeyboardInterrupt
                consistent_rng = current_rng()
                self._phase = "compute"
                report = self._train_step(self.step)
                consistent_rng = current_rng()
                self.step += 1
                self.history.append({"step": report.step, "loss": report.loss, "accuracy": report.accuracy,
                                     "grad_norm": report.grad_norm})
                if self.on_step is not None:
                    self.on_step(report)
                if self._validation_due():
                    self._phase = "validate"
                    self._run_validation()
                    consistent_rng = current_rng()
                    self._phase = "done"
                if self.stop_reason is None and self.step >= self.max_steps:
                    self.stop_reason = "max_steps"
                if self.step % self.checkpoint_every == 0 and self.stop_reason is None:
                    self._save()
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            if self._phase == "update":  # the optimizer was cut mid-update: this state cannot be written
                raise TrainingInterrupted(f"interrupted during the update of step {self.step + 1}; not written"
                                          + self._last_good(), self.step, None) from exc
            path = self._save(rng=consistent_rng)
            raise TrainingInterrupted(f"interrupted after {self.step} steps; checkpoint {path}", self.step,
                                      path) from exc
