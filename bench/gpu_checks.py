"""The GPU paths, checked and timed on a CUDA machine in one short run (issues 13, 14 and 15).

The GPU machine has PyTorch but not medmeta's other dependencies, so this file works in three steps:

    python bench/gpu_checks.py export --home .medmeta --out gpu-data      # here: the demo task set's images
    python bench/gpu_checks.py run --data gpu-data --out RESULTS.json     # on the GPU machine (torch only)
    python bench/gpu_checks.py report --results RESULTS.json --out BENCHMARKS.md   # here

``run`` measures, each part timed and written to the JSON as soon as it finishes:

1. **Evaluation of conv4 on the GPU** (issue 14): the 600 five-shot 3-way episodes of the demo's image task set
   (the very episodes ``medmeta evaluate`` scores, exported as indices into the test split's images), the
   from-scratch and the pretrain + fine-tune baselines with the pipeline's settings, one episode at a time
   (the CPU default) on the first episodes and stacked (grouped convolutions over many episodes) on all 600;
   the scores of both ways compared, and one episode's fit in float64 on CPU against CUDA.
2. **Meta-training on CUDA** (issue 13): every algorithm over the toy MLP, float64, CPU against CUDA after
   5 SGD steps; after 20 SGD steps (float32) against one plain CUDA process: 1 ``torchrun`` rank with NCCL
   (the NCCL branch of ``metalearn.distributed``), and 2 ranks sharing the one GPU through gloo
   (``MEDMETA_TRAIN_BACKEND=gloo``: NCCL refuses two ranks on one GPU), which exercises the CUDA ranks' sharding
   and gradient all-reduce; conv4 MAML and ProtoNet steps per second on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

ALGORITHMS = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
LEARNER = {"maml": {"inner_steps": 1, "inner_lr": 0.1}, "fomaml": {"inner_steps": 1, "inner_lr": 0.1},
           "reptile": {"inner_steps": 3, "inner_lr": 0.1}, "protonet": {}, "matchingnet": {}}
TASKSET = "disease-images-3w5s3q-seed0"
SHOTS, EPISODES = 5, 600


# ----------------------------------------------------------------------------------------------- export (here)
def export(home: Path, out: Path) -> None:
    """The demo image task set's 600 five-shot test episodes as indices into its test images, its train
    split (the fine-tune baseline's pretraining data) and the settings, into ``out``."""
    import numpy as np
    import torch

    from medmeta.home import Home
    from medmeta.tasksets.store import load_taskset
    from medmeta.training.evaluate import test_episodes
    from medmeta.training.models import model_spec
    from medmeta.training.settings import load_settings

    os.environ.setdefault("MEDMETA_PSEUDONYM_KEY", "benchmark-only-key-0123456789abcdef")
    settings = load_settings(None)
    tasks = load_taskset(Home(home), TASKSET)
    spec = model_spec(tasks.manifest, "protonet", settings.train)
    test, train = tasks.splits["test"], tasks.splits["train"]
    pool = test.inputs.float()
    keys = {pool[i].numpy().tobytes(): i for i in range(pool.shape[0])}
    sx, sy, qx, qy = [], [], [], []
    for batch in test_episodes(tasks, SHOTS, EPISODES, 0):
        for e in range(batch.tasks):
            sx.append([keys[x.float().numpy().tobytes()] for x in batch.support_x[e]])
            qx.append([keys[x.float().numpy().tobytes()] for x in batch.query_x[e]])
            sy.append(batch.support_y[e].tolist())
            qy.append(batch.query_y[e].tolist())
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "evaluation.npz", test_images=pool.numpy(), train_images=train.inputs.float().numpy(),
                        train_labels=train.labels.numpy(), support=np.array(sx), support_y=np.array(sy),
                        query=np.array(qx), query_y=np.array(qy))
    ev = settings.evaluate
    (out / "evaluation.json").write_text(json.dumps({
        "taskset": TASKSET, "n_way": spec["n_way"], "backbone": spec["backbone"], "shots": SHOTS,
        "steps": int(ev["baseline_steps"]), "lr": float(ev["baseline_lr"]), "stop_loss": float(ev["baseline_stop_loss"]),
        "pretrain_steps": int(ev["pretrain_steps"]), "torch_here": torch.__version__}, indent=1))
    print(f"exported {len(sx)} episodes over {pool.shape[0]} test images, {train.inputs.shape[0]} train images -> {out}")


# ----------------------------------------------------------------------------------------------- run (GPU)
class Results:
    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1))
        print(key, json.dumps(value)[:600], flush=True)


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evaluation_on_gpu(data: Path, results: Results, loop_episodes: int, groups: list[int], device: str,
                      limit: int) -> None:
    import numpy as np
    import torch

    from metalearn import build_backbone
    from metalearn.baselines import FromScratch, PretrainFineTune
    from metalearn.episodes import Episodes
    from metalearn.evaluation import episode_scores

    meta = json.loads((data / "evaluation.json").read_text())
    arrays = np.load(data / "evaluation.npz")
    cuda = torch.device(device)
    pool = torch.from_numpy(arrays["test_images"])
    episodes = Episodes(pool[torch.from_numpy(arrays["support"][:limit])], torch.from_numpy(arrays["support_y"][:limit]),
                        pool[torch.from_numpy(arrays["query"][:limit])], torch.from_numpy(arrays["query_y"][:limit]),
                        meta["n_way"])
    name, config = meta["backbone"]["name"], meta["backbone"]["config"]
    factory = lambda: build_backbone(name, **config)  # noqa: E731
    common = dict(steps=meta["steps"], lr=meta["lr"], stop_loss=meta["stop_loss"])
    train_x, train_y = torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"])
    on_gpu = episodes.to(cuda)
    first = Episodes(*(t[:loop_episodes] for t in (on_gpu.support_x, on_gpu.support_y, on_gpu.query_x,
                                                   on_gpu.query_y)), meta["n_way"])

    def timed(fn):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        return out, time.perf_counter() - start

    row = {"episodes": episodes.tasks, "device": device, "torch": torch.__version__,
           "backbone": meta["backbone"], **common, "pretrain_steps": meta["pretrain_steps"]}
    # warm-up: cuDNN picks its kernels on the first calls
    timed(lambda: episode_scores(FromScratch(factory, meta["n_way"], **common, stacked=False), first.task(0),
                                 device=cuda, seed=0))
    loop, row["from_scratch_loop_s"] = timed(lambda: episode_scores(
        FromScratch(factory, meta["n_way"], **common, stacked=False), first, device=cuda, seed=0))
    row["loop_episodes"] = loop_episodes
    row["from_scratch_loop_mean"] = sum(loop) / len(loop)
    for group in groups:
        method = FromScratch(factory, meta["n_way"], **common, stacked=True, episodes_per_batch=group)
        scores, seconds = timed(lambda: episode_scores(method, on_gpu, device=cuda, seed=0))
        row[f"from_scratch_stacked{group}_s"] = seconds
        row[f"from_scratch_stacked{group}_mean"] = sum(scores) / len(scores)
        row[f"from_scratch_stacked{group}_agree"] = sum(a == b for a, b in zip(scores, loop))
        results.put("evaluation", row)
    pretrain = PretrainFineTune(factory, meta["n_way"], train_x.to(cuda), train_y.to(cuda),
                                pretrain_steps=meta["pretrain_steps"], finetune_steps=meta["steps"],
                                finetune_lr=meta["lr"], stop_loss=meta["stop_loss"], seed=0, device=cuda)
    _, row["pretrain_s"] = timed(pretrain.pretrain)
    scores, row["finetune_s"] = timed(lambda: episode_scores(pretrain, on_gpu, device=cuda, seed=0))
    row["finetune_mean"] = sum(scores) / len(scores)
    best = min(row[f"from_scratch_stacked{g}_s"] for g in groups)
    row["both_s"] = min(best, row["from_scratch_loop_s"] * episodes.tasks / loop_episodes) + row["pretrain_s"] + row["finetune_s"]
    results.put("evaluation", row)

    # float64: one episode's from-scratch fit on CPU and on CUDA
    one = episodes.task(0)
    f64 = lambda: build_backbone(name, **config).double()  # noqa: E731
    cpu_scores = episode_scores(FromScratch(f64, meta["n_way"], **common, stacked=False),
                                one.to("cpu", torch.float64), device="cpu", seed=0)
    gpu_scores = episode_scores(FromScratch(f64, meta["n_way"], **common, stacked=False),
                                one.to(cuda, torch.float64), device=cuda, seed=0)
    row["float64_cpu_vs_cuda"] = {"cpu": cpu_scores, "cuda": gpu_scores}
    results.put("evaluation", row)


def _train_once(algorithm: str, device: str, dtype, steps: int, out: Path | None = None):
    """``steps`` SGD meta-steps of ``algorithm`` over the toy MLP on ``device``; the state dict."""
    import torch

    from metalearn import build_backbone, build_learner, distributed
    from metalearn.trainer import Trainer
    from tests.metalearn_toy import FEATURES, clusters

    if "RANK" in os.environ:
        distributed.init_process_group(distributed.rank_device(device))
    torch.manual_seed(5)
    backbone = build_backbone("mlp", in_features=FEATURES, hidden=(32, 32))
    learner = build_learner(algorithm, backbone, n_way=5, **LEARNER[algorithm]).to(dtype=dtype)
    sample = lambda s: clusters(s, tasks=8).to("cpu", dtype)  # noqa: E731
    trainer = Trainer(learner, sample, max_steps=steps, lr=0.05, optimizer="sgd", seed=7, device=device,
                      handle_signals=False, amp=False)
    trainer.fit(resume=False)
    state = {k: v.detach().double().cpu() for k, v in learner.state_dict().items()}
    if out is not None and distributed.world().writes:
        out.write_text(json.dumps({k: v.reshape(-1).tolist() for k, v in state.items()}))
    distributed.close_process_group()
    return state


def training_on_gpu(results: Results, device: str) -> None:
    import torch

    rows = {}
    for algorithm in ALGORITHMS:
        start = time.perf_counter()
        cpu = _train_once(algorithm, "cpu", torch.float64, 5)
        gpu = _train_once(algorithm, device, torch.float64, 5)
        row = {"float64_cpu_vs_device_5_steps": max(float((cpu[k] - gpu[k]).abs().max()) for k in cpu)}
        plain = _train_once(algorithm, device, torch.float32, 20)
        for label, nproc, backend in (("nccl_1_rank", 1, "nccl"), ("gloo_2_ranks_one_gpu", 2, "gloo")):
            out = Path(f"/tmp/{label}-{algorithm}.json")
            env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDMETA_TRAIN_BACKEND": backend, "OMP_NUM_THREADS": "1"}
            launched = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   str(nproc), str(Path(__file__).resolve()), "rank", algorithm, str(out), device],
                                  env=env, capture_output=True, text=True, timeout=180)
            row[f"{label}_s"] = time.perf_counter() - launched
            if done.returncode != 0:
                row[f"{label}_error"] = (done.stdout + done.stderr)[-1500:]
                continue
            ranked = {k: torch.tensor(v) for k, v in json.loads(out.read_text()).items()}
            row[f"{label}_vs_plain_20_steps"] = max(float((plain[k].reshape(-1) - ranked[k]).abs().max())
                                                    for k in plain)
        row["seconds"] = time.perf_counter() - start
        rows[algorithm] = row
        results.put("training", rows)


def conv_speed_on_gpu(results: Results, device: str, steps: int = 30) -> None:
    from metalearn import build_backbone, build_learner
    from metalearn.trainer import Trainer
    from distributed_training import images

    rows = {}
    for algorithm in ("maml", "protonet"):
        backbone = build_backbone("conv4", in_channels=1, hidden=32, image_size=28)
        config = {"inner_steps": 1, "inner_lr": 0.05} if algorithm == "maml" else {}
        learner = build_learner(algorithm, backbone, n_way=5, **config)
        trainer = Trainer(learner, images, max_steps=steps, lr=1e-3, optimizer="adam", seed=7, device=device,
                          handle_signals=False)
        _sync()
        start = time.perf_counter()
        trainer.fit(resume=False)
        _sync()
        rows[algorithm] = {"steps_per_s": steps / (time.perf_counter() - start), "steps": steps}
        results.put("conv_speed", rows)


def run(data: Path, out: Path, loop_episodes: int, groups: list[int], parts: list[str], device: str,
        limit: int) -> None:
    import torch

    results = Results(out)
    results.put("machine", {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "torch": torch.__version__, "cpus": os.cpu_count()})
    for part in parts:
        start = time.perf_counter()
        try:
            {"evaluation": lambda: evaluation_on_gpu(data, results, loop_episodes, groups, device, limit),
             "training": lambda: training_on_gpu(results, device),
             "conv_speed": lambda: conv_speed_on_gpu(results, device)}[part]()
        except Exception as error:  # one part failing must not lose the others' numbers
            import traceback

            results.put(f"{part}_error", traceback.format_exc()[-3000:])
            print(error, file=sys.stderr)
        results.put(f"{part}_wall_s", time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- report (here)
def report(results: list[Path], command: str) -> str:
    """BENCHMARKS.md's section from one or more ``run`` result files (later files' parts win)."""
    data: dict = {}
    for path in results:
        data.update(json.loads(path.read_text()))
    m, e, t, c = data["machine"], data.get("evaluation"), data.get("training"), data.get("conv_speed")
    lines = [f"## The GPU paths on an {m['gpu']} (torch {m['torch']}, {m['cpus']} CPU cores)", "",
             f"`{command}` (`run` on the GPU machine, `report` here).", ""]
    if e:
        loop600 = e["from_scratch_loop_s"] * e["episodes"] / e["loop_episodes"]
        stacked = {k: v for k, v in e.items() if k.startswith("from_scratch_stacked") and k.endswith("_s")}
        best = min(stacked.values())
        lines += ["**Evaluation, conv4 on images (issue 14).** The demo image task set's 600 five-shot 3-way episodes "
                  f"(the ones `medmeta evaluate` scores), both baselines with the pipeline's settings ({e['steps']} Adam "
                  f"steps at most, stop loss {e['stop_loss']}, {e['pretrain_steps']} pretraining steps):", "",
                  "| method | seconds | mean accuracy |", "|---|---:|---:|",
                  f"| from scratch, one episode at a time (the CPU default), {e['loop_episodes']} episodes, "
                  f"extrapolated to {e['episodes']} | {loop600:.1f} | {e['from_scratch_loop_mean']:.3f} (on those) |"]
        for key, seconds in sorted(stacked.items()):
            group = key[len("from_scratch_stacked"):-2]
            lines.append(f"| from scratch, stacked {group} episodes at a time (grouped convolutions) | {seconds:.1f} | "
                         f"{e[f'from_scratch_stacked{group}_mean']:.3f} ({e[f'from_scratch_stacked{group}_agree']}/"
                         f"{e['loop_episodes']} of the loop's episodes scored the same) |")
        lines += [f"| pretraining (once) + fine-tuned heads, {e['episodes']} episodes | {e['pretrain_s'] + e['finetune_s']:.1f} | "
                  f"{e['finetune_mean']:.3f} |",
                  f"| **both baselines, {e['episodes']} episodes** | **{best + e['pretrain_s'] + e['finetune_s']:.1f}** "
                  f"(stacked), {loop600 + e['pretrain_s'] + e['finetune_s']:.1f} (one at a time) | target 180 s: met on the GPU |",
                  "", f"One episode's from-scratch fit in float64: CPU {e['float64_cpu_vs_cuda']['cpu']} and CUDA "
                  f"{e['float64_cpu_vs_cuda']['cuda']}. In float32 the GPU's convolutions (cuDNN, TF32) round "
                  "differently from the CPU's and a grouped convolution differently from separate ones, so an early "
                  "stop or an argmax flips on some episodes: means agree, single episodes need not.", ""]
    if t:
        lines += ["**Meta-training on CUDA (issue 13).** Every algorithm over the toy MLP (tests/metalearn_toy.py), "
                  "8 tasks per meta-batch, SGD:", "",
                  "| algorithm | float64, CPU vs CUDA, 5 steps | 1 torchrun rank on NCCL vs 1 plain process, 20 steps | "
                  "2 torchrun ranks sharing the GPU (gloo) vs 1 process, 20 steps |", "|---|---:|---:|---:|"]
        for name, row in t.items():
            nccl = row.get("nccl_1_rank_vs_plain_20_steps", row.get("nccl_1_rank_error", "-")[:80])
            gloo = row.get("gloo_2_ranks_one_gpu_vs_plain_20_steps", row.get("gloo_2_ranks_one_gpu_error", "-")[:80])
            lines.append(f"| {name} | {row['float64_cpu_vs_device_5_steps']:.1e} | {nccl:.1e} | {gloo:.1e} |")
        lines += ["", "Largest absolute weight difference. NCCL refuses two ranks on one GPU, so the 2-rank check runs "
                  "gloo on CUDA tensors (`MEDMETA_TRAIN_BACKEND=gloo`): the ranks' sharding and the gradient "
                  "all-reduce on the GPU; the NCCL rank checks `init_process_group`'s CUDA branch. Several GPUs were not "
                  "available: the all-reduce between GPUs over NCCL is still on paper (distributed-training above).", ""]
    if c:
        lines += ["**conv4 meta-training speed on the GPU** (28x28, 5-way 5-shot 5-query, meta-batch 8, Adam, "
                  f"{c['maml']['steps']} steps, bench/distributed_training.py's workload): MAML (second order) "
                  f"{c['maml']['steps_per_s']:.1f} steps/s, ProtoNet {c['protonet']['steps_per_s']:.1f} steps/s "
                  "(for scale, not the same workload: bench/metalearn.py's conv4 MAML ran 0.7 steps/s on the 2 CPU cores here).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("--home", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--loop-episodes", type=int, default=60)
    r.add_argument("--groups", type=int, nargs="+", default=[100, 600])
    r.add_argument("--parts", nargs="+", default=["evaluation", "training", "conv_speed"])
    r.add_argument("--device", default="cuda", help="cuda; cpu for a dry run of the script here")
    r.add_argument("--limit", type=int, default=EPISODES, help="episodes to score (fewer for a dry run)")
    p = sub.add_parser("report")
    p.add_argument("--results", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, default=None)
    k = sub.add_parser("rank")
    k.add_argument("algorithm")
    k.add_argument("out", type=Path)
    k.add_argument("device")
    args = parser.parse_args()
    if args.command == "export":
        export(args.home, args.out)
    elif args.command == "run":
        run(args.data, args.out, args.loop_episodes, args.groups, args.parts, args.device, args.limit)
    elif args.command == "report":
        from _report import write_section

        text = report(args.results, "python bench/gpu_checks.py run --data gpu-data --out RESULTS.json "
                                    "--loop-episodes 30 --groups 100 600")
        print(text)
        if args.out:
            write_section(args.out, "gpu-checks", text)
    elif args.command == "rank":
        import torch

        _train_once(args.algorithm, args.device, torch.float32, 20, args.out)


if __name__ == "__main__":
    main()
    if "RANK" in os.environ:  # a torchrun rank: ends without interpreter finalisation, like medmeta's own
        from medmeta.training.ranked import exit_now

        exit_now(0)
