"""One job = one trained (or zero-shot) prompt on one dataset and few-shot sample, evaluated as its protocol says.

The protocol's stage (`dualprompt.protocols`) decides which classes the job trains on (base, all, or the
pseudo-base half of them) and what it is evaluated on (each evaluation a class set and a split of the job's
own dataset). A final job keeps its prompt (`prompt_path`) and, where the protocol has targets, evaluates
that saved prompt, read back from the file, on each target's test images with all of the target's classes:
the target is never trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from .errors import UsageError
from .evaluate import accuracy, accuracy_se, harmonic_mean, harmonic_mean_se
from .features import CachedViews, EncodedViews, FeatureStore, ViewSource
from .parallel import split_rows
from .prompt_learner import PromptLearner
from .prompts import fill, handcrafted_templates
from .protocols import Evaluation, Stage, get_protocol
from .train import TrainLog, train_prompt

Relabel = Callable[[DatasetSplits], DatasetSplits]


@dataclass
class Evaluated:
    """Accuracies (percent) by metric column, the images behind each, and the objective's standard error."""

    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    standard_errors: dict[str, float] = field(default_factory=dict)
    eval_s: float = 0.0


@dataclass
class JobResult(Evaluated):
    """What one job measured on its own dataset, and on each target (`targets`: dataset -> Evaluated)."""

    n_train_classes: int = 0
    n_train_images: int = 0
    steps: int = 0
    loss_terms_by_epoch: list[dict[str, float]] = field(default_factory=list)
    feature_s: float = 0.0
    train_s: float = 0.0
    prompt_path: str | None = None
    targets: dict[str, Evaluated] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean total loss of the last epoch (NaN for zero-shot, which does not train)."""
        return self.loss_terms_by_epoch[-1]["loss"] if self.loss_terms_by_epoch else float("nan")


def class_sets(cfg: Config, stage: Stage, fold: int, relabel: Relabel | None = None) -> dict[str, DatasetSplits]:
    """The job's few-shot sample split into the class sets its stage names (see protocols.CLASS_SETS).
    `relabel` reorders the sampled classes before the protocol's rules cut them (the same images; used by
    `dualprompt.world.draws` to make other class draws of one world)."""
    data = cfg.data
    root = Path(data.data_root) if data.data_root else default_data_root()
    few_shot = sample_few_shot(load_dataset(data.dataset, root), data.shots, data.seed, mode=data.sampling)
    few_shot = relabel(few_shot) if relabel else few_shot
    sets = {"all": few_shot}
    needed = {stage.pool, stage.train_classes, *(e.classes for e in stage.evaluations)}
    for subset in ("base", "new"):
        if subset in needed:
            sets[subset] = subsample_classes(few_shot, subset)
    if {"pseudobase", "pseudonew"} & needed:
        sets["pseudobase"], sets["pseudonew"] = pseudo_split(sets[stage.pool], fold)
    return sets


def evaluation_items(classes: DatasetSplits, split: str) -> tuple[Item, ...]:
    """The images an evaluation uses. "heldout": held-out classes were never trained on, so their few-shot
    train images validate too."""
    return {"test": classes.test, "val": classes.val, "heldout": classes.train + classes.val}[split]


def eval_image_features(store: FeatureStore, items: tuple[Item, ...] | list[Item]) -> torch.Tensor:
    """Frozen image features [N, E] of `items` under the evaluation transform, cached under one key for
    every caller (jobs and diagnostics), so features one command extracts serve every later one."""
    backbone = store.backbone
    _, eval_tf = build_transforms(backbone.image_size, backbone.image_mean, backbone.image_std)
    return store.features(items, eval_tf, f"eval-{backbone.image_size}", views=None)


class Experiment:
    """Runs jobs on one loaded backbone, reusing it and its feature cache across datasets and seeds.
    `relabel`: see `class_sets` (None: the dataset's own label order, what every command uses)."""

    def __init__(self, backbone: Backbone, relabel: Relabel | None = None) -> None:
        self.backbone = backbone
        self.relabel = relabel

    def handcrafted(self, classnames: tuple[str, ...], template: str, ensemble: bool) -> torch.Tensor:
        """The hand-crafted view [C, E]: per class, the normalised mean over templates of frozen features."""
        templates = handcrafted_templates(template, ensemble)

        def block(start: int, stop: int) -> torch.Tensor:
            names = classnames[start:stop]
            per_template = torch.stack([self.backbone.encode_texts([fill(t, c) for c in names]) for t in templates])
            return torch.nn.functional.normalize(per_template.mean(dim=0), dim=-1)  # [stop - start, E]

        return split_rows(block, len(classnames))  # data-parallel ranks each encode a block of classes

    def run(self, cfg: Config, stage: str = "final", protocol: str = "base2new", fold: int = 0,
            targets: tuple[str, ...] = (), prompt_path: str | None = None) -> JobResult:
        """Train (unless zero-shot) and evaluate one job; save its prompt to `prompt_path` if the stage keeps
        prompts, and evaluate the saved prompt on `targets`."""
        spec = get_protocol(protocol).stage(stage)
        if targets and not spec.evaluates_targets:
            raise UsageError(f"targets: the {stage} stage of {protocol} evaluates no target datasets; use the "
                             "cross_dataset or domain_generalization protocol's final stage.")
        store = FeatureStore(self.backbone, Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
                             enabled=cfg.data.use_feature_cache)
        start = time.perf_counter()  # data: reading (or generating) the dataset and the few-shot sample
        sets = class_sets(cfg, spec, fold, self.relabel)
        train_split = sets[spec.train_classes]
        size, mean, std = self.backbone.image_size, self.backbone.image_mean, self.backbone.image_std
        train_tf, _ = build_transforms(size, mean, std, crop_scale=(cfg.data.crop_scale_min, 1.0))
        template = cfg.prompt.template or get_spec(cfg.data.dataset).template
        learner, log = None, TrainLog()
        if cfg.method.method != "zeroshot":
            learner = PromptLearner(self.backbone, cfg.prompt, torch.Generator().manual_seed(cfg.data.seed))
            views = self._train_views(store, train_split.train, train_tf, cfg)
            feature_s = time.perf_counter() - start
            labels = torch.tensor([item.label for item in train_split.train])
            handcrafted = self.handcrafted(train_split.classnames, template, cfg.prompt.template_ensemble)
            log = train_prompt(learner, views, labels, cfg.data.n_views, train_split.classnames, handcrafted,
                               cfg.method, cfg.optim, cfg.data.seed)
        else:
            feature_s = time.perf_counter() - start

        def classifier(names: tuple[str, ...], dataset_template: str) -> torch.Tensor:
            with torch.no_grad():
                if learner is not None:
                    return split_rows(lambda a, b: learner(names[a:b]), len(names))
                return self.handcrafted(names, cfg.prompt.template or dataset_template, cfg.prompt.template_ensemble)

        result = JobResult(n_train_classes=len(train_split.classnames), n_train_images=len(train_split.train),
                           steps=log.steps, loss_terms_by_epoch=log.epoch_terms, feature_s=feature_s,
                           train_s=log.train_s)
        own = self._evaluate(store, spec, {e: sets[e.classes] for e in spec.evaluations},
                             lambda names: classifier(names, template))
        result.metrics, result.counts, result.standard_errors, result.eval_s = (
            own.metrics, own.counts, own.standard_errors, own.eval_s)
        if learner is not None and spec.saves_prompt and prompt_path:
            from .saved_prompt import load_prompt, save_prompt

            trained_on = {"protocol": protocol, "stage": stage, "dataset": cfg.data.dataset, "seed": cfg.data.seed,
                          "shots": cfg.data.shots, "classnames": list(train_split.classnames)}
            result.prompt_path = save_prompt(learner, cfg, prompt_path, trained_on, result.metrics)
            learner = load_prompt(prompt_path, backbone=self.backbone).learner  # targets see the saved file
        for target in targets:
            result.targets[target] = self._evaluate_target(store, cfg, spec, target, classifier)
        return result

    def _evaluate_target(self, store: FeatureStore, cfg: Config, stage: Stage, target: str, classifier) -> Evaluated:
        """The stage's "all classes, test" evaluation on a target dataset, whose classes are all unseen."""
        root = Path(cfg.data.data_root) if cfg.data.data_root else default_data_root()
        target_splits = load_dataset(target, root)
        template = get_spec(target).template
        evaluations = {e: target_splits for e in stage.evaluations if e.classes == "all" and e.split == "test"}
        return self._evaluate(store, stage, evaluations, lambda names: classifier(names, template))

    def _evaluate(self, store: FeatureStore, stage: Stage, evaluations: dict[Evaluation, DatasetSplits],
                  classify) -> Evaluated:
        """Accuracy of each evaluation (class features computed once per class set), counts and objective SE."""
        start = time.perf_counter()
        out = Evaluated()
        for evaluation, classes in evaluations.items():
            items = evaluation_items(classes, evaluation.split)
            image_features = eval_image_features(store, items)  # [N, E]
            labels = torch.tensor([item.label for item in items])
            out.metrics[evaluation.metric] = accuracy(classify(classes.classnames), image_features, labels)
            out.counts[evaluation.count_column] = len(items)
        if stage.hm_of and all(m in out.metrics for m in stage.hm_of):
            (a, b), (ea, eb) = stage.hm_of, stage.evaluations[:2]
            out.metrics[stage.objective] = harmonic_mean(out.metrics[a], out.metrics[b])
            out.standard_errors[f"{stage.objective}_se"] = harmonic_mean_se(
                out.metrics[a], out.counts[ea.count_column], out.metrics[b], out.counts[eb.count_column])
        elif stage.objective in out.metrics:
            evaluation = next(e for e in stage.evaluations if e.metric == stage.objective)
            out.standard_errors[f"{stage.objective}_se"] = accuracy_se(out.metrics[stage.objective],
                                                                        out.counts[evaluation.count_column])
        out.eval_s = time.perf_counter() - start
        return out

    def _train_views(self, store: FeatureStore, items: tuple[Item, ...], transform, cfg: Config) -> ViewSource:
        if cfg.data.use_feature_cache:
            key = f"train-{self.backbone.image_size}-crop{cfg.data.crop_scale_min}"
            return CachedViews(store.features(items, transform, key, views=cfg.data.n_views))
        return EncodedViews(self.backbone, items, transform)
