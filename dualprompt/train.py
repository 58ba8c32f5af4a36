"""The training loop: plain PyTorch, one path for every method (coop, kgcoop, dualprompt).

One step = look up (or encode) the batch's image features, encode the soft prompt for every training
class, and combine the method's named loss terms. The schedule is the CoOp family's: SGD, a constant
warm-up epoch at `warmup_lr`, then cosine decay of `lr`, stepped once per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import MethodConfig, OptimConfig
from .features import ViewSource
from .losses import method_loss
from .parallel import split_rows, sum_gradients, world
from .prompt_learner import JointPrompts, PromptLearner


def learning_rate(cfg: OptimConfig, epoch: int) -> float:
    """Constant `warmup_lr` for the warm-up epochs, then cosine decay from `lr` over the epochs after them."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    progress = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


@dataclass
class TrainLog:
    """Per-epoch means of each named loss term, and the loop's cost."""

    epoch_terms: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    train_s: float = 0.0


@dataclass
class TrainTask:
    """One job's training problem: its learner, image views [N] with labels [N] indexing `classnames`, the
    hand-crafted view [C, E], and its seed (its own random streams)."""

    learner: PromptLearner
    views: ViewSource
    labels: torch.Tensor
    n_views: int
    classnames: tuple[str, ...]
    handcrafted: torch.Tensor
    seed: int


def train_prompt(learner: PromptLearner, views: ViewSource, labels: torch.Tensor, n_views: int,
                 classnames: tuple[str, ...], handcrafted: torch.Tensor, method: MethodConfig, optim: OptimConfig,
                 seed: int) -> TrainLog:
    """Tune `learner.ctx` on the training classes; labels [N] index `classnames`, handcrafted is [C, E]."""
    task = TrainTask(learner, views, labels, n_views, classnames, handcrafted, seed)
    return train_prompts([task], method, optim)[0]


def steps_per_epoch(task: TrainTask, optim: OptimConfig) -> int:
    return math.ceil(len(task.labels) / optim.batch_size)


def train_prompts(tasks: list[TrainTask], method: MethodConfig, optim: OptimConfig) -> list[TrainLog]:
    """Tune each task's `ctx` in lockstep, one text pass per step for all of them (`JointPrompts`).

    Each task keeps its own random streams (sample order, views, augmentation), loss and optimiser state,
    so its context follows the same path as when trained alone, up to float round-off of the joint pass;
    the total loss is a sum, whose gradient for a task's `ctx` is its own loss's. Lockstep needs the same
    steps per epoch and one process (data parallelism splits one task's classes instead).
    """
    if len({steps_per_epoch(task, optim) for task in tasks}) != 1:
        raise ValueError("jointly trained tasks need the same number of steps per epoch")
    if len(tasks) > 1 and world()[1] > 1:
        raise ValueError("jointly trained tasks run in one process; data-parallel jobs train one at a time")
    device = tasks[0].learner.ctx.device
    generators = [torch.Generator().manual_seed(task.seed) for task in tasks]
    beta_rngs = [np.random.default_rng(task.seed) for task in tasks]
    contexts = [task.learner.ctx for task in tasks]
    optimizer = torch.optim.SGD(contexts, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    joint = JointPrompts([t.learner for t in tasks], [t.classnames for t in tasks]) if len(tasks) > 1 else None
    logs, start = [TrainLog() for _ in tasks], time.perf_counter()
    for epoch in range(optim.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(optim, epoch)
        orders, views_of = [], []  # per task: its sample order [N], one sampled view per image [N]
        for task, generator in zip(tasks, generators, strict=True):
            orders.append(torch.randperm(len(task.labels), generator=generator))
            views_of.append(torch.randint(task.n_views, (len(task.labels),), generator=generator))
        # Float64 sums on the device: reading each term with float() every step would wait for a GPU each
        # time; one read per epoch gives the same numbers (float() is exact and the adds are float64 either way).
        sums: list[dict[str, torch.Tensor]] = [{} for _ in tasks]
        n_batches = steps_per_epoch(tasks[0], optim)
        for step in range(n_batches):
            # Mixed precision covers the text transformer only; the loss terms are computed in fp32.
            with tasks[0].learner.backbone.text_autocast():
                soft_features = joint() if joint else [_soft_features(tasks[0])]  # [C_j, E] each
            total = None
            for j, task in enumerate(tasks):
                batch = orders[j][step * optim.batch_size : (step + 1) * optim.batch_size]
                image_features = batch_features(task.views, batch, views_of[j][batch]).to(device).float()  # [B, E]
                terms = method_loss(method, task.learner.backbone.logit_scale, image_features,
                                    task.labels[batch].to(device), soft_features[j].float(), task.handcrafted.float(),
                                    generators[j], beta_rngs[j])
                total = terms["loss"].float() if total is None else total + terms["loss"].float()
                for name, value in terms.items():
                    sums[j][name] = sums[j].get(name, 0.0) + value.detach().double()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            sum_gradients(contexts)  # every rank computed the same loss; each holds its block's part
            optimizer.step()
        for log, task_sums in zip(logs, sums, strict=True):
            log.steps += n_batches
            log.epoch_terms.append({name: value.item() / n_batches for name, value in task_sums.items()})
    share_s = (time.perf_counter() - start) / len(tasks)
    for log in logs:  # the joint loop's time, shared equally: the tasks' train_s sum to the time it took
        log.train_s = share_s
    return logs


def _soft_features(task: TrainTask) -> torch.Tensor:
    """One task's soft-prompt features [C, E]; data-parallel ranks each encode a block of the classes."""
    return split_rows(lambda a, b: task.learner(task.classnames[a:b]), len(task.classnames))


def batch_features(views: ViewSource, batch: torch.Tensor, view_of: torch.Tensor) -> torch.Tensor:
    """Image features [B, E] of a batch; when `views` encodes images, data-parallel ranks split the batch."""
    if not views.encodes_images:
        return views.get(batch, view_of)  # a lookup: cheaper than any exchange
    return split_rows(lambda a, b: views.get(batch[a:b], view_of[a:b]), len(batch))
