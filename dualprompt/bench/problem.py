"""The problem both loops solve: one base-class training job, its data, prompts and configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbone import Backbone
from ..config import MethodConfig, OptimConfig, PromptConfig
from ..data.catalogue import default_data_root, get_spec
from ..data.readers import load_dataset
from ..data.sampling import sample_few_shot, subsample_classes
from ..data.transforms import build_transforms
from ..data.types import Item
from ..experiment import Experiment
from ..prompt_learner import PromptLearner


@dataclass(frozen=True)
class EvalSet:
    name: str  # "base" or "new"
    classnames: tuple[str, ...]
    items: tuple[Item, ...]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([item.label for item in self.items])


@dataclass
class Problem:
    """One base-class training job: its data, class prompts and training configuration."""

    backbone: Backbone
    classnames: tuple[str, ...]  # the dataset's base classes, then any distractor classes (--classes)
    train_items: tuple[Item, ...]
    eval_sets: tuple[EvalSet, ...]  # base test, then new test (a final-stage trial evaluates both)
    handcrafted: torch.Tensor  # [C, E]
    method: MethodConfig
    optim: OptimConfig
    n_views: int
    seed: int
    train_transform: object
    eval_transform: object

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([item.label for item in self.train_items])

    def learner(self, kind: type[PromptLearner]) -> PromptLearner:
        """A fresh soft prompt; both loops start from the same context vectors."""
        return kind(self.backbone, PromptConfig(), torch.Generator().manual_seed(self.seed))


def build_problem(
    backbone: Backbone, dataset: str = "synthetic_blurry", data_root: str = "", shots: int = 16,
    classes: int = 0, n_views: int = 8, batch_size: int = 32, steps: int = 250, test_images: int = 0,
    method: str = "coop", lr: float = 0.002, seed: int = 1,
) -> Problem:
    """Train on the base classes of `dataset` at `shots` shots, test on base and new (`test_images` each,
    0 = all); `steps` is rounded up to whole epochs."""
    root = Path(data_root) if data_root else default_data_root()
    few_shot = sample_few_shot(load_dataset(dataset, root), shots, seed)
    base, new = subsample_classes(few_shot, "base"), subsample_classes(few_shot, "new")
    classnames = with_distractors(base.classnames, classes, backbone, exclude=new.classnames)
    eval_sets = (EvalSet("base", classnames, _every_kth(base.test, test_images)),
                 EvalSet("new", new.classnames, _every_kth(new.test, test_images)))
    epochs = max(1, math.ceil(steps / math.ceil(len(base.train) / batch_size)))
    optim = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=min(1, epochs - 1))
    train_tf, eval_tf = build_transforms(backbone.image_size, backbone.image_mean, backbone.image_std)
    handcrafted = Experiment(backbone).handcrafted(classnames, get_spec(dataset).template, ensemble=False)
    return Problem(backbone, classnames, base.train, eval_sets, handcrafted, MethodConfig(method=method), optim,
                   n_views, seed, train_tf, eval_tf)


def _every_kth(items: tuple[Item, ...], n: int) -> tuple[Item, ...]:
    """About `n` of `items`, every k-th, so that every class keeps test images (n = 0: all)."""
    return items[:: math.ceil(len(items) / n)] if 0 < n < len(items) else items


def with_distractors(names: tuple[str, ...], total: int, backbone: Backbone,
                     exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`names` padded to `total` class prompts with other class names the tokenizer knows (not `exclude`).

    The extra classes have no images; they make every text pass as wide as a `total`-class dataset.
    """
    if total <= len(names):
        return names
    pool = distractor_pool(backbone)
    extra = [name for name in pool if name not in names and name not in exclude][: total - len(names)]
    if len(names) + len(extra) < total:
        raise SystemExit(f"--classes: {backbone.cfg.backbone} has only {len(names) + len(extra)} class names "
                         f"available here; ask for at most that many.")
    return names + tuple(extra)


def distractor_pool(backbone: Backbone) -> list[str]:
    """ImageNet's 1000 class names for BPE tokenizers; the world's colour x shape names for the tiny CLIP."""
    from ..world.tokenizer import WorldTokenizer

    if isinstance(backbone.tokenizer, WorldTokenizer):
        from ..world.vocab import COLOURS, SHAPES

        return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)
