"""Training throughput: Ray Train with 1 worker against a plain single-process PyTorch loop.

    python benchmarks/training.py              # a few minutes on 2 cores
    python benchmarks/training.py --smoke      # seconds: checks that it runs

Same features (a synthetic store, pipeline/synthetic/crosscam.py, written once), same model
(CRIF, GRU backbone, text as the privileged modality), same losses (pipeline.train.trainer's
batch_losses), same batch size, optimiser and epochs. Per epoch both sides train over the
train split and score val, as pipeline.train.trainer.train_loop does:

- ray: `build_trainer` (pipeline/train/trainer.py), 1 worker, the store's splits given to Ray
  Train as
  Ray Datasets (read into the object store once when the store is below
  `materialize_below_mb`, as here; batches are collated in a background thread of the
  worker). The worker's CPUs are its torch threads: "ray" gets 1 CPU (`--cpus-per-worker 1`,
  the default), "ray_all_cores" every core.
- plain: one process, the store read once into padded tensors, shuffled index batches;
  with torch's default threads (all cores) and with 1 thread.

Each variant is a whole process. Reported: steady-state samples/s (median of the epochs
after the first), the ratio ray / plain like for like (the all-cores worker against the
all-cores loop; the 1-CPU worker's ratio too), and the time to the first optimiser step from the
process start (interpreter, imports, Ray start-up, data, model). On a GPU (--use-gpu) both
sides run bf16 autocast with pinned, non-blocking copies. Writes OUT/training.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_parser, median, print_table, run_process, write_result  # noqa: E402

FIRST_STEP_FILE = "CRIF_BENCHMARK_FIRST_STEP"  # env var: where a process notes its first step


def record_first_step() -> None:
    """Note the wall time of this process's first optimiser step in $CRIF_BENCHMARK_FIRST_STEP
    (a global post-step hook of torch.optim; installed in Ray workers by the setup hook)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    path = os.environ.get(FIRST_STEP_FILE)
    if not path:
        return

    def hook(optimizer, args, kwargs):
        handle.remove()
        with open(path, "a") as file:
            file.write(f"{time.time()}\n")

    handle = register_optimizer_step_post_hook(hook)


def train_config(args, out: Path, workers: int):
    from pipeline.train.trainer import TrainConfig

    return TrainConfig.from_flat(
        features=args.store,
        out=str(out),
        epochs=args.epochs,
        strategy="end2end",  # the plain loop it is compared with trains end to end
        batch_size=args.batch,
        num_workers=workers,
        cpus_per_worker=float(args.threads or 1) if workers else 1.0,
        use_gpu=args.use_gpu,
        max_failures=0,
    )


def run_ray(args) -> dict:
    import ray

    from pipeline.common.ray_utils import init_ray
    from pipeline.train.trainer import build_trainer

    out = Path(args.work) / "ray-run"
    shutil.rmtree(out, ignore_errors=True)
    init_ray(
        num_cpus=len(os.sched_getaffinity(0)),
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": record_first_step,
            "env_vars": {FIRST_STEP_FILE: os.environ[FIRST_STEP_FILE]},
        },
    )
    result = build_trainer(train_config(args, out, workers=1)).fit()
    history = result.return_value["history"]
    ray.shutdown()
    return {"epochs": [{"rows": e["rows"], "seconds": e["seconds"]} for e in history]}


def load_split(store, split: str):
    """One split of the store as padded tensors (the collate the Ray side uses, applied once)."""
    import pyarrow.parquet as pq

    from pipeline.train.data import PaddedBatchCollate, select_split

    table = pq.read_table(list(store.files))
    table = select_split(
        table,
        split=split,
        val_fraction=store.val_fraction,
        label_column=store.label_column,
        semantic=store.semantic,
    )
    collate = PaddedBatchCollate(
        task=store.task,
        num_classes=store.num_classes,
        visual_dim=store.visual_dim,
        semantic_dim=store.semantic_dim,
    )
    return collate(table)


def run_plain(args) -> dict:
    """The plain loop: what train_loop does per epoch, without Ray."""
    import contextlib

    import torch

    from pipeline.crif.metrics import classification_metrics
    from pipeline.crif.model import build_model
    from pipeline.train.data import inspect_store
    from pipeline.train.trainer import batch_losses, model_config_for

    if args.threads:
        torch.set_num_threads(args.threads)
    record_first_step()
    config = train_config(args, Path(args.work) / "plain-run", workers=0)
    store = inspect_store(config.features, config.semantic_modality, config.val_fraction)
    train, val = load_split(store, "train"), load_split(store, "val")
    model_config = model_config_for(config, store.metadata)
    settings = config.optimization
    torch.manual_seed(settings.seed)
    device = torch.device("cuda" if args.use_gpu and torch.cuda.is_available() else "cpu")
    model = build_model(model_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, gamma=0.1)
    if device.type == "cuda":
        train = {key: value.pin_memory() for key, value in train.items()}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    rows_total = len(train["labels"])
    epochs = []
    for epoch in range(settings.epochs):
        started = time.time()
        model.train()
        order = torch.randperm(rows_total, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, rows_total, settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = {
                key: value[index].to(device, non_blocking=True) for key, value in train.items()
            }
            with autocast:
                output = model(
                    batch["visual"], batch["visual_mask"], batch["semantic"], batch["semantic_mask"]
                )
            has_semantic = batch["semantic_mask"].any(dim=1)
            terms = batch_losses(
                output,
                batch["labels"],
                has_semantic,
                model_config,
                config.loss_weights(epoch),
                None,
            )
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad(), autocast:
            logits = model.predict(val["visual"].to(device), val["visual_mask"].to(device))
        classification_metrics(logits.float().cpu().numpy(), val["labels"].numpy(), store.task)
        epochs.append({"rows": rows_total, "seconds": round(time.time() - started, 3)})
    return {"epochs": epochs, "threads": torch.get_num_threads()}


def child(variant: str, args, threads: int | None = None) -> dict:
    marker = Path(args.work) / f"first-step-{variant}-{threads}"
    marker.unlink(missing_ok=True)
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--store",
        args.store,
        "--work",
        args.work,
        "--epochs",
        str(args.epochs),
        "--batch",
        str(args.batch),
    ]
    command += ["--threads", str(threads)] if threads else []
    command += ["--use-gpu"] if args.use_gpu else []
    spawned = time.time()
    result = run_process(command, env={FIRST_STEP_FILE: str(marker), "RAY_ADDRESS": ""})
    report = json.loads(result["output"].strip().splitlines()[-1])
    first_steps = [float(line) for line in marker.read_text().split()] if marker.exists() else []
    steady = report["epochs"][1:] or report["epochs"]
    return {
        "process_seconds": result["seconds"],
        "first_step_seconds": min(first_steps) - spawned if first_steps else None,
        "samples_per_second": median([e["rows"] / e["seconds"] for e in steady]),
        **report,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--videos-per-camera", type=int, default=300)
    parser.add_argument("--clips", type=int, default=16, help="S3D clips per video (T_v)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--variant", choices=["ray", "plain"], help=argparse_hidden())
    parser.add_argument("--store", help=argparse_hidden())
    parser.add_argument("--work", help=argparse_hidden())
    parser.add_argument("--threads", type=int, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.variant:  # a child process: one variant, its JSON report last
        report = run_ray(args) if args.variant == "ray" else run_plain(args)
        print(json.dumps(report))
        return report
    if args.smoke:
        args.epochs, args.videos_per_camera, args.clips = 2, 10, 4

    from pipeline.synthetic.crosscam import BenchmarkData, generate_benchmark_store

    work = Path(args.out) / "training-work"
    shutil.rmtree(work, ignore_errors=True)
    data = BenchmarkData(
        videos_per_camera=args.videos_per_camera, clips=args.clips, captions=5, text_dim=384
    )
    generate_benchmark_store(work / "store", data)
    args.store, args.work = str(work / "store"), str(work)

    cores = len(os.sched_getaffinity(0))
    # ray: the worker's CPUs are its torch threads (Ray sets OMP_NUM_THREADS to them).
    variants = {
        "ray": ("ray", None),
        "ray_all_cores": ("ray", cores),
        "plain": ("plain", None),
        "plain_1_thread": ("plain", 1),
    }
    if args.smoke:  # the like-for-like pair only: each Ray process costs most of a minute
        variants = {name: variants[name] for name in ("ray_all_cores", "plain")}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            variant, threads = variants[name]
            runs[name].append(child(variant, args, threads))
            print(f"  {name}: {runs[name][-1]['samples_per_second']:.0f} samples/s", flush=True)
    rows = []
    for name, results in runs.items():
        rows.append(
            {
                "variant": name,
                "samples_per_s": median([r["samples_per_second"] for r in results]),
                "first_step_s": median(
                    [
                        r["first_step_seconds"]
                        for r in results
                        if r["first_step_seconds"] is not None
                    ]
                ),
                "process_s": median([r["process_seconds"] for r in results]),
            }
        )
    by_name = {row["variant"]: row for row in rows}
    reference = by_name.get("ray", by_name["ray_all_cores"])
    for row in rows:
        row["ray_vs_this"] = reference["samples_per_s"] / row["samples_per_s"]
    # Like for like: the plain loop runs torch on every core, so does the all-cores worker.
    ratio = by_name["ray_all_cores"]["samples_per_s"] / by_name["plain"]["samples_per_s"]
    one_cpu_ratio = (
        by_name["ray"]["samples_per_s"] / by_name["plain"]["samples_per_s"]
        if "ray" in by_name
        else float("nan")
    )
    print_table(
        f"Training, {data.train_cameras * data.videos_per_camera} train+val videos x "
        f"{args.clips} clips, batch {args.batch}, {args.epochs} epochs "
        f"(steady state: epochs 2+; first step: from process start)",
        rows,
        ["variant", "samples_per_s", "ray_vs_this", "first_step_s", "process_s"],
    )
    print(
        f"ray (worker on all {cores} cores) / plain samples/s: {ratio:.3f} (goal >= 0.8); "
        f"ray (1-CPU worker) / plain: {one_cpu_ratio:.3f}"
    )
    result = {
        "rows": rows,
        "ray_vs_plain": ratio,
        "ray_1_cpu_vs_plain": one_cpu_ratio,
        "goal_0_8": ratio >= 0.8,
        "runs": runs,
        "data": dataclasses.asdict(data),
        "epochs": args.epochs,
        "batch": args.batch,
        "use_gpu": args.use_gpu,
    }
    write_result(args.out, "training", result)
    return result


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
