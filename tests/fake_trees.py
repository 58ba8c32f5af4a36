"""Small fake dataset trees in the real layouts (tiny PNGs plus split files), for CPU tests without data.

- `write_split_json_dataset`: a CoOp split-json dataset (any catalogue entry with reader "split_json").
- `write_imagenet`, `write_imagenet_variant`, `write_fgvc_aircraft`: the other three layouts.
Class names contain underscores on purpose (the readers turn them into spaces).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image

from dualprompt.data.catalogue import REAL_DATASETS


def _tiny_png() -> bytes:
    """A 4x4 RGB PNG, encoded once and written as bytes for every fake image (fast)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG_BYTES = _tiny_png()


def write_image(path: Path) -> None:
    """Write the tiny PNG at `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_BYTES)


def fake_classname(label: int) -> str:
    """The raw class name of `label` in fake split files."""
    return f"class_{label:03d}"


def write_split_json_dataset(
    data_root: Path,
    name: str,
    per_class: tuple[int, int, int],
    raw_names: list[str] | None = None,
    shuffle_seed: int | None = 0,
) -> Path:
    """Write `data_root/<folder>/` for split-json dataset `name` with per_class (train, val, test) images.

    Entries are shuffled (unless `shuffle_seed` is None) so that item order differs from label order, as
    the "coop" sampler must group labels in order of first appearance. Returns the split file's path.
    """
    spec = REAL_DATASETS[name]
    folder = data_root / spec.folder
    image_dir = folder / spec.image_dir if spec.image_dir else folder
    names = raw_names or [fake_classname(label) for label in range(spec.n_classes)]
    content: dict[str, list[list[object]]] = {}
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        entries: list[list[object]] = []
        for label, raw in enumerate(names):
            for index in range(count):
                relpath = f"{raw}/{split}_{index:03d}.png"
                write_image(image_dir / relpath)
                entries.append([relpath, label, raw])
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(entries)
        content[split] = entries
    split_path = folder / str(spec.split_file)
    split_path.write_text(json.dumps(content))
    return split_path


def fake_wnids(count: int = 1000) -> list[str]:
    """Sorted fake WordNet ids n00000000, n00000001, ..."""
    return [f"n{index:08d}" for index in range(count)]


def write_classnames(path: Path, wnids: list[str]) -> None:
    """Write an ImageNet-style classnames.txt ("nXXXXXXXX class name" lines), in reverse order on purpose.

    Reverse order checks that labels follow the sorted wnids, not the file's line order.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{wnid} thing_{int(wnid[1:])}" for wnid in reversed(wnids)]
    path.write_text("\n".join(lines) + "\n")


def write_imagenet(data_root: Path, n_classes: int, train_per_class: int, test_per_class: int) -> Path:
    """Write `imagenet/` with classnames.txt and images/{train,val}/<wnid>/*; returns the folder."""
    folder = data_root / REAL_DATASETS["imagenet"].folder
    wnids = fake_wnids(n_classes)
    write_classnames(folder / "classnames.txt", wnids)
    for wnid in wnids:
        for index in range(train_per_class):
            write_image(folder / "images" / "train" / wnid / f"{wnid}_{index:04d}.JPEG")
        for index in range(test_per_class):
            write_image(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}_{index:04d}.JPEG")
    return folder


def write_imagenet_variant(
    data_root: Path, name: str, class_indices: list[int], per_class: int, numeric_folders: bool = False,
) -> Path:
    """Write a test-only variant with a full 1000-line classnames.txt and folders for `class_indices`."""
    spec = REAL_DATASETS[name]
    folder = data_root / spec.folder
    wnids = fake_wnids()
    write_classnames(folder / "classnames.txt", wnids)
    image_dir = folder / spec.image_dir
    for index in class_indices:
        sub = str(index) if numeric_folders else wnids[index]
        for image in range(per_class):
            write_image(image_dir / sub / f"{image:03d}.png")
    (image_dir / "README.txt").write_text("not a class folder\n")
    return folder


def write_fgvc_aircraft(data_root: Path, variants: list[str], per_split: int) -> Path:
    """Write `fgvc_aircraft/` with variants.txt, images_variant_*.txt and images/<id>.jpg."""
    folder = data_root / REAL_DATASETS["fgvc_aircraft"].folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for variant in variants:
            for _ in range(per_split):
                image_id += 1
                write_image(folder / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}")
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return folder
