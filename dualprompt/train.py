"""The training loop: plain PyTorch, one path for every method (coop, kgcoop, dualprompt).

One step = look up (or encode) the batch's image features, encode the soft prompt for every training
class, and combine the method's named loss terms. The schedule is the CoOp family's: SGD, a constant
warm-up epoch at `warmup_lr`, then cosine decay of `lr`, stepped once per epoch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import MethodConfig, OptimConfig
from .features import ViewSource
from .losses import method_loss
from .parallel import split_rows, sum_gradients
from .prompt_learner import PromptLearner


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


def train_prompt(
    learner: PromptLearner,
    views: ViewSource,
    labels: torch.Tensor,
    n_views: int,
    classnames: tuple[str, ...],
    handcrafted: torch.Tensor,
    method: MethodConfig,
    optim: OptimConfig,
    seed: int,
) -> TrainLog:
    """Tune `learner.ctx` on the training classes; labels [N] index `classnames`, handcrafted is [C, E]."""
    device = learner.ctx.device
    generator = torch.Generator().manual_seed(seed)
    beta_rng = np.random.default_rng(seed)
    optimizer = torch.optim.SGD([learner.ctx], lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    use_amp = learner.backbone.cfg.precision == "amp" and device.type == "cuda"
    log, start = TrainLog(), time.perf_counter()
    for epoch in range(optim.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(optim, epoch)
        order = torch.randperm(len(labels), generator=generator)
        view_of = torch.randint(n_views, (len(labels),), generator=generator)  # one sampled view per image
        sums: dict[str, float] = {}
        batches = range(0, len(order), optim.batch_size)
        for start_row in batches:
            batch = order[start_row : start_row + optim.batch_size]
            # Mixed precision covers the text transformer only; the loss terms are computed in fp32.
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
                # Data-parallel ranks each encode a block of the classes (see parallel.py).
                soft = split_rows(lambda a, b: learner(classnames[a:b]), len(classnames))  # [C, E]
            image_features = batch_features(views, batch, view_of[batch]).to(device).float()  # [B, E]
            terms = method_loss(method, learner.backbone.logit_scale, image_features, labels[batch].to(device),
                                soft.float(), handcrafted.float(), generator, beta_rng)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].float().backward()
            sum_gradients([learner.ctx])  # every rank computed the same loss; each holds its block's part
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            log.steps += 1
        log.epoch_terms.append({name: total / len(batches) for name, total in sums.items()})
    log.train_s = time.perf_counter() - start
    return log


def batch_features(views: ViewSource, batch: torch.Tensor, view_of: torch.Tensor) -> torch.Tensor:
    """Image features [B, E] of a batch; when `views` encodes images, data-parallel ranks split the batch."""
    if not views.encodes_images:
        return views.get(batch, view_of)  # a lookup: cheaper than any exchange
    return split_rows(lambda a, b: views.get(batch[a:b], view_of[a:b]), len(batch))
