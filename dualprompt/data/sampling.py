"""The benchmark's sampling rules: K-shot train/val by seed, base/new classes, pseudo-base/pseudo-new.

- `sample_few_shot`: K shots per class from train, min(K, 4) from val; two modes ("stable", "coop").
- `subsample_classes`: base = the first ceil(n/2) labels, new = the rest, each relabelled 0..len-1.
- `pseudo_split`: the same rule inside the base classes (and its swap), for leak-free hyperparameter search.

Nothing here touches Python's, numpy's or torch's global random state.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from dualprompt.data.errors import DataError
from dualprompt.data.types import DatasetSplits, Item

SAMPLING_MODES = ("stable", "coop")
CLASS_SUBSETS = ("all", "base", "new")
MAX_VAL_SHOTS = 4  # CoOp: the few-shot val set has min(K, 4) images per class
PSEUDO_FOLDS = 2  # the pseudo split's two halves: each can be the held-out one


def sample_few_shot(
    splits: DatasetSplits, shots: int, seed: int, mode: str = "stable", allow_fewer: bool = False,
) -> DatasetSplits:
    """Keep `shots` train images and min(shots, 4) val images per class; test is untouched.

    Sample on all classes, then call `subsample_classes` (CoOp's order): the base-to-new training set
    is the base-class part of the ordinary K-shot set.

    Modes:
        "stable": the sample depends only on (dataset name, seed, class name, the class's image paths):
            each class's paths are sorted, then shuffled by a `random.Random` seeded from a SHA-256 of
            (dataset name, seed, split, class name), and the first K are kept. So it is the same on any
            machine, whatever ran before, and whatever the file-system order; the K-shot sample is the
            first K of the 2K-shot sample (nested few-shot curves); and it does not depend on other
            classes, so sampling before or after `subsample_classes` gives the same images.
        "coop": CoOp/Dassl's `generate_fewshot_dataset`, which reproduces the published few-shot
            samples given the same split JSON in the same item order. Dassl calls `random.seed(seed)`
            (its `set_random_seed`; the numpy and torch seeds do not affect `random.sample`), groups
            items by label in order of first appearance, calls `random.sample(items, K)` per class,
            and then does the same on val with min(K, 4). A private `random.Random(seed)` gives the
            identical stream without touching the global state. ImageNet cannot be matched: CoOp
            lists its images in os.listdir order (machine-dependent), where our reader sorts them.

    Datasets without a val split (ImageNet, as in CoOp whose val is the test set) get their few-shot
    val from train images not chosen as train shots, so that model selection never sees test images.

    Args:
        splits: a full dataset from `load_dataset`.
        shots: K >= 1.
        seed: the run's seed (the benchmark uses 1, 2, 3).
        mode: "stable" or "coop".
        allow_fewer: a class with fewer than K images raises DataError by default, since silently
            training on fewer shots changes the experiment; True takes all of that class's images
            (what Dassl does without telling).

    Raises:
        DataError: bad shots or mode, a test-only dataset, or a class short of images.
    """
    _check_arguments(splits, shots, mode)
    val_shots = min(shots, MAX_VAL_SHOTS)
    if not allow_fewer:
        _check_enough_images(splits.train, shots, "train", splits.classnames)
        if splits.val:
            _check_enough_images(splits.val, val_shots, "val", splits.classnames)
        else:
            _check_enough_images(splits.train, shots + val_shots, "train (shots plus val shots)",
                                 splits.classnames)
    if mode == "stable":
        train, val = _sample_stable(splits, shots, val_shots, seed)
    else:
        train, val = _sample_coop(splits, shots, val_shots, seed)
    return replace(splits, train=train, val=val)


def _check_arguments(splits: DatasetSplits, shots: int, mode: str) -> None:
    """Reject a bad K, an unknown mode and test-only datasets with one sentence each."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DataError(f"shots must be a positive integer, got {shots!r}; the benchmark uses 16.")
    if mode not in SAMPLING_MODES:
        raise DataError(f"Unknown few-shot sampling mode {mode!r}; use 'stable' or 'coop'.")
    if not splits.train:
        raise DataError(f"{splits.name} has no train images (it is a test-only dataset), so it cannot be "
                        "sampled few-shot; train on its source dataset (e.g. imagenet) instead.")


def _check_enough_images(items: Sequence[Item], needed: int, split: str, classnames: Sequence[str]) -> None:
    """Raise DataError naming the first class of `items` with fewer than `needed` images."""
    counts = [0] * len(classnames)
    for item in items:
        counts[item.label] += 1
    short = [label for label, count in enumerate(counts) if count < needed]
    if short:
        first = short[0]
        raise DataError(f"Class {classnames[first]!r} has only {counts[first]} {split} images where {needed} "
                        f"are needed ({len(short)} classes are short); lower the number of shots or pass "
                        "allow_fewer=True to take all images of short classes.")


def _sample_stable(
    splits: DatasetSplits, shots: int, val_shots: int, seed: int,
) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """The "stable" mode: per class, a hash-seeded shuffle of the path-sorted items, first K kept."""
    train_by_label = _group_by_label(splits.train)
    val_by_label = _group_by_label(splits.val)
    train: list[Item] = []
    val: list[Item] = []
    for label, classname in enumerate(splits.classnames):
        chosen = _stable_pick(train_by_label[label], shots, (splits.name, seed, "train", classname))
        train.extend(chosen)
        if splits.val:
            val_candidates = val_by_label[label]
        else:
            taken = set(chosen)
            val_candidates = [item for item in train_by_label[label] if item not in taken]
        val.extend(_stable_pick(val_candidates, val_shots, (splits.name, seed, "val", classname)))
    return tuple(train), tuple(val)


def _stable_pick(items: Sequence[Item], k: int, key: tuple[object, ...]) -> list[Item]:
    """The first k of `items` after sorting by path and shuffling with a generator seeded from `key`."""
    ordered = sorted(items, key=lambda item: item.path)
    # SHA-256, not hash(): Python salts str hashes per process, which would change samples between runs.
    digest = hashlib.sha256(repr(key).encode("utf-8")).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(ordered)
    return ordered[:k]


def _sample_coop(
    splits: DatasetSplits, shots: int, val_shots: int, seed: int,
) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """The "coop" mode: Dassl's sampling, train first then val, from one generator seeded with `seed`."""
    rng = random.Random(seed)
    train = _dassl_few_shot(splits.train, shots, rng)
    if splits.val:
        val = _dassl_few_shot(splits.val, val_shots, rng)
    else:
        taken = set(train)
        val = _dassl_few_shot([item for item in splits.train if item not in taken], val_shots, rng)
    return tuple(train), tuple(val)


def _dassl_few_shot(items: Sequence[Item], k: int, rng: random.Random) -> list[Item]:
    """Dassl's `generate_fewshot_dataset` for one list: labels in order of first appearance."""
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    sampled: list[Item] = []
    for class_items in by_label.values():
        sampled.extend(rng.sample(class_items, k) if len(class_items) >= k else class_items)
    return sampled


def _group_by_label(items: Sequence[Item]) -> dict[int, list[Item]]:
    """Items grouped by label (missing labels give an empty list)."""
    groups: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return groups


def subsample_classes(splits: DatasetSplits, subset: str) -> DatasetSplits:
    """Keep the "all", "base" (first ceil(n/2) labels) or "new" (the rest) classes, relabelled 0..len-1.

    The same classes are kept in train, val and test, and the class names are reordered to match,
    so a classifier built from `classnames` sees only that subset (two closed-set problems, as CoOp).
    """
    if subset not in CLASS_SUBSETS:
        raise DataError(f"Unknown class subset {subset!r}; use 'all', 'base' or 'new'.")
    n_classes = len(splits.classnames)
    n_base = math.ceil(n_classes / 2)
    if subset == "all":
        return splits
    labels = range(n_base) if subset == "base" else range(n_base, n_classes)
    return restrict_to_labels(splits, labels)


def pseudo_split(base_splits: DatasetSplits, fold: int = 0) -> tuple[DatasetSplits, DatasetSplits]:
    """Split the base classes into (pseudo-base, pseudo-new) by the same ceil(n/2) rule, for tuning.

    Fold 0 is the rule itself: the first ceil(n/2) labels are pseudo-base, the rest pseudo-new. Fold 1
    swaps the two halves, so over both folds every base class is held out once (in the offline world the
    halves are word-disjoint blocks, like base and new). Each part keeps its own train and val items,
    relabelled 0..len-1; test is emptied on purpose, so hyperparameter search can score pseudo-base and
    pseudo-new on val only and never sees a test image or a true new class.
    """
    n_classes = len(base_splits.classnames)
    if n_classes < 2:
        raise DataError(f"{base_splits.name} has {n_classes} base class, too few to hold out pseudo-new "
                        "classes; tune on a dataset with at least 4 classes.")
    if fold not in range(PSEUDO_FOLDS):
        raise DataError(f"Pseudo-split fold {fold} does not exist; the pseudo split has folds 0..{PSEUDO_FOLDS - 1}.")
    n_first = math.ceil(n_classes / 2)
    halves = [range(n_first), range(n_first, n_classes)]
    trained, held_out = halves if fold == 0 else halves[::-1]
    pseudo_base = restrict_to_labels(base_splits, trained)
    pseudo_new = restrict_to_labels(base_splits, held_out)
    return replace(pseudo_base, test=()), replace(pseudo_new, test=())


def restrict_to_labels(splits: DatasetSplits, labels: Sequence[int]) -> DatasetSplits:
    """Keep the classes `labels` (in that order) in every split, relabelled 0..len(labels)-1."""
    new_label = {old: new for new, old in enumerate(labels)}

    def keep(items: Sequence[Item]) -> tuple[Item, ...]:
        return tuple(
            Item(item.path, new_label[item.label], item.classname) for item in items if item.label in new_label
        )

    return DatasetSplits(
        name=splits.name,
        classnames=tuple(splits.classnames[label] for label in labels),
        train=keep(splits.train),
        val=keep(splits.val),
        test=keep(splits.test),
    )
