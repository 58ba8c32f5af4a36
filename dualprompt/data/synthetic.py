"""The offline world's synthetic datasets: declarations, catalogue entries and deterministic, atomic
materialisation, plus the protocols' offline defaults as data.

Every dataset is a list of (colour, shape) classes rendered in one or more image styles (see
`dualprompt.world.vocab` and `dualprompt.world.render`), written in the CoOp layout: PNG files under
`images/` and a split JSON `{"train"|"val"|"test": [[relpath, label, classname], ...]}` read by the same
reader as the real datasets. Three roles, each a miniature of the field's:

- base-to-new (the field's 11 datasets): five styles that the hand-crafted prompt "a photo of a {}."
  does not describe, each with its own 36 classes in four word-disjoint blocks (`BASE_TO_NEW_DATASETS`);
- cross-dataset source (ImageNet's role): `synthetic_source`, 60 classes in the photo style that the
  hand-crafted prompt does describe; its targets are the five base-to-new datasets, all classes;
- domain generalisation targets (ImageNet-V2/-Sketch/-A/-R): the source's classes in other renderings,
  test only; -A and -R use 12-class subsets as ImageNet-A/-R use 200 of ImageNet's 1,000 classes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualprompt.data.types import DatasetSpec
from dualprompt.world.render import PRETRAINING, Variation, render
from dualprompt.world.vocab import Pair, banded_classes, base_to_new_layout, classname, stable_subset

# Bump whenever the renderer or the counts change: materialised copies of an older version are then
# rebuilt instead of silently reused. The marker also records each dataset's classes, so a change of the
# class layout rebuilds them too (the images of a label are drawn from the same random stream).
GENERATOR_VERSION = 3
MARKER_FILE = "GENERATOR.json"
IMAGE_DIR = "images"
SPLITS: tuple[str, ...] = ("train", "val", "test")
TEMPLATE = "a photo of a {}."  # the hand-crafted prompt of every synthetic dataset (ImageNet's)

# Images per class and split. Train: 16 shots plus spare; val: 8 (the protocol samples min(K, 4) per
# class and seed); test: 100, so each 18-class half of a base-to-new dataset has 1,800 test images
# (binomial standard error under 1.2 points per dataset, under 0.6 for the five-dataset average).
IMAGES_PER_CLASS: dict[str, int] = {"train": 32, "val": 8, "test": 100}
TEST_ONLY_IMAGES_PER_CLASS: dict[str, int] = {"train": 0, "val": 0, "test": 100}
SUBSET_TEST_IMAGES_PER_CLASS: dict[str, int] = {"train": 0, "val": 0, "test": 200}  # 12-class -A and -R


@dataclass(frozen=True)
class SyntheticDataset:
    """One synthetic dataset: its classes in label order, the styles its images are drawn in (one per
    image, uniformly), the image distribution around the style, and the images per class and split."""

    name: str
    classes: tuple[Pair, ...]
    styles: tuple[str, ...]
    images_per_class: dict[str, int]
    variation: Variation = PRETRAINING

    @property
    def classnames(self) -> tuple[str, ...]:
        return tuple(classname(c, s) for c, s in self.classes)

    @property
    def test_only(self) -> bool:
        return self.images_per_class["train"] == 0


# How strongly a base-to-new dataset's style corrupts its images (pretraining's: 1). Milder styles leave
# the hand-crafted prompt less to win on the style alone, so a tuned prompt's base gain is mostly
# class-specific, the part that does not transfer to new classes, as in the field (docs/offline-world.md).
BASE_TO_NEW_SEVERITY = 0.25


def _base_to_new(style: str) -> SyntheticDataset:
    name = f"synthetic_{style}"
    classes = tuple(pair for block in base_to_new_layout(name) for pair in block.classes)
    return SyntheticDataset(name, classes, (style,), IMAGES_PER_CLASS, Variation(severity=BASE_TO_NEW_SEVERITY))


# The base-to-new datasets, in table order: the styles the hand-crafted prompt does not describe.
BASE_TO_NEW_DATASETS: tuple[str, ...] = (
    "synthetic_noisy", "synthetic_blurry", "synthetic_pixelated", "synthetic_sketch", "synthetic_faded",
)
SOURCE_DATASET = "synthetic_source"
SOURCE_CLASSES: tuple[Pair, ...] = banded_classes(SOURCE_DATASET, per_colour=5)  # 60 classes
SUBSET_SIZE = 12  # classes of the -A and -R miniatures (a fifth of the source's, as 200 of 1,000)

DATASETS: dict[str, SyntheticDataset] = {
    **{name: _base_to_new(name.removeprefix("synthetic_")) for name in BASE_TO_NEW_DATASETS},
    SOURCE_DATASET: SyntheticDataset(SOURCE_DATASET, SOURCE_CLASSES, ("photo",), IMAGES_PER_CLASS),
    # ImageNet-V2: a fresh sample of the same classes from a mildly shifted distribution.
    "synthetic_source_v2": SyntheticDataset(
        "synthetic_source_v2", SOURCE_CLASSES, ("photo",), TEST_ONLY_IMAGES_PER_CLASS,
        Variation(scale=(0.15, 0.30), background=(85.0, 210.0), colour_jitter=25.0),
    ),
    # ImageNet-Sketch: the same classes as line drawings.
    "synthetic_source_sketch": SyntheticDataset(
        "synthetic_source_sketch", SOURCE_CLASSES, ("sketch",), TEST_ONLY_IMAGES_PER_CLASS,
    ),
    # ImageNet-A: hard photos (small, noisy, low contrast) of a class subset.
    "synthetic_source_a": SyntheticDataset(
        "synthetic_source_a", stable_subset(SOURCE_CLASSES, SUBSET_SIZE, "synthetic_source_a"), ("photo",),
        SUBSET_TEST_IMAGES_PER_CLASS,
        Variation(scale=(0.12, 0.22), noise=(20.0, 35.0), fade=(0.3, 0.5)),
    ),
    # ImageNet-R: renditions of a class subset, each image in one of three styles.
    "synthetic_source_r": SyntheticDataset(
        "synthetic_source_r", stable_subset(SOURCE_CLASSES, SUBSET_SIZE, "synthetic_source_r"),
        ("pixelated", "faded", "blurry"), SUBSET_TEST_IMAGES_PER_CLASS,
    ),
}

# The domain-generalisation miniatures (ImageNet-V2/-Sketch/-A/-R's roles), in table order.
DOMAIN_GENERALISATION_TARGETS: tuple[str, ...] = (
    "synthetic_source_v2", "synthetic_source_sketch", "synthetic_source_a", "synthetic_source_r",
)

# The offline training budget (tiny CLIP, these datasets), chosen by measuring the baselines only:
# see docs/offline-world.md and `python -m dualprompt.world.check`. Everything else is Config's default.
# No random crop (flips only): on 32-pixel images of one centred object a crop down to 8% of the area
# removes the object the class names, which the field's crop on 224-pixel photographs rarely does.
OFFLINE_TRAINING: dict[str, int | float] = {"epochs": 40, "batch_size": 32, "shots": 16, "crop_scale_min": 1.0}


def _spec(dataset: SyntheticDataset) -> DatasetSpec:
    n = len(dataset.classes)
    counts = tuple(dataset.images_per_class[split] * n for split in SPLITS)
    return DatasetSpec(
        name=dataset.name,
        folder=dataset.name,
        reader="split_json",
        template=TEMPLATE,
        n_classes=n,
        image_dir=IMAGE_DIR,
        split_file=f"split_{dataset.name}.json",
        expected_counts=tuple(count or None for count in counts),
        test_only=dataset.test_only,
        synthetic=True,
    )


SYNTHETIC_SPECS: dict[str, DatasetSpec] = {name: _spec(dataset) for name, dataset in DATASETS.items()}


def _marker(spec: DatasetSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "name": spec.name, "counts": list(spec.expected_counts),
            "classes": list(DATASETS[spec.name].classnames)}


def is_materialised(spec: DatasetSpec, folder: Path) -> bool:
    """True if `folder` holds a complete copy of `spec` made by the current generator version."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(spec) and (folder / str(spec.split_file)).is_file()


def _write_dataset(spec: DatasetSpec, folder: Path) -> None:
    """Render every image of `spec` into `folder` and write its split file, then the marker (last)."""
    dataset = DATASETS[spec.name]
    dataset_seed = zlib.crc32(spec.name.encode())  # stable across processes, unlike hash()
    splits: dict[str, list[list]] = {split: [] for split in SPLITS}
    for label, (colour, shape) in enumerate(dataset.classes):
        class_dir = folder / IMAGE_DIR / f"{colour}_{shape}"
        class_dir.mkdir(parents=True)
        for split_index, split in enumerate(SPLITS):
            # One generator per (dataset, split, class): images do not depend on rendering order.
            rng = np.random.default_rng([dataset_seed, GENERATOR_VERSION, split_index, label])
            for i in range(dataset.images_per_class[split]):
                style = dataset.styles[int(rng.integers(len(dataset.styles)))] if len(dataset.styles) > 1 else (
                    dataset.styles[0])
                relpath = f"{colour}_{shape}/{split}_{i:03d}.png"
                image = render(colour, shape, style, rng, dataset.variation)
                image.save(folder / IMAGE_DIR / relpath, compress_level=1)
                splits[split].append([relpath, label, classname(colour, shape)])
    (folder / str(spec.split_file)).write_text(json.dumps(splits))
    (folder / MARKER_FILE).write_text(json.dumps(_marker(spec)))


def _install(staging: Path, target: Path, spec: DatasetSpec) -> None:
    """Move the finished `staging` folder to `target` atomically; a concurrent winner is kept."""
    for _ in range(5):
        try:
            os.rename(staging, target)  # atomic; fails if `target` exists and is not empty
            return
        except OSError:
            if is_materialised(spec, target):
                return  # another process finished first; the caller discards our copy
        # `target` is stale (older version or foreign content): move it aside, then retry.
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(target, stale)
        except FileNotFoundError:
            continue  # someone else moved it aside already
        shutil.rmtree(stale, ignore_errors=True)
    raise RuntimeError(f"Could not install the synthetic dataset at {target}; remove that folder and retry.")


def materialise(name: str, data_root: Path) -> None:
    """Render synthetic dataset `name` into `data_root/<folder>/` unless a current copy is there.

    Deterministic (same files for the same generator version), idempotent, and safe when several
    processes call it at once: each builds in a temporary folder next to the target and renames it
    into place, so readers never see a half-written dataset. Takes a few seconds.
    """
    if name not in SYNTHETIC_SPECS:
        raise ValueError(f"Unknown synthetic dataset {name!r}; choose one of {sorted(SYNTHETIC_SPECS)}.")
    spec = SYNTHETIC_SPECS[name]
    target = Path(data_root) / spec.folder
    if is_materialised(spec, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.building-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset should read like any other
    try:
        _write_dataset(spec, staging)
        _install(staging, target, spec)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # no-op when the rename moved it into place
