"""The offline world's synthetic datasets: catalogue entries and deterministic, atomic materialisation.

Each dataset renders the world's 20 benchmark classes (10 base, then 10 new held out of pretraining;
see `dualprompt.world.vocab`) in one image style that the hand-crafted prompt "a photo of a {}." does
not describe, and writes them in the CoOp layout: PNG files under `images/` and a split JSON
`{"train"|"val"|"test": [[relpath, label, classname], ...]}`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np

from dualprompt.data.types import DatasetSpec
from dualprompt.world.render import render
from dualprompt.world.vocab import BASE_CLASSES, NEW_CLASSES, classname

# Bump whenever the renderer, the class layout or the counts change: materialised copies of an older
# version are then rebuilt instead of silently reused.
GENERATOR_VERSION = 1
MARKER_FILE = "GENERATOR.json"
IMAGE_DIR = "images"
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Images per class and split: train holds 16 shots plus spare, val >= 4 shots, test enough that a
# 10-class half has 1,000 test images (binomial standard error under 1.6 points).
IMAGES_PER_CLASS: dict[str, int] = {"train": 32, "val": 8, "test": 100}
CLASSES: tuple[tuple[str, str], ...] = BASE_CLASSES + NEW_CLASSES
CLASSNAMES: tuple[str, ...] = tuple(classname(c, s) for c, s in CLASSES)

# Dataset name -> image style of its images (two rendering domains).
SYNTHETIC_STYLES: dict[str, str] = {"synthetic_blurry": "blurry", "synthetic_sketch": "sketch"}


def _spec(name: str) -> DatasetSpec:
    n = len(CLASSES)
    return DatasetSpec(
        name=name,
        folder=name,
        reader="split_json",
        template="a photo of a {}.",
        n_classes=n,
        image_dir=IMAGE_DIR,
        split_file=f"split_{name}.json",
        expected_counts=tuple(IMAGES_PER_CLASS[split] * n for split in SPLITS),
        synthetic=True,
    )


SYNTHETIC_SPECS: dict[str, DatasetSpec] = {name: _spec(name) for name in SYNTHETIC_STYLES}


def _marker(spec: DatasetSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "name": spec.name, "counts": list(spec.expected_counts)}


def is_materialised(spec: DatasetSpec, folder: Path) -> bool:
    """True if `folder` holds a complete copy of `spec` made by the current generator version."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(spec) and (folder / str(spec.split_file)).is_file()


def _write_dataset(spec: DatasetSpec, folder: Path) -> None:
    """Render every image of `spec` into `folder` and write its split file, then the marker (last)."""
    style = SYNTHETIC_STYLES[spec.name]
    dataset_seed = zlib.crc32(spec.name.encode())  # stable across processes, unlike hash()
    splits: dict[str, list[list]] = {split: [] for split in SPLITS}
    for label, (colour, shape) in enumerate(CLASSES):
        class_dir = folder / IMAGE_DIR / f"{colour}_{shape}"
        class_dir.mkdir(parents=True)
        for split_index, split in enumerate(SPLITS):
            # One generator per (dataset, split, class): images do not depend on rendering order.
            rng = np.random.default_rng([dataset_seed, GENERATOR_VERSION, split_index, label])
            for i in range(IMAGES_PER_CLASS[split]):
                relpath = f"{colour}_{shape}/{split}_{i:03d}.png"
                render(colour, shape, style, rng).save(folder / IMAGE_DIR / relpath, compress_level=1)
                splits[split].append([relpath, label, CLASSNAMES[label]])
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
    into place, so readers never see a half-written dataset. Takes about a second.
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
