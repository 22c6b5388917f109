"""DDP gives the single-process step: 2 gloo processes, each with half of a global batch, compute
the same losses, gradients and input statistics as one process with the whole batch.

This is what makes 1- and 2-worker runs alike: the batch terms (CORAL's covariances, the
class-centroid alignment, L_sim) see the global batch (``gather_batch``), and the input
standardisation's running statistics are all-reduced. No Ray: torch.multiprocessing and gloo.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipeline.crif.losses import LossWeights
from pipeline.crif.model import CRIFConfig, build_model
from pipeline.train.trainer import batch_losses, gather_batch

BATCH, STEPS = 8, 2


def _config(ablation: str, align_fn: str) -> CRIFConfig:
    return CRIFConfig(
        num_classes=3, visual_dim=12, semantic_dim=6, hidden_dim=16, shared_dim=16, rho=8,
        dropout=0.0, ablation=ablation, align_fn=align_fn,
    )  # fmt: skip


def _batches(steps: int = STEPS):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        visual = torch.randn(BATCH, 5, 12, generator=generator) * 2 + 3
        visual_mask = torch.arange(5)[None] < torch.tensor([5, 3, 4, 1, 5, 2, 5, 4])[:, None]
        semantic = torch.randn(BATCH, 2, 6, generator=generator)
        semantic_mask = torch.ones(BATCH, 2, dtype=torch.bool)
        semantic_mask[[1, 6]] = False  # rows without a caption
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        yield visual, visual_mask, semantic, semantic_mask, labels


def _steps(model, config, rows: slice, distributed: bool) -> list[dict]:
    """Forward + losses + backward on ``rows`` of each batch; what each step gave."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    module = model.module if distributed else model
    results = []
    for visual, visual_mask, semantic, semantic_mask, labels in _batches():
        output = model(visual[rows], visual_mask[rows], semantic[rows], semantic_mask[rows])
        has_semantic = semantic_mask[rows].any(dim=1)
        output, labels, has_semantic = gather_batch(output, labels[rows], has_semantic)
        terms = batch_losses(output, labels, has_semantic, config, LossWeights(), None)
        optimizer.zero_grad()
        terms["total"].backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        optimizer.step()
        results.append(
            {
                "losses": {name: float(value) for name, value in terms.items()},
                "grads": grads,
                "mean": module.visual_input.mean.clone(),
                "count": float(module.visual_input.count),
            }
        )
    return results


def _worker(rank: int, port: int, ablation: str, align_fn: str, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        config = _config(ablation, align_fn)
        model = DistributedDataParallel(build_model(config))
        half = BATCH // 2
        results = _steps(model, config, slice(rank * half, (rank + 1) * half), distributed=True)
        if rank == 0:
            torch.save(results, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(("ablation", "align_fn"), [("full", "coral"), ("align", "ssan")])
def test_two_gloo_workers_take_the_single_process_step(ablation, align_fn, tmp_path):
    torch.manual_seed(0)
    config = _config(ablation, align_fn)
    single = _steps(build_model(config), config, slice(None), distributed=False)
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), ablation, align_fn, path), nprocs=2, join=True)
    double = torch.load(path, weights_only=True)
    for one, two in zip(single, double, strict=True):
        assert one["losses"].keys() == two["losses"].keys()
        for name, value in one["losses"].items():
            assert two["losses"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert one["count"] == two["count"]  # statistics of the global batch on every rank
        torch.testing.assert_close(two["mean"], one["mean"])
        assert one["grads"].keys() == two["grads"].keys()
        for name, grad in one["grads"].items():  # DDP averages: the single-process gradient
            torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6)
