"""GPU check without Ray: S3D fp32 vs bf16, decode rate per core, CRIF training, utilisation.

    benchmarks/gpu_check.sh                 # on a machine with a GPU: under 5 minutes
    python benchmarks/gpu_check.py --dry    # CPU, tiny sizes: checks every code path runs

Needs torch and torchvision only (decord optional: the decode phase is skipped without it).
Phases:
1. S3D (random weights, channels_last_3d) on 64x224x224 clips: clips/s and achieved TFLOP/s in
   strict fp32 (TF32 off), TF32, and bf16 autocast (what the pipeline runs on GPUs); then the
   extractor end to end (uint8 clips from pinned memory, normalised on the GPU); and the
   features' largest relative difference bf16 vs fp32.
2. decord decode, one thread: frames/s per core at the pipeline's 256x256, and the cores one
   GPU needs to be fed at the bf16 rate.
3. CRIF training steps/s (GRU backbone, batch 64, bf16 autocast, pinned non-blocking copies).
GPU utilisation (nvidia-smi, sampled every 0.2 s) is reported per phase.
Writes OUT/gpu_check.json.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    SHARED_VIDEOS,
    base_parser,
    print_table,
    s3d_flops_per_clip,
    write_result,
)


class Utilisation:
    """Mean GPU utilisation (%) from nvidia-smi while the block runs; None without it."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self.process = enabled, [], None

    def __enter__(self):
        if self.enabled:
            try:
                self.process = subprocess.Popen(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-lms",
                        "200",
                        "-i",
                        "0",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            except OSError:
                self.process = None
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            output, _ = self.process.communicate()
            self.samples = [float(v) for v in output.split() if v.replace(".", "").isdigit()]

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(step, device, seconds: float, warmup: int = 2) -> tuple[float, int]:
    """Calls per second of `step` over at least `seconds` (after `warmup` calls)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        if calls % 2 == 0 or device.type != "cuda":
            synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return calls / elapsed, calls


def s3d_phase(device, clip_len: int, batch: int, seconds: float, gpu: bool, dry: bool) -> dict:
    import torch

    from feature_extractors.s3d import S3DConfig, S3DExtractor, build_s3d_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_s3d_backbone("random")
    flops = s3d_flops_per_clip(clip_len)
    size = 224
    if dry:  # the stem on 32x32 frames: bf16 convolutions crawl on CPUs without bf16 units
        model.features, model.avgpool = model.features[:2], torch.nn.AdaptiveAvgPool3d(1)
        flops, size = 0, 32
    model = model.eval().to(device).to(memory_format=torch.channels_last_3d)
    warmup = 0 if dry else 2
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, clip_len, size, size, generator=generator).to(device)
    inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    precisions = {
        "fp32": (False, contextlib.nullcontext),
        "tf32": (True, contextlib.nullcontext),
        "bf16": (True, lambda: torch.autocast(device.type, dtype=torch.bfloat16)),
    }
    rows, features = [], {}
    for name, (tf32, autocast) in precisions.items():
        if name == "tf32" and device.type != "cuda":
            continue
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32

        def step(autocast=autocast):
            with torch.inference_mode(), autocast():
                return model(inputs)

        with Utilisation(gpu) as utilisation:
            calls_per_second, _ = rate(step, device, seconds, warmup)
        features[name] = step().float().flatten(1).cpu()
        clips_per_second = calls_per_second * batch
        rows.append(
            {
                "s3d": f"model {name}",
                "clips_per_s": clips_per_second,
                "tflops": clips_per_second * flops / 1e12,
                "gpu_util_pct": utilisation.mean,
            }
        )
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    reference = features["fp32"]
    difference = float((features["bf16"] - reference).abs().max() / reference.abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(features["bf16"], reference).min())

    result = {
        "rows": rows,
        "gflop_per_clip": flops / 1e9,
        "batch": batch,
        "clip_len": clip_len,
        "bf16_vs_fp32_max_relative_difference": difference,
        "bf16_vs_fp32_min_cosine": cosine,
    }
    if dry:  # a full S3D call costs a minute on a loaded 2-core machine
        return result
    # The extractor as the pipeline runs it: uint8 clips from pinned memory to the device.
    config = S3DConfig(weights="random", clip_len=clip_len, clip_stride=clip_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = S3DExtractor(config, device=device, execution="auto")
    clips = torch.from_numpy(extractor.example_input(batch))
    if device.type == "cuda":
        clips = clips.pin_memory()
    with Utilisation(gpu) as utilisation:
        calls_per_second, _ = rate(lambda: extractor(clips), device, seconds, 1)
    rows.append(
        {
            "s3d": f"extractor ({extractor.execution}, uint8 in)",
            "clips_per_s": calls_per_second * batch,
            "tflops": calls_per_second * batch * flops / 1e12,
            "gpu_util_pct": utilisation.mean,
        }
    )
    return result


def decode_phase(videos_dir: Path | None, seconds: float, limit: int | None = None) -> dict:
    """decord at 256x256 with one thread over the sample videos: frames/s per core."""
    try:
        import decord
    except ImportError:
        return {"skipped": "decord is not installed (carry its wheel: see gpu_check.sh)"}
    directory = videos_dir or SHARED_VIDEOS
    videos = sorted(p for p in directory.glob("*") if p.suffix in (".mp4", ".avi", ".mkv"))
    videos = videos[:limit]
    if not videos:
        return {"skipped": f"no videos in {directory}"}
    frames, started = 0, time.perf_counter()
    while frames == 0 or time.perf_counter() - started < seconds:  # every video at least once
        for path in videos:
            reader = decord.VideoReader(str(path), width=256, height=256, num_threads=1)
            for index in range(len(reader)):
                reader[index].asnumpy()
            frames += len(reader)
    return {
        "frames_per_s_per_core": frames / (time.perf_counter() - started),
        "videos": [p.name for p in videos],
    }


def training_phase(device, batch: int, seconds: float, gpu: bool, dry: bool) -> dict:
    import torch

    from pipeline.crif.losses import LossWeights, crif_losses
    from pipeline.crif.model import CRIFConfig, build_model

    config = CRIFConfig(num_classes=20, semantic_dim=384)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    generator = torch.Generator().manual_seed(0)
    clips, captions = 32, 20  # ~2 min of video at 64-frame clips; MSR-VTT's 20 captions
    host = {
        "visual": torch.randn(batch, clips, 1024, generator=generator),
        "visual_mask": torch.ones(batch, clips, dtype=torch.bool),
        "semantic": torch.randn(batch, captions, 384, generator=generator),
        "semantic_mask": torch.ones(batch, captions, dtype=torch.bool),
        "labels": torch.randint(0, 20, (batch,), generator=generator),
    }
    if device.type == "cuda":
        host = {key: value.pin_memory() for key, value in host.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        batch_on_device = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        labels = batch_on_device.pop("labels")
        with autocast:
            output = model(**batch_on_device)
            losses = crif_losses(output, labels, config, LossWeights())
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()

    model.train()
    with Utilisation(gpu) as utilisation:
        steps_per_second, steps = rate(step, device, seconds, 0 if dry else 2)
    return {
        "steps_per_s": steps_per_second,
        "samples_per_s": steps_per_second * batch,
        "batch": batch,
        "steps": steps,
        "gpu_util_pct": utilisation.mean,
        "amp": "bf16" if device.type == "cuda" else "off (cpu)",
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes: checks it runs")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured phase")
    parser.add_argument("--batch", type=int, default=8, help="S3D clips per call")
    parser.add_argument("--videos", help="videos for the decode phase (default: the samples)")
    args = parser.parse_args(argv)
    dry = args.dry or args.smoke

    import torch

    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    device = torch.device(device_name)
    gpu = device.type == "cuda"
    if dry:
        clip_len, batch, seconds, train_batch = 16, 1, 0.0, 8
    else:
        clip_len, batch, seconds, train_batch = 64, args.batch, args.seconds, 64
    print(f"device: {torch.cuda.get_device_name(0) if gpu else 'cpu'}; dry run: {dry}")
    started = time.perf_counter()
    s3d = s3d_phase(device, clip_len, batch, seconds, gpu, dry)
    videos = Path(args.videos) if args.videos else None
    decode = decode_phase(videos, 0.0, 1) if dry else decode_phase(videos, 10.0)
    training = training_phase(device, train_batch, seconds, gpu, dry)
    bf16 = next(row for row in s3d["rows"] if row["s3d"] == "model bf16")
    if "frames_per_s_per_core" in decode:  # a clip needs ~2x its frames decoded (30 -> 15 fps)
        frames_per_second = bf16["clips_per_s"] * clip_len * 2
        decode["cores_to_feed_one_gpu_bf16"] = frames_per_second / decode["frames_per_s_per_core"]
    print_table(
        f"S3D {clip_len}x224x224, batch {batch}, {s3d['gflop_per_clip']:.0f} GFLOP/clip"
        + (" (dry run: the stem on 32x32 frames)" if dry else ""),
        s3d["rows"],
        ["s3d", "clips_per_s", "tflops", "gpu_util_pct"],
    )
    print(
        f"features bf16 vs fp32: max relative difference "
        f"{s3d['bf16_vs_fp32_max_relative_difference']:.2e}, "
        f"min cosine {s3d['bf16_vs_fp32_min_cosine']:.6f}"
    )
    print(f"decode: {decode}")
    print(
        f"CRIF training: {training['steps_per_s']:.1f} steps/s "
        f"({training['samples_per_s']:.0f} samples/s, batch {training['batch']}, "
        f"AMP {training['amp']}, GPU util {training['gpu_util_pct']})"
    )
    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    result = {
        "device": str(device),
        "dry": dry,
        "s3d": s3d,
        "decode": decode,
        "training": training,
        "seconds": total,
        "exercised_on_gpu": gpu,
    }
    if not gpu:
        result["note"] = "not exercised on a GPU: CPU code-path check only"
    write_result(args.out, "gpu_check", result)
    return result


if __name__ == "__main__":
    main()
