"""The field's four protocols as data: what each stage's jobs train on and evaluate, and what a search scores.

A protocol is a `Protocol` value (one module each in this package); the experiment, the sweep, the result
rows and the report read it instead of knowing base-to-new:

- a **job** (`Job`) is one trained prompt: a dataset, a few-shot seed and shots, a class fold of the pseudo
  split, and the target datasets its saved prompt is evaluated on without training;
- a **stage** (`Stage`, "search" or "final") says which classes a job trains on, its evaluations on its own
  dataset (each a result column, percent), the column its trials are scored by, whether it keeps the
  trained prompt and whether that prompt is evaluated on targets;
- `Protocol.jobs(stage, scope)` lists a trial's jobs for what the user asked (`Scope`).

Search stages are leak-free by construction: they train on part of the training classes and score on the
other part (pseudo-new) and on validation images, never on a test image or a class the protocol treats as
unseen (base-to-new's new classes, cross-dataset's target datasets, domain generalisation's variants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

CLASS_SETS = ("all", "base", "new", "pseudobase", "pseudonew")
SPLITS = ("test", "val", "heldout")  # heldout: the few-shot train + val images of classes never trained on
# Whose images an evaluation scores, still classified among every class of its set: all of them, or those of
# the first ceil(n/2) labels or of the rest (the protocol's own cut, applied inside the set).
IMAGES_OF = ("all", "first_half", "second_half")
STAGES = ("search", "final")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a job on its own dataset: `metric` is the result column (accuracy, percent)."""

    metric: str
    classes: str  # one of CLASS_SETS; pseudo* are halves of the stage's training classes (see Stage)
    split: str  # one of SPLITS
    images_of: str = "all"  # one of IMAGES_OF

    def __post_init__(self) -> None:
        for name, allowed in (("classes", CLASS_SETS), ("split", SPLITS), ("images_of", IMAGES_OF)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Evaluation {self.metric!r}: {name} {getattr(self, name)!r} is not one of "
                                 f"{', '.join(allowed)}.")

    @property
    def count_column(self) -> str:
        """The column holding how many images this accuracy was measured on: acc_val_x -> n_val_x."""
        return "n_" + self.metric.removeprefix("acc_")


@dataclass(frozen=True)
class Stage:
    """What every job of one stage does.

    `pool` is the class set the stage works inside ("base" or "all"); `train_classes` is `pool` itself or
    "pseudobase", one half of it. `objective` is the column a trial's jobs are averaged on: an evaluation's
    metric, or hm_* for the harmonic mean of the first two evaluations.
    """

    pool: str
    train_classes: str
    evaluations: tuple[Evaluation, ...]
    objective: str
    saves_prompt: bool = False
    evaluates_targets: bool = False

    @property
    def hm_of(self) -> tuple[str, str] | None:
        """The two metrics whose harmonic mean is the objective, or None when it is one metric."""
        if not self.objective.startswith("hm_"):
            return None
        return self.evaluations[0].metric, self.evaluations[1].metric

    @property
    def metric_columns(self) -> tuple[str, ...]:
        return tuple(e.metric for e in self.evaluations) + ((self.objective,) if self.hm_of else ())


@dataclass(frozen=True)
class Job:
    """One trained prompt: a dataset and few-shot sample, a pseudo-split fold, targets evaluated untouched."""

    dataset: str
    seed: int
    shots: int
    fold: int = 0
    targets: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int, int, int]:
        """What identifies the job inside a trial (its own row's dataset, seed, shots, fold)."""
        return self.dataset, self.seed, self.shots, self.fold


@dataclass(frozen=True)
class Scope:
    """What a sweep covers: training datasets, targets, seeds, shots and pseudo-split folds."""

    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    search_seeds: tuple[int, ...]
    shots: tuple[int, ...]  # final-stage shots (few-shot: the curve; else one value)
    search_shots: tuple[int, ...]
    folds: int = 1
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Protocol:
    """A protocol of the field. `epochs_for(epochs, shots)` is the training budget of a job with `shots`
    (few-shot scales it as CoOp does); `uses_targets` says whether the protocol has target datasets."""

    name: str
    title: str
    search: Stage
    final: Stage
    uses_targets: bool = False
    sweeps_shots: bool = False  # few-shot: the final stage runs every value of Scope.shots
    epochs_for: Callable[[int, int], int] = field(default=lambda epochs, shots: epochs)
    default_real_datasets: tuple[str, ...] = ()
    default_real_targets: tuple[str, ...] = ()
    default_offline_datasets: tuple[str, ...] = ()
    default_offline_targets: tuple[str, ...] = ()

    def stage(self, name: str) -> Stage:
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not one of {', '.join(STAGES)}.")
        return self.search if name == "search" else self.final

    def jobs(self, stage: str, scope: Scope) -> tuple[Job, ...]:
        """The jobs of one trial of `stage`, in the order they run."""
        if stage == "search":
            return tuple(Job(d, s, k, fold) for d in scope.datasets for k in scope.search_shots
                         for s in scope.search_seeds for fold in range(scope.folds))
        targets = scope.targets if self.final.evaluates_targets else ()
        return tuple(Job(d, s, k, 0, targets) for d in scope.datasets for k in scope.shots for s in scope.seeds)


# The field's eleven base-to-new / few-shot datasets (cross-dataset: ImageNet is the source, the rest targets);
# their miniatures in the offline world are declared in dualprompt.data.synthetic.
BENCHMARK_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                      "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


def pseudo_split_search(pool: str) -> Stage:
    """The leak-free search inside `pool`: train on its pseudo-base half, score the HM of that half's validation
    accuracy and the held-out pseudo-new half's accuracy (its few-shot train and val images)."""
    return Stage(
        pool=pool,
        train_classes="pseudobase",
        evaluations=(Evaluation("acc_val_pseudobase", "pseudobase", "val"),
                     Evaluation("acc_val_pseudonew", "pseudonew", "heldout")),
        objective="hm_val",
    )


# The search of the two source-only protocols: the pseudo split of the source's own classes.
SOURCE_SEARCH = pseudo_split_search("all")

# Their final stage: the source's own test set, then the saved prompt on each target untouched.
TRANSFER_FINAL = Stage(
    pool="all",
    train_classes="all",
    evaluations=(Evaluation("acc_test", "all", "test"),),
    objective="acc_test",
    saves_prompt=True,
    evaluates_targets=True,
)


def all_protocols() -> tuple[Protocol, ...]:
    """Every protocol, in the order the papers print them."""
    from . import base2new, cross_dataset, domain_generalization, few_shot

    return tuple(m.PROTOCOL for m in (base2new, cross_dataset, domain_generalization, few_shot))


def get_protocol(name: str) -> Protocol:
    """The protocol called `name` (base2new, cross_dataset, domain_generalization, few_shot)."""
    protocols = {p.name: p for p in all_protocols()}
    if name not in protocols:
        raise ValueError(f"protocol {name!r} is not one of {', '.join(protocols)}.")
    return protocols[name]
