"""Score few-shot methods per test episode, with 95% confidence intervals.

A method is anything with ``adapt(support_x, support_y) -> Predictor`` (a ``MetaLearner`` or a
baseline of ``metalearn.baselines``). Each task of the test ``Episodes`` is one episode: the
method adapts on its support set and is scored on its query set, accuracy for classification,
mean squared error for regression. ``compare`` scores several methods on the very same episodes;
``evaluate_with_baselines`` compares a meta-learner with the two baselines of ``metalearn.baselines``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor, nn

from metalearn.episodes import Episodes, Inputs
from metalearn.learner import Predictor


class Adapts(Protocol):
    def adapt(self, support_x: Inputs, support_y: Tensor) -> Predictor: ...


@dataclass(frozen=True)
class Score:
    metric: str  # "accuracy" or "mse"
    mean: float
    ci95: float  # half-width: the interval is mean +- ci95
    episodes: int
    per_episode: list[float]

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95


def confidence_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the normal-approximation interval ``mean +- z * sd / sqrt(n)``.

    ``sd`` is the sample standard deviation (n - 1); ``z`` is 1.96 at 95%, the convention of
    few-shot papers, sound for the hundreds of episodes evaluations use. One value: half-width 0.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values to summarise")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, 0.0
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return mean, z * sd / math.sqrt(n)


def _task_inputs(x: Inputs, i: int) -> Inputs:
    return {k: v[i] for k, v in x.items()} if isinstance(x, dict) else x[i]


def _to(x: Inputs, device: torch.device) -> Inputs:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def episode_seed(seed: int, index: int) -> int:
    """The torch seed of test episode ``index`` of an evaluation seeded with ``seed``: a function of
    the two alone, so an episode's score does not depend on which process scores it, or after which."""
    return (int(seed) * 1_000_003 + int(index) * 104_729 + 7_919) % (2 ** 63)


def episode_scores(method: Adapts, episodes: Episodes | Iterable[Episodes],
                   device: str | torch.device = "cpu", split_across_ranks: bool = False,
                   seed: int | None = None, on_progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Accuracy (classification) or MSE (regression) of ``method`` on each task, in order.

    ``seed``: the torch RNG is seeded with ``episode_seed(seed, index)`` before each episode (on
    CPU the CPU's generator alone; the caller's RNG state is restored afterwards), so a method that draws random numbers while it
    adapts (a baseline's fresh head) scores each episode the same wherever and in whatever order it
    runs; None leaves the RNG alone.
    ``split_across_ranks`` (under torchrun): each rank scores its contiguous share of the
    episodes and the scores are gathered, in episode order, on every rank; the same list as
    one process gives when the method draws no random numbers or ``seed`` is given.
    ``on_progress(done, total)``: called after each episode (or group of episodes a baseline fits
    at once) with the episodes scored of all ``total``; across ranks, this rank's share scaled to
    the total (the ranks' shares differ by at most one episode).
    The baselines (``adapt_many``) fit ``episodes_at_once()`` episodes at once; every episode's score is
    the one it gets alone, so the scores do not depend on the grouping or the ranks.
    """
    from metalearn import distributed

    batches = [episodes] if isinstance(episodes, Episodes) else list(episodes)
    device = torch.device(device)
    w = distributed.world() if split_across_ranks else distributed.World()
    total = sum(b.tasks for b in batches)
    mine = distributed.share(total, w.rank, w.size)
    in_use = seed is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = [torch.cuda.current_device()] if in_use else []  # fork_rng restores the CPU's and this GPU's state
    with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
        share = max(1, mine.stop - mine.start)
        scaled = None if on_progress is None else (lambda done, _: on_progress(done * total // share, total))
        scores = _scores_of_share(method, batches, device, mine, seed, scaled)
    if w.distributed:
        scores = distributed.gather_in_order(scores, list(range(mine.start, mine.start + len(scores))))
    if not scores:
        raise ValueError("no test episodes")
    return scores


def _episode_score(out: Tensor, qy: Tensor, batch: Episodes) -> float:
    """One episode's accuracy or MSE from its query outputs (``[Q, K]`` logits or ``[Q]`` values)."""
    out = out.float()
    if batch.is_regression:
        return float(((out.reshape(qy.shape).double() - qy.double()) ** 2).mean())
    if out.shape != (qy.shape[0], batch.n_way):
        raise ValueError(f"a classifier must return logits [{qy.shape[0]}, {batch.n_way}], got {tuple(out.shape)}")
    return int((out.argmax(-1) == qy).sum()) / qy.shape[0]


def _task_range(x: Inputs, a: int, b: int) -> Inputs:
    return {k: v[a:b] for k, v in x.items()} if isinstance(x, dict) else x[a:b]


def _scores_of_share(method: Adapts, batches: list[Episodes], device: torch.device, mine: slice,
                     seed: int | None, on_progress: Callable[[int, int], None] | None = None) -> list[float]:
    """This share's scores, episode by episode, or ``method.episodes_at_once()`` episodes at a time through
    ``method.adapt_many`` (the baselines: the same numbers, see ``metalearn.stacked``);
    ``on_progress(done, total)`` after each episode or group of the share."""
    scores: list[float] = []
    total = max(0, mine.stop - mine.start)
    group = int(method.episodes_at_once()) if hasattr(method, "adapt_many") and hasattr(method, "episodes_at_once") else 0
    first = 0  # the global index of the batch's first episode
    for batch in batches:
        batch.check()
        lo, hi = max(mine.start - first, 0), min(mine.stop - first, batch.tasks)
        if group > 0:
            for a in range(lo, hi, group):
                b = min(a + group, hi)
                seeds = [None if seed is None else episode_seed(seed, first + i) for i in range(a, b)]
                predict = method.adapt_many(_to(_task_range(batch.support_x, a, b), device),
                                            batch.support_y[a:b].to(device), seeds)
                with torch.no_grad():
                    out = predict(_to(_task_range(batch.query_x, a, b), device))
                qy = batch.query_y[a:b].to(device)
                scores.extend(_episode_score(out[e], qy[e], batch) for e in range(b - a))
                if on_progress is not None:
                    on_progress(len(scores), total)
        else:
            for i in range(lo, hi):
                if seed is not None:  # the CPU's generator alone costs 2 us; torch.manual_seed (every device) 150
                    (torch.manual_seed if device.type != "cpu" else torch.default_generator.manual_seed)(
                        episode_seed(seed, first + i))
                sx, sy = _to(_task_inputs(batch.support_x, i), device), batch.support_y[i].to(device)
                qx, qy = _to(_task_inputs(batch.query_x, i), device), batch.query_y[i].to(device)
                predict = method.adapt(sx, sy)  # gradients on: adaptation may need them
                with torch.no_grad():
                    out = predict(qx)
                scores.append(_episode_score(out, qy, batch))
                if on_progress is not None:
                    on_progress(len(scores), total)
        first += batch.tasks
    return scores


def score(method: Adapts, episodes: Episodes | Iterable[Episodes], device: str | torch.device = "cpu",
          split_across_ranks: bool = False, seed: int | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> Score:
    """Mean accuracy or MSE of ``method`` over the test episodes, with its 95% interval
    (``split_across_ranks``, ``seed``: see ``episode_scores``)."""
    batches = [episodes] if isinstance(episodes, Episodes) else list(episodes)
    values = episode_scores(method, batches, device, split_across_ranks, seed, on_progress)
    mean, half = confidence_interval(values)
    return Score(metric="mse" if batches[0].is_regression else "accuracy", mean=mean, ci95=half,
                 episodes=len(values), per_episode=values)


def compare(methods: dict[str, Adapts | Sequence[float]], episodes: Episodes | Iterable[Episodes], *,
            reference: str | None = None, device: str | torch.device = "cpu", seed: int = 0,
            split_across_ranks: bool = False,
            on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Score every method on the same test episodes; returns a table-like dict.

    A method given as a sequence of numbers is one already scored on these episodes (its
    ``per_episode`` from an earlier ``compare``): it is taken as it is, not scored again.

    ``{"metric": "accuracy"|"mse", "higher_is_better": bool, "episodes": n,
    "rows": [{"method", "mean", "ci95", "low", "high"}, ...],
    "paired": [{"method", "vs", "mean_difference", "ci95", "wins", "losses", "ties"}, ...],
    "per_episode": {method: [score per episode]}}``.
    ``paired`` compares ``reference`` (default: the first method) with each other method on
    each episode: ``mean_difference`` is reference - other (accuracy or MSE) with its 95%
    interval; ``wins``/``losses`` count episodes where the reference did better/worse.
    Each episode is scored with the torch RNG seeded from (``seed``, its index) (``episode_seed``):
    every method's random head of an episode starts alike, and an episode's score does not depend
    on the process or the order it is scored in. ``split_across_ranks`` (under torchrun): each
    rank scores its share of the episodes, every rank gets the whole table (see ``episode_scores``).
    ``on_progress(method, done, total)``: each method's progress as ``episode_scores`` reports it.
    """
    if not methods:
        raise ValueError("no methods to compare")
    batches = [episodes] if isinstance(episodes, Episodes) else list(episodes)
    reference = reference or next(iter(methods))
    if reference not in methods:
        raise ValueError(f"reference {reference!r} is not one of the methods {sorted(methods)}")
    scores: dict[str, Score] = {}
    for name, method in methods.items():
        if hasattr(method, "adapt"):
            report = None if on_progress is None else (lambda done, total, name=name: on_progress(name, done, total))
            scores[name] = score(method, batches, device, split_across_ranks, seed, report)
    if not scores:
        raise ValueError("compare needs at least one method to score")
    metric, count = next(iter(scores.values())).metric, next(iter(scores.values())).episodes
    for name, method in methods.items():
        if name not in scores:
            values = [float(v) for v in method]
            if len(values) != count:
                raise ValueError(f"{name}: {len(values)} known scores for {count} episodes")
            mean, half = confidence_interval(values)
            scores[name] = Score(metric=metric, mean=mean, ci95=half, episodes=count, per_episode=values)
    scores = {name: scores[name] for name in methods}
    rows = [{"method": name, "mean": s.mean, "ci95": s.ci95, "low": s.low, "high": s.high}
            for name, s in scores.items()]
    paired = []
    for name, s in scores.items():
        if name == reference:
            continue
        diff = [a - b for a, b in zip(scores[reference].per_episode, s.per_episode)]
        mean, half = confidence_interval(diff)
        better = [d > 0 if metric == "accuracy" else d < 0 for d in diff]
        worse = [d < 0 if metric == "accuracy" else d > 0 for d in diff]
        paired.append({"method": reference, "vs": name, "mean_difference": mean, "ci95": half,
                       "wins": sum(better), "losses": sum(worse),
                       "ties": sum(d == 0 for d in diff)})
    return {"metric": metric, "higher_is_better": metric == "accuracy", "episodes": scores[reference].episodes,
            "rows": rows, "paired": paired, "per_episode": {name: s.per_episode for name, s in scores.items()}}


def evaluate_with_baselines(learner: Adapts, episodes: Episodes | Iterable[Episodes], *,
                            backbone_factory: Callable[[], nn.Module], pretrain_x: Inputs, pretrain_y: Tensor,
                            from_scratch: dict[str, Any] | None = None, pretrain: dict[str, Any] | None = None,
                            name: str | None = None, device: str | torch.device = "cpu",
                            seed: int = 0) -> dict[str, Any]:
    """``compare`` of the meta-learner (the reference) with ``from_scratch`` and ``pretrain_finetune``.

    ``pretrain_x``/``pretrain_y``: all meta-train data as one ordinary data set (class indices
    over all meta-train classes, or regression targets); ``from_scratch`` and ``pretrain`` are
    keyword arguments of ``FromScratch`` and ``PretrainFineTune``.
    """
    from metalearn.baselines import FromScratch, PretrainFineTune

    batches = [episodes] if isinstance(episodes, Episodes) else list(episodes)
    if not batches:
        raise ValueError("no test episodes")
    n_way = batches[0].n_way
    name = name or str(getattr(learner, "name", None) or type(learner).__name__)
    torch.manual_seed(seed)
    methods = {name: learner,
               "from_scratch": FromScratch(backbone_factory, n_way, **(from_scratch or {})),
               "pretrain_finetune": PretrainFineTune(backbone_factory, n_way, pretrain_x, pretrain_y, device=device,
                                                     seed=seed, **(pretrain or {}))}
    return compare(methods, batches, reference=name, device=device, seed=seed)
