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
- ``loop``: one task at a time, backward per task, native batch norm (a meta-step's query forward
  keeps less for backward, see below).

Defaults, by measurement (2-core CPU shared with other jobs, torch 2.13 CPU, float32, 1 intra-op
thread, 01:30-01:40 UTC on 2026-11-24, learn2learn 0.2.0 from /work/benchenv timed alongside):

- MLP -> ``batched``. Sinusoid 1-40-40-1, MAML 2nd order, meta-batch 25: one inner step 742
  it/s batched vs 322 vmap (learn2learn 58); five steps 169 vs 70 (learn2learn 16).
- conv4 / fusion on CPU -> ``loop``. conv4 28x28 5-way 1-shot, 15 queries/class, meta-batch 32,
  1 step, 2nd order: about 2.9 CPU-s per meta-iteration, like learn2learn's 2.8-2.9, peak RSS
  about 400 MB vs its 485 MB; vmap holds every task's graph (GBs) and is slower on CPU (notes).
- conv4 / fusion on CUDA -> ``loop`` as well: not measured (no GPU was available to this work).

Inside the loop strategy a MAML meta-step's query forward, which is differentiated once, keeps less
for backward, exactly (tests hold both to reference.py at 1e-10 in float64), in one of two ways
chosen by the backbone:

- batch norm over the set (conv4, fusion): the query set stays whole -- its statistics tie every
  query case to all the others, so a chunk of it would be embedded differently -- and each
  batch-norm block runs as lean.set_norm_block (``Plan.lean_query``): bitwise the same forward,
  no ReLU output or int64 pool indices kept, its backward in place. ``query_chunk`` is refused here.
- every case embedded on its own (mlp, conv4 ``norm='none'``): the query set in chunks of
  ``query_chunk`` cases (functional.chunked_query, ``Plan.chunk_queries``); default: QUERY_CHUNKS
  chunks, none smaller than the support set, none when that leaves one chunk.

Both are CPU defaults (measured there); on CUDA (not measured) the query forward is autograd's
unless ``query_chunk`` is given. Measured with 1 thread, profiler memory events, conv4 64 channels,
28x28, one 5-way 1-shot task with 75 queries, float32, load average about 3 from other jobs (times
rough): batch norm, lean blocks: peak live tensors of a meta-step 64 -> 42 MB second order,
58 -> 36 MB first order, 92 -> 80 and 90 -> 64 ms per task; ``norm='none'``, 4 chunks of 19:
47 -> 16.5 MB second order, 44 -> 13 MB first order, time within the noise (62-76 ms per task for
chunks of 5 to 75 cases).

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
QUERY_CHUNKS = 4  # the default number of query chunks (see the module docstring)


@dataclass(frozen=True)
class Plan:
    strategy: str  # one of STRATEGIES
    chunk: int | None  # tasks per chunk; None: the whole batch
    lean_query: bool = False  # MAML's query forward through lean.set_norm_block (loop, batch norm, CPU)
    chunk_queries: bool = False  # MAML's query set in chunks (loop, no batch norm over the set)
    query_chunk: int | None = None  # query cases per chunk as set; None: QUERY_CHUNKS chunks (see query_cases)

    @property
    def functorch(self) -> bool:
        return self.strategy == "vmap"

    @property
    def batched(self) -> bool:
        return self.strategy == "batched"

    @property
    def plain_norm(self) -> bool:
        return self.strategy == "vmap"

    def query_cases(self, support_cases: int, query_cases: int) -> int | None:
        """Query cases per chunk for a task with these set sizes, or None: the query set whole.
        The default makes at most QUERY_CHUNKS chunks, none smaller than the support set."""
        if not self.chunk_queries:
            return None
        size = self.query_chunk or max(support_cases, -(-query_cases // QUERY_CHUNKS))
        return size if size < query_cases else None


def _is_mlp(backbone: Backbone) -> bool:
    return isinstance(backbone.backbone if isinstance(backbone, WithHead) else backbone, MLP)


def _check_query_chunk(query_chunk) -> None:
    if query_chunk is not None and (isinstance(query_chunk, bool) or not isinstance(query_chunk, int)
                                    or query_chunk < 1):
        raise ValueError(f"query_chunk must be a whole number of query cases, at least 1 (or None: "
                         f"automatic), got {query_chunk!r}")


def choose_plan(backbone: Backbone, device: torch.device, strategy: str | None = None,
                task_chunk: int | None = None, query_chunk: int | None = None) -> Plan:
    """The measured default for this backbone and device (see the module docstring), unless
    ``strategy``, ``task_chunk`` and ``query_chunk`` say otherwise."""
    if strategy not in (None, *STRATEGIES):
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)} or None, got {strategy!r}")
    if task_chunk is not None and task_chunk < 1:
        raise ValueError(f"task_chunk must be at least 1, got {task_chunk}")
    _check_query_chunk(query_chunk)
    if strategy == "batched" and not _is_mlp(backbone):
        raise ValueError(f"the batched strategy needs an MLP backbone, got {type(backbone).__name__}")
    if strategy is None:
        strategy = "batched" if _is_mlp(backbone) else "loop"
    loop, set_norm = strategy == "loop", backbone.normalises_over_set
    if query_chunk is not None and not loop:
        raise ValueError(f"query_chunk applies to the loop strategy (one task at a time); the {strategy} "
                         "strategy runs every task's query set at once")
    if query_chunk is not None and set_norm:
        raise ValueError("query_chunk: this backbone's batch norm normalises the query set with its own "
                         "statistics, so the query cases are not independent and a chunk's outputs would "
                         "differ from the whole set's; only backbones without it (mlp, conv4 norm='none') "
                         "take query chunks (batch-norm conv nets keep the query set whole and save memory "
                         "with lean query blocks instead)")
    cpu = device.type == "cpu"  # the defaults were measured on CPU only
    return Plan(strategy, task_chunk or (1 if loop else None),
                lean_query=loop and set_norm and cpu,
                chunk_queries=loop and not set_norm and (cpu or query_chunk is not None),
                query_chunk=query_chunk)


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
