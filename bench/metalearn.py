"""MAML speed, memory and meta-gradients: medmeta against learn2learn 0.2.0 and higher 0.2.1,
in one process, on the same data from the same initial weights.

    bench/reference_env.sh      # once: builds /work/benchenv with the reference libraries
    /work/benchenv/bin/python bench/metalearn.py [--quick] [--device cuda] [--out BENCHMARKS.md]

Workloads: (a) sinusoid MLP 1-40-40-1 ReLU, MAML second order, inner lr 0.01, 1 and 5 inner
steps, meta-batch 25, K=10 support and 10 query points; (b) conv4 (64 channels, batch norm)
on 28x28 single-channel images, 5-way 1-shot, 15 queries per class, meta-batch 32, 1 inner step,
second and first order. One iteration = the meta-gradient plus an Adam step (lr 1e-3).

Speed: median seconds per iteration over timed blocks after warm-up, the contenders interleaved
block by block so load from other processes falls on all of them alike. Memory: a thread samples
VmRSS from /proc/self/status every 2 ms while a contender warms up; the peak rise over the
resident size just before (after gc and malloc_trim) is reported; on CUDA also
torch.cuda.max_memory_allocated over the memory allocated before.

learn2learn and higher use ``nn.BatchNorm2d`` (training mode, no running statistics, eps 1e-5);
medmeta's conv4 normalises each set with its own batch statistics and a learned scale and shift,
which for one task is the same function: the weights are copied one to one (conv, norm scale and
shift, head), so the meta-gradients compare entry by entry.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # first: bench/metalearn.py must not shadow the metalearn package

from _report import cpu_model, load_average, revision, write_section  # noqa: E402  (bench/_report.py)
from sinusoid import sample_tasks  # noqa: E402  (bench/sinusoid.py)

from metalearn.episodes import Episodes  # noqa: E402

SECTION = "metalearn"
INNER_LR, OUTER_LR = 0.01, 1e-3


# -- workloads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kind: str  # "sinusoid" or "conv4"
    steps: int
    first_order: bool
    tasks: int
    block: int  # iterations per timing sample
    samples: int  # timing samples per contender
    warmup: int
    threads: int  # torch intra-op threads


def sinusoid_batch(seed: int, tasks: int) -> Episodes:
    return sample_tasks(torch.Generator().manual_seed(seed), tasks, k=10, k_query=10)


def conv4_batch(seed: int, tasks: int, ways: int = 5, shots: int = 1, queries: int = 15) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    # Class-dependent means so the task is learnable; the values do not matter for speed.
    centres = torch.randn(tasks, ways, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    pick = lambda y, n: (centres[torch.arange(tasks)[:, None], y]  # noqa: E731
                         + 0.5 * torch.randn(tasks, n, 1, 28, 28, generator=g))
    return Episodes(pick(sy, ways * shots), sy, pick(qy, ways * queries), qy, n_way=ways)


def reference_net(kind: str) -> nn.Module:
    """The network as learn2learn and higher users write it."""
    if kind == "sinusoid":
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1),
                   nn.BatchNorm2d(64, eps=1e-5, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))


def reference_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "sinusoid":
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)
    return F.cross_entropy


def copy_weights(source: list[Tensor], target: nn.Module) -> None:
    """Copy ``source`` (the reference net's parameters, in order) into ``target``'s parameters in
    their order, refusing any shape mismatch."""
    params = list(target.parameters())
    if len(params) != len(source):
        raise RuntimeError(f"{type(target).__name__} has {len(params)} parameters, the reference {len(source)}")
    with torch.no_grad():
        for i, (p, s) in enumerate(zip(params, source)):
            if p.shape != s.shape:
                raise RuntimeError(f"parameter {i}: shape {tuple(p.shape)} vs reference {tuple(s.shape)}")
            p.copy_(s)


# -- contenders ---------------------------------------------------------------------------------
class Contender:
    """One implementation: ``meta_grad(batch)`` leaves the meta-gradient (mean over tasks of the
    query loss) in ``.grad`` of ``params`` (reference order); ``step(batch)`` adds Adam."""

    name = "?"

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.opt = torch.optim.Adam(self.params, lr=OUTER_LR)

    def meta_grad(self, batch: Episodes) -> None:
        raise NotImplementedError

    def step(self, batch: Episodes) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.meta_grad(batch)
        self.opt.step()


def _task(batch: Episodes, t: int):
    return batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]


class Learn2Learn(Contender):
    name = "learn2learn 0.2.0"

    def __init__(self, w: Workload, init: list[Tensor], device, dtype):
        import learn2learn as l2l

        net = reference_net(w.kind).to(device, dtype)
        copy_weights(init, net)
        self.maml = l2l.algorithms.MAML(net, lr=INNER_LR, first_order=w.first_order)
        self.loss, self.steps = reference_loss(w.kind), w.steps
        super().__init__(list(net.parameters()))

    def meta_grad(self, batch: Episodes) -> None:
        for p in self.params:
            p.grad = None
        for t in range(batch.tasks):
            sx, sy, qx, qy = _task(batch, t)
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(self.loss(learner(sx), sy))
            (self.loss(learner(qx), qy) / batch.tasks).backward()


class Higher(Contender):
    name = "higher 0.2.1"

    def __init__(self, w: Workload, init: list[Tensor], device, dtype):
        import higher

        self.higher = higher
        self.net = reference_net(w.kind).to(device, dtype)
        copy_weights(init, self.net)
        self.inner_opt = torch.optim.SGD(self.net.parameters(), lr=INNER_LR)
        self.loss, self.steps, self.first_order = reference_loss(w.kind), w.steps, w.first_order
        super().__init__(list(self.net.parameters()))

    def meta_grad(self, batch: Episodes) -> None:
        for p in self.params:
            p.grad = None
        # First order: the inner gradients are detached through higher's grad_callback.
        callback = (lambda grads: [g.detach() for g in grads]) if self.first_order else None
        for t in range(batch.tasks):
            sx, sy, qx, qy = _task(batch, t)
            with self.higher.innerloop_ctx(self.net, self.inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(self.steps):
                    diffopt.step(self.loss(fnet(sx), sy), grad_callback=callback)
                (self.loss(fnet(qx), qy) / batch.tasks).backward()


class Medmeta(Contender):
    name = "medmeta"

    def __init__(self, w: Workload, init: list[Tensor], device, dtype):
        from metalearn import build_backbone, build_learner

        if w.kind == "sinusoid":
            backbone, n_way = build_backbone("mlp", in_features=1, hidden=(40, 40)), None
        else:
            backbone, n_way = build_backbone("conv4", in_channels=1, hidden=64, image_size=28), 5
        self.learner = build_learner("fomaml" if w.first_order else "maml", backbone, n_way=n_way,
                                     inner_steps=w.steps, inner_lr=INNER_LR).to(device, dtype)
        copy_weights(init, self.learner)
        super().__init__(list(self.learner.parameters()))

    def meta_grad(self, batch: Episodes) -> None:
        self.learner.meta_step(batch)


CONTENDERS = {"medmeta": Medmeta, "learn2learn": Learn2Learn, "higher": Higher}


# -- measurement ----------------------------------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _settle() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the next baseline is honest
    except OSError:
        pass


class PeakRSS:
    """Peak VmRSS (MB) above the value at entry, sampled by a thread every ``period`` seconds."""

    def __init__(self, period: float = 0.002):
        self.period, self.peak_mb = period, 0.0

    def __enter__(self):
        self.base = _rss_kb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kb())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_kb())
        self.peak_mb = (self.peak - self.base) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)  # per-iteration seconds, one per timing sample
    rss_mb: float = 0.0
    rss_runs: list[float] = field(default_factory=list)
    cuda_mb: float | None = None
    grad_diff: float | None = None  # max |g - g_learn2learn| in float64
    grad_scale: float | None = None  # max |g_learn2learn|
    error: str | None = None

    @property
    def its(self) -> float:
        return 1.0 / statistics.median(self.seconds) if self.seconds else float("nan")


def meta_gradient_check(w: Workload, names: list[str], init: list[Tensor], batch: Episodes,
                        results: dict[str, Result]) -> None:
    """Every contender's meta-gradient from the same weights on the same batch, in float64 on
    CPU, against learn2learn's."""
    batch64 = batch.to("cpu", torch.float64)
    init64 = [t.detach().to("cpu", torch.float64) for t in init]
    grads = {}
    for name in names:
        if results[name].error:
            continue
        c = CONTENDERS[name](w, init64, torch.device("cpu"), torch.float64)
        c.meta_grad(batch64)
        grads[name] = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach() for p in c.params]
    ref = grads.get("learn2learn")
    if ref is None:
        return
    for name, g in grads.items():
        results[name].grad_diff = max(float((a - b).abs().max()) for a, b in zip(g, ref))
        results[name].grad_scale = max(float(b.abs().max()) for b in ref)


def run_workload(w: Workload, names: list[str], device: torch.device, seed: int, check_tasks: int,
                 log: Callable[[str], None]) -> dict[str, Result]:
    torch.set_num_threads(w.threads)
    make = sinusoid_batch if w.kind == "sinusoid" else conv4_batch
    torch.manual_seed(seed)
    init = [p.detach().clone() for p in reference_net(w.kind).parameters()]
    batches = [make(seed + 1 + i, w.tasks).to(device) for i in range(max(w.samples, 1))]
    results = {n: Result(CONTENDERS[n].name) for n in names}

    meta_gradient_check(w, names, init, make(seed, check_tasks), results)
    log(f"  meta-gradient check (float64, {check_tasks} tasks): "
        + ", ".join(f"{n} {r.grad_diff:.1e}" for n, r in results.items() if r.grad_diff is not None))

    contenders: dict[str, Contender] = {}
    # Memory, one contender at a time from a settled baseline, in two passes (order A-B-C, then
    # C-B-A) so no one is always first after the allocator warmed up; the smaller peak of the two
    # is kept. This is also the warm-up; the second pass's contenders are the ones timed.
    for order in (names, names[::-1]):
        for name in order:
            if results[name].error:
                continue
            contenders.pop(name, None)
            _settle()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                cuda_base = torch.cuda.memory_allocated(device)
            try:
                with PeakRSS() as rss:
                    c = CONTENDERS[name](w, [t.to(device) for t in init], device, torch.float32)
                    for i in range(w.warmup):
                        c.step(batches[i % len(batches)])
                    _sync(device)
            except Exception as exc:  # a contender that fails is reported, the others still run
                results[name].error = f"{type(exc).__name__}: {exc}"
                log(f"  {name}: FAILED {results[name].error}")
                continue
            results[name].rss_runs.append(rss.peak_mb)
            if device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20
                results[name].cuda_mb = peak if results[name].cuda_mb is None else min(results[name].cuda_mb, peak)
            contenders[name] = c
            log(f"  {name}: peak RSS +{rss.peak_mb:.0f} MB")
    for r in results.values():
        r.rss_mb = min(r.rss_runs) if r.rss_runs else float("nan")

    order = list(contenders)
    for s in range(w.samples):  # interleaved timing, rotating who goes first
        for name in order[s % len(order):] + order[:s % len(order)]:
            c = contenders[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(w.block):
                c.step(batches[s % len(batches)])
            _sync(device)
            results[name].seconds.append((time.perf_counter() - start) / w.block)
    for name, r in results.items():
        if not r.error:
            log(f"  {name}: {r.its:.3g} it/s")
    return results


# -- report ---------------------------------------------------------------------------------------
def workloads(quick: bool, threads: int | None) -> list[Workload]:
    """The sinusoid runs on one thread unless ``threads`` says otherwise: its ops are tiny, a second
    thread gains nothing, and on a loaded machine two threads slow many-small-op code (learn2learn,
    higher) by up to 20x while barely touching vmapped code, which would flatter medmeta. conv4
    uses every core (1.6x over one)."""
    sin_threads, conv_threads = threads or 1, threads or os.cpu_count() or 1
    conv_tasks = 4 if quick else 32
    s_block, s_samples = (3, 3) if quick else (10, 15)
    c_samples = 2 if quick else 5
    return [
        Workload("sin1", "sinusoid MLP 1-40-40-1, MAML 2nd order, 1 inner step, meta-batch 25", "sinusoid", 1,
                 False, 25, s_block, s_samples, 5, sin_threads),
        Workload("sin5", "sinusoid MLP 1-40-40-1, MAML 2nd order, 5 inner steps, meta-batch 25", "sinusoid", 5,
                 False, 25, s_block, s_samples, 5, sin_threads),
        Workload("conv2", f"conv4 (64 ch, batch norm), 28x28, 5-way 1-shot, 15 queries/class, meta-batch {conv_tasks}, "
                 "1 step, 2nd order", "conv4", 1, False, conv_tasks, 1, c_samples, 1, conv_threads),
        Workload("conv1", "same, first order", "conv4", 1, True, conv_tasks, 1, c_samples, 1, conv_threads),
    ]


def targets(w: Workload, res: dict[str, Result], device: torch.device) -> list[tuple[str, bool | None]]:
    m, l2l = res.get("medmeta"), res.get("learn2learn")
    if not m or not l2l or m.error or l2l.error:
        return [("medmeta and learn2learn both ran", False)]
    ratio = m.its / l2l.its
    if w.kind == "sinusoid":
        return [(f"speed >= 6x learn2learn ({ratio:.2f}x)", ratio >= 6)]
    if device.type == "cuda":
        return [(f"speed >= 5x learn2learn on GPU ({ratio:.2f}x)", ratio >= 5)]
    return [(f"speed >= learn2learn on CPU ({ratio:.2f}x)", ratio >= 1),
            (f"peak memory <= learn2learn ({m.rss_mb:.0f} vs {l2l.rss_mb:.0f} MB)", m.rss_mb <= l2l.rss_mb)]


def table(all_results: list[tuple[Workload, dict[str, Result]]], device: torch.device) -> str:
    cuda = device.type == "cuda"
    head = "| workload | threads | implementation | it/s (median) | vs learn2learn | peak RSS rise MB |" \
           + (" CUDA peak MB |" if cuda else "") + " max abs meta-grad diff vs learn2learn (float64) |"
    rows = [head, "|---|---:|---|---:|---:|---:|" + ("---:|" if cuda else "") + "---:|"]
    for w, res in all_results:
        l2l = res.get("learn2learn")
        for name, r in res.items():
            if r.error:
                rows.append(f"| {w.title} | {w.threads} | {r.name} | failed: {r.error} | | |" + (" |" if cuda else "") + " |")
                continue
            rel = f"{r.its / l2l.its:.2f}x" if l2l and not l2l.error else "-"
            grad = "-" if r.grad_diff is None else (
                "(reference)" if name == "learn2learn" else f"{r.grad_diff:.1e} (max abs grad {r.grad_scale:.1e})")
            rows.append(f"| {w.title} | {w.threads} | {r.name} | {r.its:.3g} | {rel} | {r.rss_mb:.0f} |"
                        + (f" {r.cuda_mb:.0f} |" if cuda else "") + f" {grad} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations, conv4 meta-batch 4")
    parser.add_argument("--only", default="sin1,sin5,conv2,conv1", help="comma-separated workload keys")
    parser.add_argument("--contenders", default="medmeta,learn2learn,higher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every workload (default: 1 for the sinusoid, all cores for conv4)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the results into")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    names = [n.strip() for n in args.contenders.split(",")]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {sorted(CONTENDERS)}")
    keys = args.only.split(",")
    chosen = [w for w in workloads(args.quick, args.threads) if w.key in keys]
    load_before, measured = load_average(), revision(ROOT)
    started = time.perf_counter()
    all_results = []
    for w in chosen:
        print(f"{w.title}", flush=True)
        res = run_workload(w, names, device, args.seed, 25 if w.kind == "sinusoid" else 4,
                           lambda s: print(s, flush=True))
        all_results.append((w, res))
    verdicts = []
    for w, res in all_results:
        for what, ok in targets(w, res, device):
            verdicts.append(f"- {w.title}: {what}: **{'pass' if ok else 'FAIL'}**")
    text_table = table(all_results, device)
    print("\n" + text_table + "\n\n" + "\n".join(verdicts))

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    command = "/work/benchenv/bin/python bench/metalearn.py" + (" --quick" if args.quick else "") \
        + (f" --device {args.device}" if args.device != "cpu" else "") \
        + (f" --only {args.only}" if args.only != parser.get_default("only") else "") \
        + (f" --threads {args.threads}" if args.threads else "")
    samples = "; ".join(sorted({f"{w.kind}: {w.samples} samples of {w.block} iteration{'s' if w.block > 1 else ''}"
                                for w in chosen}))
    text = f"""## Meta-learning: medmeta vs learn2learn and higher (issue 4)

`{command} --out BENCHMARKS.md` (environment: `bench/reference_env.sh`) on {dev}; machine: {cpu_model()},
{os.cpu_count()} cores, torch {torch.__version__} (threads per workload in the table), learn2learn {version('learn2learn')},
higher {version('higher')}, float32; medmeta at {measured}. Load average {load_before} before, {load_average()} after
({time.perf_counter() - started:.0f} s; other developers share the cores).

One iteration = meta-gradient + Adam step; it/s is the median over timed samples after warm-up
({samples}), contenders interleaved sample by sample. Peak RSS rise: VmRSS sampled every 2 ms during construction and warm-up, above the
resident size just before (after gc and malloc_trim); the smaller of two passes (orders A-B-C, C-B-A). Meta-gradients: same initial weights and batch
(25 sinusoid tasks / 4 conv4 tasks), float64 on CPU. learn2learn and higher run `nn.BatchNorm2d` in training
mode without running statistics; medmeta's conv4 normalises each set with its own statistics and a learned
scale and shift (the same function for one task): weights copied one to one. higher's first order detaches
the inner gradients with `grad_callback`.

{text_table}

Targets:
{chr(10).join(verdicts)}
"""
    if args.out:
        write_section(args.out, SECTION, text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
