"""Data parallelism inside one job, over an already initialised `torch.distributed` process group.

The sweep's Ray Train workers set up the group (gloo on CPUs, NCCL on GPUs); a single process has
none, and then every function here is the plain single-process computation.

What is split: a step's cost is encoding the soft prompt of every training class (and, on the uncached
path, the batch's images). Each rank computes one contiguous block of those rows and all-gathers the
others, so every rank holds the same full [C, E] features and computes the same loss on the same batch
(same seed, same random draws). Only a rank's own block carries gradient, so after backward each rank
holds the gradient through its block; summing them over ranks (`sum_gradients`) gives exactly the
single-process gradient. Batch sharding alone, as in plain DDP, would not help: every rank would still
encode every class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def block_bounds(n_rows: int, n_ranks: int) -> list[int]:
    """Start of each rank's contiguous block, plus `n_rows`: blocks differ in size by at most one row."""
    base, extra = divmod(n_rows, n_ranks)
    bounds = [0]
    for rank in range(n_ranks):
        bounds.append(bounds[-1] + base + (1 if rank < extra else 0))
    return bounds


def split_rows(compute: Callable[[int, int], torch.Tensor], n_rows: int) -> torch.Tensor:
    """`compute(0, n_rows)` -> [n_rows, E], with the rows split over the ranks.

    `compute(start, stop)` returns rows start..stop-1 [stop - start, E]. Each rank computes its block
    and receives the others' (as float32, detached); its own block keeps its autograd graph.
    """
    rank, n_ranks = world()
    if n_ranks == 1:
        return compute(0, n_rows)
    bounds = block_bounds(n_rows, n_ranks)
    start, stop = bounds[rank], bounds[rank + 1]
    # A rank without rows (n_rows < n_ranks) computes one row and keeps none: it only needs the shape.
    local = (compute(start, stop) if stop > start else compute(0, 1)[:0]).float()  # [stop - start, E]
    largest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    padded = local.new_zeros(largest, local.shape[1])  # all_gather needs equal shapes on every rank
    padded[: stop - start] = local.detach()
    blocks = [torch.empty_like(padded) for _ in range(n_ranks)]
    dist.all_gather(blocks, padded)
    blocks = [block[: b - a] for block, a, b in zip(blocks, bounds, bounds[1:], strict=False)]
    blocks[rank] = local
    return torch.cat(blocks)  # [n_rows, E]


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum each parameter's gradient over the ranks (a rank whose block did not reach it contributes 0)."""
    if world()[1] == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
