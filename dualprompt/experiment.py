"""One job = one trained (or zero-shot) model on one dataset and seed, evaluated by the protocol.

Stage "final": train on all base classes, test on the base and the new test sets (two closed-set
problems). Stage "search": leak-free; train on the pseudo-base part of the base classes and validate
on pseudo-base and pseudo-new, so a hyperparameter search never sees a true new class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbone import Backbone
from .config import Config
from .data.catalogue import default_data_root, get_spec
from .data.readers import load_dataset
from .data.sampling import pseudo_split, sample_few_shot, subsample_classes
from .data.transforms import build_transforms
from .data.types import DatasetSplits, Item
from .evaluate import accuracy
from .parallel import split_rows
from .features import CachedViews, EncodedViews, FeatureStore, ViewSource
from .prompt_learner import PromptLearner
from .prompts import fill, handcrafted_templates
from .results import harmonic_mean
from .train import TrainLog, train_prompt

STAGES = ("search", "final")


@dataclass
class JobResult:
    """What one job measured. Accuracies are percent; `metrics` keys follow <quantity>_<split>_<subset>."""

    metrics: dict[str, float]
    n_train_classes: int
    n_train_images: int
    steps: int = 0
    loss_terms_by_epoch: list[dict[str, float]] = field(default_factory=list)
    feature_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean total loss of the last epoch (NaN for zero-shot, which does not train)."""
        return self.loss_terms_by_epoch[-1]["loss"] if self.loss_terms_by_epoch else float("nan")


@dataclass(frozen=True)
class EvalSet:
    metric: str
    classnames: tuple[str, ...]
    items: tuple[Item, ...]


def protocol_sets(cfg: Config, stage: str) -> tuple[DatasetSplits, list[EvalSet]]:
    """The training split and the evaluation sets of a job, from the dataset and the few-shot seed."""
    data = cfg.data
    root = Path(data.data_root) if data.data_root else default_data_root()
    few_shot = sample_few_shot(load_dataset(data.dataset, root), data.shots, data.seed, mode=data.sampling)
    base = subsample_classes(few_shot, "base")
    if stage == "final":
        new = subsample_classes(few_shot, "new")
        return base, [
            EvalSet("acc_test_base", base.classnames, base.test),
            EvalSet("acc_test_new", new.classnames, new.test),
        ]
    pseudo_base, pseudo_new = pseudo_split(base)
    # Pseudo-new classes are never trained on, so their few-shot train images validate too.
    return pseudo_base, [
        EvalSet("acc_val_pseudobase", pseudo_base.classnames, pseudo_base.val),
        EvalSet("acc_val_pseudonew", pseudo_new.classnames, pseudo_new.train + pseudo_new.val),
    ]


class Experiment:
    """Runs jobs on one loaded backbone, reusing it and its feature cache across datasets and seeds."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def handcrafted(self, classnames: tuple[str, ...], template: str, ensemble: bool) -> torch.Tensor:
        """The hand-crafted view [C, E]: per class, the normalised mean over templates of frozen features."""
        templates = handcrafted_templates(template, ensemble)

        def block(start: int, stop: int) -> torch.Tensor:
            names = classnames[start:stop]
            per_template = torch.stack([self.backbone.encode_texts([fill(t, c) for c in names]) for t in templates])
            return torch.nn.functional.normalize(per_template.mean(dim=0), dim=-1)  # [stop - start, E]

        return split_rows(block, len(classnames))  # data-parallel ranks each encode a block of classes

    def run(self, cfg: Config, stage: str) -> JobResult:
        """Train (unless zero-shot) and evaluate one job; see the module docstring for the stages."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}.")
        spec = get_spec(cfg.data.dataset)
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
        store = FeatureStore(self.backbone, cache_dir, enabled=cfg.data.use_feature_cache)
        train_split, eval_sets = protocol_sets(cfg, stage)
        size, mean, std = self.backbone.image_size, self.backbone.image_mean, self.backbone.image_std
        train_tf, eval_tf = build_transforms(size, mean, std, crop_scale=(cfg.data.crop_scale_min, 1.0))
        template = cfg.prompt.template or spec.template
        handcrafted = lambda names: self.handcrafted(names, template, cfg.prompt.template_ensemble)  # noqa: E731

        start = time.perf_counter()
        learner, log = None, TrainLog()
        if cfg.method.method != "zeroshot":
            learner = PromptLearner(self.backbone, cfg.prompt, torch.Generator().manual_seed(cfg.data.seed))
            views = self._train_views(store, train_split.train, train_tf, cfg)
            feature_s = time.perf_counter() - start
            labels = torch.tensor([item.label for item in train_split.train])
            log = train_prompt(learner, views, labels, cfg.data.n_views, train_split.classnames,
                               handcrafted(train_split.classnames), cfg.method, cfg.optim, cfg.data.seed)
        else:
            feature_s = time.perf_counter() - start

        start = time.perf_counter()
        metrics = {}
        for eval_set in eval_sets:
            image_features = store.features(eval_set.items, eval_tf, f"eval-{size}", views=None)  # [N, E]
            names = eval_set.classnames
            with torch.no_grad():
                classifier = split_rows(lambda a, b: learner(names[a:b]), len(names)) if learner else handcrafted(names)
            labels = torch.tensor([item.label for item in eval_set.items])
            metrics[eval_set.metric] = accuracy(classifier, image_features, labels)
        first, second = (metrics[s.metric] for s in eval_sets)
        metrics["hm_test" if stage == "final" else "hm_val"] = harmonic_mean(first, second)
        return JobResult(
            metrics=metrics,
            n_train_classes=len(train_split.classnames),
            n_train_images=len(train_split.train),
            steps=log.steps,
            loss_terms_by_epoch=log.epoch_terms,
            feature_s=feature_s,
            train_s=log.train_s,
            eval_s=time.perf_counter() - start,
        )

    def _train_views(self, store: FeatureStore, items: tuple[Item, ...], transform, cfg: Config) -> ViewSource:
        if cfg.data.use_feature_cache:
            key = f"train-{self.backbone.image_size}-crop{cfg.data.crop_scale_min}"
            return CachedViews(store.features(items, transform, key, views=cfg.data.n_views))
        return EncodedViews(self.backbone, items, transform)
