"""The FS-Mol evaluation loop (medmeta.chem.protocol) over methods, shared by bench/molecules.py and the
pipeline (medmeta.chem.publish): every method on the same draws, typed results.

    run_protocol(labels, features, splits, methods, sizes, n_draws, log=None) -> ProtocolResult

- ``labels``: task -> 0/1 labels (numpy); ``features``: featuriser name -> task -> rows (numpy, one per compound,
  in the labels' order); ``splits``: ``Split(seed, train, test)`` each (task names).
- A method is ``Method(featuriser, prepare, note)``: ``prepare(train_tasks, split_seed) -> scorer`` is called once
  per split with that split's training tasks as ``TrainTask(name, x, y)`` (it may meta-train; a baseline ignores
  them, a trained model ignores them); ``scorer(support_x, support_y, query_x, draw) -> scores`` (numpy
  ``(n_query,)``, higher = more likely active) once per draw; ``draw`` is the draw's index (the baselines' seed).
- Draw ``k`` of test task ``t`` at support size ``S`` in split ``seed`` is ``protocol.draw(labels[t], S,
  protocol.draw_rng(seed, t, S, k))``: the same support and query for every method.
- A unit = (test task, split seed); its value is the mean dAUPRC over its draws. ``ProtocolResult`` holds every
  unit value per (method, S), and gives ``estimate(method, S)`` (mean, 95% t-interval over units) and
  ``difference(a, b, S)`` (the paired difference a - b per unit, mean and 95% interval); ``to_dict`` /
  ``from_dict`` round-trip it through JSON; ``ProtocolResult.combine(results)`` joins the units of several (the
  three split seeds' task sets, each evaluated on its own, into the protocol's 30 units).

``baseline_method(name)`` makes a ``medmeta.chem.baselines`` function a method; ``learner_method(build)`` a torch
learner with ``meta_train(list[(x, y)])`` and ``scores(sx, sy, qx)``; ``scorer_method(scores, featuriser)`` an
already trained model's scoring function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from medmeta.chem.protocol import delta_auprc, draw, draw_rng, mean_ci, paired

LEVEL = 0.95


class TrainTask(NamedTuple):
    """One meta-training task as a method's ``prepare`` sees it: features and 0/1 labels (numpy)."""

    name: str
    x: np.ndarray
    y: np.ndarray


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Method:
    """What a method needs (``featuriser``), how it gets ready on a split's training tasks (``prepare``), one line
    saying what it is (``note``)."""

    featuriser: str
    prepare: Callable[[list[TrainTask], int], Scorer]
    note: str


@dataclass(frozen=True)
class Split:
    """One split of the tasks: its seed (it seeds the draws) and the training and test task names."""

    seed: int
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% t-interval (``half_width`` NaN below two units)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def card(self) -> dict:
        """As a registry card's metric: ``{"mean", "ci_low", "ci_high", "ci_level", "n"}`` (no interval below
        two units)."""
        out = {"mean": round(self.mean, 6), "n": self.n}
        if np.isfinite(self.half_width):
            out.update(ci_low=round(self.low, 6), ci_high=round(self.high, 6), ci_level=LEVEL)
        return out

    def text(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class ProtocolResult:
    """Unit values per (method, S), the units in order, and seconds per method (``train``, ``score``)."""

    methods: list[str]
    sizes: list[int]
    n_draws: int
    units: list[tuple[str, int]]  # (test task, split seed)
    values: dict[tuple[str, int], list[float]]  # (method, S) -> one value per unit, in unit order
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def estimate(self, method: str, size: int) -> Estimate:
        mean, half = mean_ci(self.values[(method, size)], LEVEL)
        return Estimate(mean, half, len(self.units))

    def difference(self, method: str, other: str, size: int) -> Estimate:
        """``method`` minus ``other`` per unit (the same draws): mean and 95% interval."""
        mean, half = paired(self.values[(method, size)], self.values[(other, size)], LEVEL)
        return Estimate(mean, half, len(self.units))

    def best(self, size: int, prefer: Sequence[str] = ()) -> str:
        """The method with the highest mean at ``size``; a tie goes to the first of ``prefer``, then to the
        first method."""
        order = [m for m in prefer if m in self.methods] + [m for m in self.methods if m not in prefer]
        return max(order, key=lambda m: (self.estimate(m, size).mean, -order.index(m)))

    @classmethod
    def combine(cls, results: Sequence["ProtocolResult"]) -> "ProtocolResult":
        """One result over the units of several (e.g. the three split seeds' task sets, each evaluated alone):
        the same methods, sizes and draws; units and values concatenated in the given order, seconds added."""
        first = results[0]
        for other in results[1:]:
            if (other.methods, other.sizes, other.n_draws) != (first.methods, first.sizes, first.n_draws):
                raise ValueError("results to combine need the same methods, support sizes and draws")
        units = [u for r in results for u in r.units]
        if len(set(units)) != len(units):
            raise ValueError("results to combine must not share a unit (test task, split seed)")
        seconds = {m: {k: round(sum(r.seconds.get(m, {}).get(k, 0.0) for r in results), 3) for k in ("train", "score")}
                   for m in first.methods}
        return cls(list(first.methods), list(first.sizes), first.n_draws, units,
                   {key: [v for r in results for v in r.values[key]] for key in first.values}, seconds)

    def to_dict(self) -> dict:
        return {"methods": list(self.methods), "sizes": list(self.sizes), "n_draws": self.n_draws,
                "units": [{"task": t, "split_seed": s} for t, s in self.units],
                "values": {m: {str(s): self.values[(m, s)] for s in self.sizes} for m in self.methods},
                "summary": {m: {str(s): self.estimate(m, s).card() for s in self.sizes} for m in self.methods},
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ProtocolResult":
        sizes = [int(s) for s in data["sizes"]]
        return cls(list(data["methods"]), sizes, int(data["n_draws"]),
                   [(u["task"], int(u["split_seed"])) for u in data["units"]],
                   {(m, int(s)): [float(v) for v in vs] for m, by in data["values"].items() for s, vs in by.items()},
                   {m: dict(v) for m, v in data.get("seconds", {}).items()})


def run_protocol(labels: Mapping[str, np.ndarray], features: Mapping[str, Mapping[str, np.ndarray]],
                 splits: Sequence[Split], methods: Mapping[str, Method], sizes: Sequence[int], n_draws: int,
                 log: Callable[[str], None] | None = None) -> ProtocolResult:
    """Every method on every split's test tasks, at every support size, on the same ``n_draws`` draws per task."""
    units: list[tuple[str, int]] = []
    values: dict[tuple[str, int], list[float]] = {(m, s): [] for m in methods for s in sizes}
    seconds = {m: {"train": 0.0, "score": 0.0} for m in methods}
    for split in splits:
        units += [(task, split.seed) for task in split.test]
        draws = {(task, size, k): draw(labels[task], size, draw_rng(split.seed, task, size, k))
                 for size in sizes for task in split.test for k in range(n_draws)}
        for name, method in methods.items():
            x = features[method.featuriser]
            start = time.perf_counter()
            scorer = method.prepare([TrainTask(t, x[t], labels[t]) for t in split.train], split.seed)
            seconds[name]["train"] += time.perf_counter() - start
            start = time.perf_counter()
            for size in sizes:
                for task in split.test:
                    y, per_draw = labels[task], []
                    for k in range(n_draws):
                        support, query = draws[(task, size, k)]
                        scores = scorer(x[task][support], y[support], x[task][query], k)
                        per_draw.append(delta_auprc(y[query], scores))
                    values[(name, size)].append(float(np.mean(per_draw)))
            seconds[name]["score"] += time.perf_counter() - start
            if log is not None:
                log(f"split {split.seed}: {name} done ({seconds[name]['train']:.0f} s training, "
                    f"{seconds[name]['score']:.0f} s scoring so far)")
    return ProtocolResult(list(methods), [int(s) for s in sizes], int(n_draws), units, values,
                          {m: {k: round(v, 3) for k, v in s.items()} for m, s in seconds.items()})


# ---------------------------------------------------------------- methods


def baseline_method(name: str, note: str = "") -> Method:
    """A ``medmeta.chem.baselines`` function as a method: fitted on each draw's support set only."""
    from medmeta.chem.baselines import BASELINES

    fn, featuriser = BASELINES[name]
    return Method(featuriser, lambda train, seed: fn, note or f"medmeta.chem.baselines.{fn.__name__} on {featuriser}")


def _torch_scorer(scores: Callable, device: str) -> Scorer:
    import torch

    def score(support_x, support_y, query_x, draw_index):
        with torch.no_grad():
            out = scores(torch.as_tensor(support_x, dtype=torch.float32, device=device),
                         torch.as_tensor(support_y, dtype=torch.int64, device=device),
                         torch.as_tensor(query_x, dtype=torch.float32, device=device))
        return out.detach().cpu().double().numpy()

    return score


def learner_method(build: Callable[[int], object], featuriser: str = "ecfp4_bits", note: str = "",
                   device: str = "cpu") -> Method:
    """A torch learner with ``meta_train(list[(x, y)])`` and ``scores(support_x, support_y, query_x)``:
    ``build(split_seed)`` makes it, ``meta_train`` sees the split's training tasks as float32 / int64 tensors,
    each draw calls ``scores``."""
    def prepare(train: list[TrainTask], seed: int) -> Scorer:
        import torch

        learner = build(seed)
        learner.meta_train([(torch.as_tensor(t.x, dtype=torch.float32, device=device),
                             torch.as_tensor(t.y, dtype=torch.int64, device=device)) for t in train])
        return _torch_scorer(learner.scores, device)

    return Method(featuriser, prepare, note)


def scorer_method(scores: Callable, featuriser: str, note: str, device: str = "cpu") -> Method:
    """An already trained torch model's ``scores(support_x, support_y, query_x) -> Tensor`` as a method (its
    ``prepare`` ignores the training tasks)."""
    scorer = _torch_scorer(scores, device)
    return Method(featuriser, lambda train, seed: scorer, note)


__all__ = ["Estimate", "Method", "ProtocolResult", "Scorer", "Split", "TrainTask", "baseline_method",
           "learner_method", "run_protocol", "scorer_method"]
