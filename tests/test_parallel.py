"""Data parallelism inside a job: two gloo ranks compute what one process computes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dualprompt.config import Config
from dualprompt.parallel import block_bounds, split_rows, sum_gradients

JOB = {"dataset": "synthetic_blurry", "epochs": 3, "n_views": 1, "shots": 8, "method": "dualprompt",
       "aug_variant": "virtual", "lr": 0.02}


@pytest.mark.parametrize("n_rows, n_ranks, bounds", [(10, 2, [0, 5, 10]), (5, 2, [0, 3, 5]), (7, 3, [0, 3, 5, 7]),
                                                     (1, 2, [0, 1, 1]), (4, 1, [0, 4])])
def test_blocks_cover_the_rows_once_and_differ_by_at_most_one(n_rows, n_ranks, bounds):
    assert block_bounds(n_rows, n_ranks) == bounds


def test_one_process_is_the_plain_computation():
    rows = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(split_rows(lambda a, b: rows[a:b], 6), rows)
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 3.0)
    sum_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((2,), 3.0))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, job: dict, out: str) -> None:
    """One rank: join a gloo group, check the gradient exchange on a toy problem, then run the job."""
    from dualprompt.backbone import load_backbone
    from dualprompt.experiment import Experiment

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        # Toy: loss = sum over 5 rows of (x * row)^2; the summed gradient must be the full one.
        x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        weights = torch.arange(10.0).reshape(5, 2)
        (split_rows(lambda a, b: x * weights[a:b], 5) ** 2).sum().backward()
        sum_gradients([x])
        result = Experiment(load_backbone(Config().backbone)).run(Config().replace(**job), "search")
        if rank == 0:
            Path(out).write_text(json.dumps({"toy_grad": x.grad.tolist(), "metrics": result.metrics,
                                             "losses": result.loss_terms_by_epoch}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("cached", [True, False], ids=["cached-features", "images-encoded-per-step"])
def test_two_ranks_train_like_one_process(tiny_clip, isolated_dirs, cached):
    from dualprompt.experiment import Experiment

    job = {**JOB, "use_feature_cache": cached}
    single = Experiment(tiny_clip).run(Config().replace(**job), "search")
    out = isolated_dirs / "rank0.json"
    mp.spawn(_rank_main, args=(2, _free_port(), job, str(out)), nprocs=2, join=True)
    parallel = json.loads(out.read_text())

    x, weights = torch.tensor([1.0, 2.0]), torch.arange(10.0).reshape(5, 2)
    assert parallel["toy_grad"] == pytest.approx((2 * x * weights**2).sum(0).tolist())
    for ours, theirs in zip(single.loss_terms_by_epoch, parallel["losses"], strict=True):
        for name in ours:
            assert theirs[name] == pytest.approx(ours[name], rel=1e-4, abs=1e-6), name  # summation order only
    assert parallel["metrics"] == pytest.approx(single.metrics, abs=1e-9)
