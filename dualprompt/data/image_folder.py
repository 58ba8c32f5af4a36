"""Your own images as a dataset: a folder with one sub-folder of images per class (torchvision's ImageFolder).

This module knows the layout and makes and records the split; `readers.read_image_folder` turns it into
`DatasetSplits` with the checks shared by every reader. Files a user may put next to the class folders:

- `split.json`: CoOp's split format, `{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}`,
  paths relative to the dataset folder, labels = positions of the sorted class folders. Without it a
  deterministic split is made and written there (never over an existing file), so that later runs and
  other machines train and test on exactly the same images even after files are added.
- `classnames.json`: `{"class folder": "natural-language name", ...}` for every class folder.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from dualprompt.data.errors import DataError

FOLDER_PREFIX = "folder:"  # dataset names "folder:<path>" name a folder of class folders
SPLIT_FILE = "split.json"
CLASSNAMES_FILE = "classnames.json"
DOCS = "see 'Your own images' in DATASETS.md"
# torchvision's ImageFolder extensions; other files in a class folder (notes, .heic, ...) are not images here.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# CoOp's fallback proportions (its `read_and_split_data`: 50% train, 20% val, the rest test).
VAL_FRACTION, TEST_FRACTION = 0.2, 0.3
MIN_IMAGES_TO_SPLIT = 3  # one each for train, val and test

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassFolder:
    """One class: its folder name (label = position in sorted order) and its images, relative to the dataset."""

    name: str
    images: tuple[str, ...]


def class_folders(folder: Path) -> list[ClassFolder]:
    """The sorted class folders of `folder` with their images (recursively, sorted, '/'-separated)."""
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise DataError(f"{folder} has no class folders; put each class's images in a sub-folder named after the "
                        f"class, e.g. {folder / 'cat' / '001.jpg'} ({DOCS}).")
    if len(names) == 1:
        raise DataError(f"{folder} has only one class folder ({names[0]}), and a classifier needs at least two; "
                        f"add a sub-folder of images per class ({DOCS}).")
    classes = [ClassFolder(name, tuple(_images_under(folder, name))) for name in names]
    empty = [c.name for c in classes if not c.images]
    if empty:
        raise DataError(f"Class folder {folder / empty[0]} holds no images ({len(empty)} of {len(names)} class "
                        f"folders are empty); add {', '.join(IMAGE_EXTENSIONS)} files or remove the folder.")
    return classes


def _images_under(folder: Path, class_name: str) -> list[str]:
    """Image files below `folder/class_name`, as sorted '/'-separated paths relative to `folder`."""
    found = []
    for directory, subdirs, files in os.walk(folder / class_name, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative = Path(directory).relative_to(folder).as_posix()
        found.extend(f"{relative}/{file}" for file in files
                     if not file.startswith(".") and file.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def deterministic_split(folder: Path, classes: list[ClassFolder]) -> dict[str, list[list[object]]]:
    """Per class, 50/20/30 % train/val/test of a hash-seeded shuffle of its sorted image paths.

    Seeded from the class folder's name only, so the split is the same on any machine and wherever the
    folder lives; entries are (relpath, label, class folder name), each split sorted by label then path.
    """
    short = [c for c in classes if len(c.images) < MIN_IMAGES_TO_SPLIT]
    if short:
        raise DataError(f"Class folder {folder / short[0].name} has {len(short[0].images)} images where a "
                        f"train/val/test split needs at least {MIN_IMAGES_TO_SPLIT}; add images, or write your own "
                        f"{SPLIT_FILE} ({DOCS}).")
    content: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        images = list(cls.images)
        digest = hashlib.sha256(repr(("dualprompt folder split", cls.name)).encode("utf-8")).digest()
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(images)
        n_test = max(1, _round_half_up(TEST_FRACTION * len(images)))
        n_val = max(1, _round_half_up(VAL_FRACTION * len(images)))
        parts = {"test": images[:n_test], "val": images[n_test : n_test + n_val], "train": images[n_test + n_val :]}
        for split, paths in parts.items():
            content[split].extend([path, label, cls.name] for path in sorted(paths))
    return content


def _round_half_up(x: float) -> int:
    # Not round(): Python rounds halves to even, which would make 0.5 * 5 and 0.5 * 7 round differently.
    return int(x + 0.5)


def record_split(path: Path, content: dict[str, list[list[object]]], dataset: str) -> None:
    """Write the split to `path` unless a file is already there; a folder that cannot be written is warned about."""
    try:
        _create_atomically(path, _split_text(content))
    except OSError as error:
        log.warning("Could not record the split of %s in %s (%s); this run uses the deterministic split, which "
                    "stays the same while the folder's files do.", dataset, path, error.strerror or error)


def _split_text(content: dict[str, list[list[object]]]) -> str:
    """The split as JSON with one entry per line, so that a person can read and diff it."""
    blocks = []
    for split, entries in content.items():
        lines = ",\n".join("    " + json.dumps(entry, ensure_ascii=False) for entry in entries)
        blocks.append(f'  "{split}": [\n{lines}\n  ]')
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def _create_atomically(path: Path, text: str) -> None:
    """Create `path` holding `text`, complete or not at all, and never over an existing file."""
    # Not mkstemp: its files are private (0600), and others sharing the data must read the split too.
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            out.write(text)
        try:
            os.link(tmp, path)  # fails if `path` exists, so a user's (or a concurrent run's) file stays
        except FileExistsError:
            pass
        except OSError:
            # No hard links on this file system (FAT, some network shares): rename unless a file appeared.
            if not path.exists():
                os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def natural_names(folder: Path, class_names: list[str]) -> dict[str, str] | None:
    """`classnames.json` as folder name -> natural name, checked to name every class folder and no other."""
    path = folder / CLASSNAMES_FILE
    if not path.is_file():
        return None
    example = f'{{"{class_names[0]}": "natural name of {class_names[0]}", ...}}'
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); write one object such as {example} ({DOCS}).") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise DataError(f"{path} must hold one object mapping each class folder to a non-empty name, such as "
                        f"{example} ({DOCS}).")
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        close = difflib.get_close_matches(unknown[0], class_names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"{path} names {unknown[0]!r}, which is not a class folder of {folder}{hint}; fix or "
                        "remove that key.")
    absent = [name for name in class_names if name not in names]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise DataError(f"{path} has no name for the class folder {absent[0]!r}{more}; add "
                        f'"{absent[0]}": "<its name>", or delete the file to use the folder names.')
    return names
