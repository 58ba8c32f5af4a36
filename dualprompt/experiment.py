"""One job = one trained (or zero-shot) prompt on one dataset and few-shot sample, evaluated as its protocol says.

The protocol's stage (`dualprompt.protocols`) decides which classes the job trains on (base, all, or the
pseudo-base half of them) and what it is evaluated on (each evaluation a class set and a split of the job's
own dataset). A final job keeps its prompt (`prompt_path`) and, where the protocol has targets, evaluates
that saved prompt, read back from the file, on each target's test images with all of the target's classes:
the target is never trained on.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .train import TrainLog, TrainTask, steps_per_epoch, train_prompts

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


def evaluation_items(classes: DatasetSplits, evaluation: Evaluation) -> tuple[Item, ...]:
    """The images an evaluation scores: its split's (`split_items`), all or a half of them (`images_of_mask`)."""
    items = split_items(classes, evaluation.split)
    keep = images_of_mask(_labels(items), len(classes.classnames), evaluation.images_of)
    return tuple(item for item, kept in zip(items, keep.tolist(), strict=True) if kept)


def split_items(classes: DatasetSplits, split: str) -> tuple[Item, ...]:
    """The images of a class set's split. "heldout": held-out classes were never trained on, so their few-shot
    train images validate too."""
    return {"test": classes.test, "val": classes.val, "heldout": classes.train + classes.val}[split]


def images_of_mask(labels: torch.Tensor, n_classes: int, images_of: str) -> torch.Tensor:
    """Which images, by their labels [N], an evaluation's `images_of` keeps [N]: all, or those of the first
    ceil(n/2) labels of its class set, or of the rest (the cut `subsample_classes` makes between base and new)."""
    if images_of == "all":
        return torch.ones_like(labels, dtype=torch.bool)
    first = labels < math.ceil(n_classes / 2)
    return first if images_of == "first_half" else ~first


def _labels(items: tuple[Item, ...]) -> torch.Tensor:
    return torch.tensor([item.label for item in items], dtype=torch.long)  # [N]


def eval_image_features(store: FeatureStore, items: tuple[Item, ...] | list[Item]) -> torch.Tensor:
    """Frozen image features [N, E] of `items` under the evaluation transform, cached under one key for
    every caller (jobs and diagnostics), so features one command extracts serve every later one."""
    backbone = store.backbone
    _, eval_tf = build_transforms(backbone.image_size, backbone.image_mean, backbone.image_std)
    return store.features(items, eval_tf, f"eval-{backbone.image_size}", views=None)


@dataclass(frozen=True)
class JobRequest:
    """What `Experiment.run` is asked: a job's configuration, stage, protocol, pseudo-split fold, targets and
    where to save its prompt."""

    cfg: Config
    stage: str = "final"
    protocol: str = "base2new"
    fold: int = 0
    targets: tuple[str, ...] = ()
    prompt_path: str | None = None


@dataclass
class PreparedJob:
    """A job between `Experiment.prepare` and `Experiment.finish`: its class sets and training task."""

    request: JobRequest
    spec: Stage
    store: FeatureStore
    sets: dict[str, DatasetSplits]
    template: str
    task: TrainTask | None  # None: zero-shot, nothing to train
    feature_s: float


def joint_groups(jobs: list[PreparedJob | Exception]) -> list[list[int]]:
    """Indices of the trainable jobs that can train in lockstep, grouped: the same method and optimiser
    settings, context length and steps per epoch (a trial's jobs of one seed usually are one group)."""
    groups: dict[tuple, list[int]] = {}
    for index, job in enumerate(jobs):
        if isinstance(job, PreparedJob) and job.task is not None:
            cfg = job.request.cfg
            key = (cfg.method, cfg.optim, cfg.prompt.n_ctx, steps_per_epoch(job.task, cfg.optim))
            groups.setdefault(key, []).append(index)
    return list(groups.values())


def _train_alone(job: PreparedJob) -> TrainLog:
    """Train one prepared job by itself (an empty log for zero-shot)."""
    cfg = job.request.cfg
    return train_prompts([job.task], cfg.method, cfg.optim)[0] if job.task else TrainLog()


def _attempt(function: Callable, *args: Any) -> Any:
    """function(*args), or the exception it raised (its traceback printed: the row keeps one line)."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - a failed job is a row, never a gap
        traceback.print_exc()
        return exc


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
        job = self.prepare(JobRequest(cfg, stage, protocol, fold, targets, prompt_path))
        return self.finish(job, _train_alone(job))

    def run_jointly(self, requests: list[JobRequest]) -> list[JobResult | Exception]:
        """Each job's result, or the exception that stopped it; jobs that can step together train in one text
        pass per step (`joint_groups`, `train_prompts`).

        Each job's rows equal its `run` up to float round-off. A group whose joint training fails is trained
        again one job at a time from a fresh start, so one failing job fails alone.
        """
        jobs: list[PreparedJob | Exception] = [_attempt(self.prepare, request) for request in requests]
        logs: dict[int, TrainLog | Exception] = {}
        for indices in joint_groups(jobs):
            first = jobs[indices[0]].request.cfg
            try:
                trained = train_prompts([jobs[i].task for i in indices], first.method, first.optim)
                logs.update(zip(indices, trained, strict=True))
            except Exception:  # noqa: BLE001 - retried alone below, where each job's own error is kept
                traceback.print_exc()
                for i in indices:  # each from a fresh context: the failed pass moved them
                    jobs[i] = _attempt(self.prepare, requests[i])
                    if isinstance(jobs[i], PreparedJob):
                        logs[i] = _attempt(_train_alone, jobs[i])
        results: list[JobResult | Exception] = []
        for i, job in enumerate(jobs):
            log = logs.get(i, TrainLog())
            failed = job if isinstance(job, Exception) else log if isinstance(log, Exception) else None
            results.append(failed or _attempt(self.finish, job, log))
        return results

    def prepare(self, request: JobRequest) -> PreparedJob:
        """Everything a job needs before training: its class sets, its learner and training task (None for
        zero-shot) with their image features."""
        cfg, spec = request.cfg, get_protocol(request.protocol).stage(request.stage)
        if request.targets and not spec.evaluates_targets:
            raise UsageError(f"targets: the {request.stage} stage of {request.protocol} evaluates no target "
                             "datasets; use the cross_dataset or domain_generalization protocol's final stage.")
        store = FeatureStore(self.backbone, Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
                             enabled=cfg.data.use_feature_cache)
        start = time.perf_counter()  # data: reading (or generating) the dataset and the few-shot sample
        sets = class_sets(cfg, spec, request.fold, self.relabel)
        train_split = sets[spec.train_classes]
        template = cfg.prompt.template or get_spec(cfg.data.dataset).template
        task = None
        if cfg.method.method != "zeroshot":
            size, mean, std = self.backbone.image_size, self.backbone.image_mean, self.backbone.image_std
            train_tf, _ = build_transforms(size, mean, std, crop_scale=(cfg.data.crop_scale_min, 1.0))
            learner = PromptLearner(self.backbone, cfg.prompt, torch.Generator().manual_seed(cfg.data.seed))
            views = self._train_views(store, train_split.train, train_tf, cfg)
            labels = torch.tensor([item.label for item in train_split.train])
            handcrafted = self.handcrafted(train_split.classnames, template, cfg.prompt.template_ensemble)
            task = TrainTask(learner, views, labels, cfg.data.n_views, train_split.classnames, handcrafted,
                             cfg.data.seed)
        return PreparedJob(request, spec, store, sets, template, task, feature_s=time.perf_counter() - start)

    def finish(self, job: PreparedJob, log: TrainLog) -> JobResult:
        """Evaluate a (trained) job, save its prompt if the stage keeps prompts, evaluate it on the targets."""
        cfg, spec, request = job.request.cfg, job.spec, job.request
        learner = job.task.learner if job.task else None
        train_split = job.sets[spec.train_classes]

        def classifier(names: tuple[str, ...], dataset_template: str) -> torch.Tensor:
            with torch.no_grad():
                if learner is not None:
                    return split_rows(lambda a, b: learner(names[a:b]), len(names))
                return self.handcrafted(names, cfg.prompt.template or dataset_template, cfg.prompt.template_ensemble)

        result = JobResult(n_train_classes=len(train_split.classnames), n_train_images=len(train_split.train),
                           steps=log.steps, loss_terms_by_epoch=log.epoch_terms, feature_s=job.feature_s,
                           train_s=log.train_s)
        own = self._evaluate(job.store, spec, {e: job.sets[e.classes] for e in spec.evaluations},
                             lambda names: classifier(names, job.template))
        result.metrics, result.counts, result.standard_errors, result.eval_s = (
            own.metrics, own.counts, own.standard_errors, own.eval_s)
        if learner is not None and spec.saves_prompt and request.prompt_path:
            from .saved_prompt import load_prompt, save_prompt

            trained_on = {"protocol": request.protocol, "stage": request.stage, "dataset": cfg.data.dataset,
                          "seed": cfg.data.seed, "shots": cfg.data.shots, "classnames": list(train_split.classnames)}
            result.prompt_path = save_prompt(learner, cfg, request.prompt_path, trained_on, result.metrics)
            learner = load_prompt(request.prompt_path, backbone=self.backbone).learner  # targets see the saved file
        for target in request.targets:
            result.targets[target] = self._evaluate_target(job.store, cfg, spec, target, classifier)
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
        """Accuracy of each evaluation (class features computed once per class set, image features once per
        class set and split, whose halves are masks), counts and objective SE."""
        start = time.perf_counter()
        out = Evaluated()
        class_features: dict[tuple[str, ...], torch.Tensor] = {}  # class names -> [C, E]
        images: dict[tuple[tuple[str, ...], str], tuple[torch.Tensor | None, torch.Tensor]] = {}
        for evaluation, classes in evaluations.items():
            split = (classes.classnames, evaluation.split)
            if split not in images:
                items = split_items(classes, evaluation.split)
                images[split] = (eval_image_features(store, items) if items else None, _labels(items))  # [N, E], [N]
            image_features, labels = images[split]
            keep = images_of_mask(labels, len(classes.classnames), evaluation.images_of)
            out.counts[evaluation.count_column] = int(keep.sum())
            if not keep.any():  # no images, or a half of a one-class set
                out.metrics[evaluation.metric] = math.nan
                continue
            if classes.classnames not in class_features:
                class_features[classes.classnames] = classify(classes.classnames)
            out.metrics[evaluation.metric] = accuracy(class_features[classes.classnames],
                                                      image_features[keep.to(image_features.device)], labels[keep])
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
