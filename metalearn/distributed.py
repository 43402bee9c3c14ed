"""Data-parallel meta-training across processes: plain ``torch.distributed``, no medmeta.

The contract (what ``metalearn.trainer.Trainer`` does when a process group is initialised):

- Every rank samples the same meta-batch of ``T`` tasks (``sample(step)`` is deterministic) and
  takes its contiguous share (``share(T, rank, size)``); the shares are disjoint and their union
  is the whole batch, so 2 ranks see exactly the episodes 1 process sees.
- Each rank runs the learner's ordinary ``meta_step`` on its share, which leaves the mean over
  its ``n_r`` tasks in ``p.grad`` (Reptile: ``theta - mean adapted theta``, also a mean over
  tasks). ``average_gradients`` scales each rank's gradient by ``n_r / T`` and sums it over the
  ranks with one all-reduce: exactly the 1-process mean over all ``T`` tasks, for every
  algorithm, up to float rounding. A rank with no task (``T < size``) contributes zeros.
  The learner is never wrapped in DDP: the gradients are averaged explicitly, once per step,
  after the whole meta-step (a DDP reducer would fire inside MAML's inner loop or not at all
  under ``functional_call``).
- The same all-reduce carries the step's loss, accuracy, a divergence flag and a stop flag
  (SIGINT/SIGTERM), so all ranks raise, stop or go on together and none waits in a collective
  its peers have left.
- The process group's timeout (``collective_timeout``, 5 minutes) bounds a rank blocked in a
  collective whose peer hangs (alive but stuck), instead of gloo's default 30 minutes. A dead peer
  does not need it: torchrun's agent sees the exit within a second and stops the others. It must
  stay far above any legitimate gap between ranks (a loaded machine, rank 0 writing a checkpoint,
  an uneven share of evaluation episodes): at 20 s a loaded CI machine timed ranks out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from metalearn.episodes import Episodes, _map

DEFAULT_TIMEOUT_S = 300.0  # MEDMETA_TRAIN_COLLECTIVE_TIMEOUT_S overrides


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without a process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes checkpoints, weights and reports."""
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def collective_timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("MEDMETA_TRAIN_COLLECTIVE_TIMEOUT_S") or DEFAULT_TIMEOUT_S))


def rank_device(device: str) -> torch.device:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` for "cuda"/"auto" with CUDA present, else CPU
    (more local ranks than GPUs share them round-robin: only gloo allows that, NCCL refuses two ranks on one GPU)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return torch.device("cuda", local % max(1, torch.cuda.device_count()))
    return torch.device(device)


def init_process_group(device: torch.device) -> World:
    """Join the torchrun world (env:// rendezvous): NCCL on CUDA, gloo on CPU; timeout: ``collective_timeout``.

    ``$MEDMETA_TRAIN_BACKEND=gloo`` keeps gloo on CUDA too (gloo all-reduces CUDA tensors through the host):
    for checks of several ranks on one GPU, which NCCL refuses. The CUDA branch ran on an H200
    (bench/gpu_checks.py, BENCHMARKS.md).
    """
    if not dist.is_initialized():
        backend = os.environ.get("MEDMETA_TRAIN_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"MEDMETA_TRAIN_BACKEND must be nccl or gloo, got {backend!r}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if backend == "nccl":
            dist.init_process_group("nccl", timeout=collective_timeout(), device_id=device)
        else:
            dist.init_process_group("gloo", timeout=collective_timeout())
    return world()


def close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(total: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``total`` items; the shares of all ranks partition them."""
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def shard(batch: Episodes, w: World) -> Episodes | None:
    """This rank's tasks of ``batch`` (None when it has none)."""
    part = share(batch.tasks, w.rank, w.size)
    if part.stop <= part.start:
        return None
    cut = lambda t: t[part]  # noqa: E731
    return Episodes(_map(batch.support_x, cut), cut(batch.support_y), _map(batch.query_x, cut), cut(batch.query_y),
                    batch.n_way)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank at one step of a multi-rank run: a function of (seed, step, rank)
    alone, so no rank-specific RNG state has to be kept in a checkpoint."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2 ** 63)


def average_gradients(params: Sequence[torch.nn.Parameter], local_tasks: int, total_tasks: int,
                      extras: Sequence[float]) -> list[float]:
    """All-reduce ``p.grad * local_tasks / total_tasks`` (a sum over ranks: the mean over all tasks)
    and ``extras`` (summed as given) in one collective; returns the summed extras.

    A parameter whose gradient is None on every rank stays None (an optimizer skips it, as it
    does in one process); None on some ranks counts as zeros there.
    """
    device = params[0].device if params else torch.device("cpu")
    weight = local_tasks / total_tasks
    dtype = params[0].dtype if params else torch.float32
    parts: list[Tensor] = []
    for p in params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        parts.append((g.detach().to(dtype) * weight).reshape(-1))
    flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=dtype, device=device)
    tail = torch.tensor([float(x) for x in extras], dtype=torch.float64, device=device)
    flat = torch.cat(parts + [flags]) if parts else flags
    dist.all_reduce(flat)
    dist.all_reduce(tail)
    offset = 0
    for p, present in zip(params, flat[-len(params):] if params else []):
        n = p.numel()
        if float(present) > 0:
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        else:
            p.grad = None
        offset += n
    return tail.tolist()


def sum_across(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """The sum over ranks of each of ``values`` (float64)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's weights and buffers (in place)."""
    for t in module.state_dict().values():
        dist.broadcast(t, src=0)


def gather_in_order(local: list[float], indices: list[int]) -> list[float]:
    """Every rank's ``(index, value)`` pairs, gathered on all ranks and put in index order."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(zip(indices, local)))
    pairs = sorted(pair for part in gathered for pair in part)
    return [value for _, value in pairs]
