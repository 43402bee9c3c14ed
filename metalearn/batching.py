"""How a batch of tasks is run: the one place that chooses the strategy per backbone and device.

Algorithms are pure functions ``task_fn(support_x, support_y, query_x, query_y)`` (functional.py);
``map_tasks`` runs one over a batch chunk by chunk, so a caller can call ``backward`` per chunk
and never hold every task's graph. Three strategies, all exact (tests hold each to the plain
per-task reference in reference.py to 1e-10 in float64):

- ``batched``: MLP backbones only. Parameters get a leading task dimension (expanded views) and
  every layer is one batched matrix product over all tasks; inner gradients by plain
  ``torch.autograd.grad`` of the summed per-task losses. No functorch overhead.
- ``vmap``: ``torch.func.vmap`` over tasks, inner gradients by ``torch.func.grad``; batch norm
  must then be the plain mean/var version (native batch norm's second-order gradient is wrong
  under vmap in torch 2.13), which ``plain_norm`` says.
- ``loop``: one task at a time, backward per task, native batch norm.

Defaults, by measurement (2-core CPU shared with other jobs, torch 2.13 CPU, float32, 1 intra-op
thread, 01:30-01:40 UTC on 2026-11-24, learn2learn 0.2.0 from /work/benchenv timed alongside):

- MLP -> ``batched``. Sinusoid 1-40-40-1, MAML 2nd order, meta-batch 25: one inner step 742
  it/s batched vs 322 vmap (learn2learn 58); five steps 169 vs 70 (learn2learn 16).
- conv4 / fusion on CPU -> ``loop``. conv4 28x28 5-way 1-shot, 15 queries/class, meta-batch 32,
  1 step, 2nd order: about 2.9 CPU-s per meta-iteration, like learn2learn's 2.8-2.9, peak RSS
  about 400 MB vs its 485 MB; vmap holds every task's graph (GBs) and is slower on CPU (notes).
- conv4 / fusion on CUDA -> ``loop`` as well: not measured (no GPU was available to this work).

bench/metalearn.py (2 threads, load average 5-7 from other jobs, so absolute rates are low):
sinusoid 1 step 99.6 it/s vs learn2learn 6.3 (15.7x), 5 steps 24.5 vs 1.9 (13.2x); conv4 2nd
order 0.07 vs 0.07 it/s, peak RSS rise 153-178 MB vs 201-216 MB; meta-gradients equal
learn2learn's to 3e-16 (sinusoid) and 0 (conv4) in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from metalearn.backbones import MLP, Backbone, WithHead
from metalearn.episodes import Episodes, _map


STRATEGIES = ("batched", "vmap", "loop")


@dataclass(frozen=True)
class Plan:
    strategy: str  # one of STRATEGIES
    chunk: int | None  # tasks per chunk; None: the whole batch

    @property
    def functorch(self) -> bool:
        return self.strategy == "vmap"

    @property
    def batched(self) -> bool:
        return self.strategy == "batched"

    @property
    def plain_norm(self) -> bool:
        return self.strategy == "vmap"


def _is_mlp(backbone: Backbone) -> bool:
    return isinstance(backbone.backbone if isinstance(backbone, WithHead) else backbone, MLP)


def choose_plan(backbone: Backbone, device: torch.device, strategy: str | None = None,
                task_chunk: int | None = None) -> Plan:
    """The measured default for this backbone and device (see the module docstring), unless
    ``strategy`` and ``task_chunk`` say otherwise."""
    if strategy not in (None, *STRATEGIES):
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)} or None, got {strategy!r}")
    if task_chunk is not None and task_chunk < 1:
        raise ValueError(f"task_chunk must be at least 1, got {task_chunk}")
    if strategy == "batched" and not _is_mlp(backbone):
        raise ValueError(f"the batched strategy needs an MLP backbone, got {type(backbone).__name__}")
    if strategy is None:
        strategy = "batched" if _is_mlp(backbone) else "loop"
    return Plan(strategy, task_chunk or (1 if strategy == "loop" else None))


def _stack(outputs: list):
    if isinstance(outputs[0], tuple):
        return tuple(_stack(list(parts)) for parts in zip(*outputs))
    if isinstance(outputs[0], dict):
        return {k: torch.stack([o[k] for o in outputs]) for k in outputs[0]}
    return torch.stack(outputs)


def map_tasks(task_fn: Callable, batch: Episodes, plan: Plan) -> Iterator[tuple[Episodes, object]]:
    """Yield ``(chunk, outputs)`` with ``task_fn``'s outputs stacked over the chunk's tasks."""
    for chunk in batch.chunks(plan.chunk or batch.tasks):
        args = (chunk.support_x, chunk.support_y, chunk.query_x, chunk.query_y)
        if plan.strategy == "batched":
            yield chunk, task_fn(*args)
        elif plan.strategy == "vmap":
            yield chunk, torch.func.vmap(task_fn, randomness="error")(*args)
        else:
            yield chunk, _stack([task_fn(*(_map(a, lambda t: t[i]) for a in args)) for i in range(chunk.tasks)])
