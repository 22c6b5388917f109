"""Where S3D's CPU time goes: each convolution's achieved GFLOP/s against the matmul rate.

    python benchmarks/s3d_layers.py              # 64x224x224 clips, ~1 min on 2 cores
    python benchmarks/s3d_layers.py --smoke      # 16-frame clips: checks that it runs

The model is S3D in channels_last_3d, eager (the layout the compiled package also uses; the
compiled package runs the same oneDNN convolutions, with batch norm folded into them and
ReLU fused). Every Conv3d is timed with forward hooks (CPU ops are synchronous), grouped by
kernel shape: the separable stem, 1x1x1 projections, 1x3x3 spatial and 3x1x1 temporal
convolutions of the separable blocks. Everything else (batch norm, ReLU, pooling,
concatenation) is the forward time outside the convolutions. Matmul is measured interleaved
with the forward passes. If the convolutions alone run below 85% of matmul, no rearrangement
of the other ops can lift the whole model there. Writes OUT/s3d_layers.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    base_parser,
    interleaved,
    matmul_rates,
    median,
    print_table,
    write_result,
)


def kernel_group(conv) -> str:
    kernel = "x".join(str(k) for k in conv.kernel_size)
    names = {
        "1x7x7": "stem 1x7x7 spatial",
        "7x1x1": "stem 7x1x1 temporal",
        "1x1x1": "1x1x1 projection",
        "1x3x3": "1x3x3 spatial",
        "3x1x1": "3x1x1 temporal",
    }
    return names.get(kernel, kernel)


def conv_flops(conv, output) -> int:
    """Multiply-adds x 2 of one Conv3d call (bias ignored)."""
    per_output = (conv.in_channels // conv.groups) * int(
        conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
    )
    return 2 * output.numel() * per_output


class ConvTimer:
    """Forward hooks on every Conv3d: seconds and FLOPs per kernel group, per forward pass."""

    def __init__(self, model):
        import torch

        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._started: dict[int, float] = {}
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.register_forward_pre_hook(self._pre)
                module.register_forward_hook(self._post)

    def reset(self) -> None:
        self.seconds.clear()
        self.flops.clear()
        self.calls.clear()

    def _pre(self, module, inputs) -> None:
        self._started[id(module)] = time.perf_counter()

    def _post(self, module, inputs, output) -> None:
        group = kernel_group(module)
        self.seconds[group] += time.perf_counter() - self._started.pop(id(module))
        self.flops[group] += conv_flops(module, output)
        self.calls[group] += 1


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clip-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clip_len, args.repeats = 16, 1

    import torch

    from feature_extractors.s3d import S3DConfig, S3DExtractor, normalize_clips

    config = S3DConfig(weights="random", clip_len=args.clip_len, clip_stride=args.clip_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = S3DExtractor(config, execution="channels_last")
    model = extractor.model
    clips = torch.as_tensor(extractor.example_input(batch_size=1))
    inputs = normalize_clips(clips, config.mean, config.std).contiguous(
        memory_format=torch.channels_last_3d
    )
    timer = ConvTimer(model)
    per_pass: list[dict] = []
    rates: list[dict] = []

    def forward() -> float:
        timer.reset()
        with torch.inference_mode():
            started = time.perf_counter()
            model(inputs)
            seconds = time.perf_counter() - started
        per_pass.append(
            {"total": seconds, "seconds": dict(timer.seconds), "flops": dict(timer.flops)}
        )
        return seconds

    def matmul() -> float:
        rates.append(matmul_rates(256 if args.smoke else 2048, 0.3 if args.smoke else 2.0))
        return 0.0

    forward()  # warm-up: oneDNN primitive creation, allocator
    per_pass.clear()
    interleaved({"matmul": matmul, "forward": forward}, args.repeats)
    matmul_rate = median([rate["wall"] for rate in rates])
    total = median([p["total"] for p in per_pass])
    groups = sorted(per_pass[0]["flops"], key=lambda g: -per_pass[0]["flops"][g])
    all_flops = sum(per_pass[0]["flops"].values())
    rows = []
    for group in groups:
        seconds = median([p["seconds"][group] for p in per_pass])
        flops = per_pass[0]["flops"][group]
        rows.append(
            {
                "part": group,
                "calls": timer.calls[group],
                "gflop": flops / 1e9,
                "flop_share": flops / all_flops,
                "seconds": seconds,
                "time_share": seconds / total,
                "gflops": flops / seconds / 1e9,
                "of_matmul": flops / seconds / 1e9 / matmul_rate,
            }
        )
    conv_seconds = sum(row["seconds"] for row in rows)
    rows.append(
        {
            "part": "all convolutions",
            "gflop": all_flops / 1e9,
            "flop_share": 1.0,
            "seconds": conv_seconds,
            "time_share": conv_seconds / total,
            "gflops": all_flops / conv_seconds / 1e9,
            "of_matmul": all_flops / conv_seconds / 1e9 / matmul_rate,
        }
    )
    rows.append(
        {
            "part": "other ops (BN, ReLU, pool, cat)",
            "seconds": total - conv_seconds,
            "time_share": (total - conv_seconds) / total,
        }
    )
    rows.append(
        {
            "part": "whole forward",
            "gflop": all_flops / 1e9,
            "seconds": total,
            "time_share": 1.0,
            "gflops": all_flops / total / 1e9,
            "of_matmul": all_flops / total / 1e9 / matmul_rate,
        }
    )
    print_table(
        f"S3D channels_last eager, 1x3x{args.clip_len}x224x224, {torch.get_num_threads()} "
        f"threads; matmul {matmul_rate:.1f} GFLOP/s",
        rows,
        ["part", "calls", "gflop", "flop_share", "seconds", "time_share", "gflops", "of_matmul"],
    )
    result = {
        "threads": torch.get_num_threads(),
        "clip": [1, 3, args.clip_len, 224, 224],
        "matmul_gflops": matmul_rate,
        "rows": rows,
    }
    write_result(args.out, "s3d_layers", result)
    return result


if __name__ == "__main__":
    main()
