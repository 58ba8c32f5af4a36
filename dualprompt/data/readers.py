"""Dataset readers: turn a dataset folder laid out as in CoOp into `DatasetSplits`, checking it on the way.

Responsibilities, one per section below:
- `load_dataset`, the public entry point (data root and dataset folder checks, synthetic datasets);
- the five readers, dispatched by `spec.reader` through `READERS` (no registry, no side-effect imports):
  the CoOp layouts, and `image_folder` for a user's own class folders (`folder:<path>`);
- the shared checks: required files, class-name clean-up, images listed but missing on disk.

Every bad input raises `DataError` (or `MissingDataError` for something missing on disk) with one sentence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from dualprompt.data import image_folder
from dualprompt.data.catalogue import get_spec
from dualprompt.data.errors import DataError, MissingDataError
from dualprompt.data.images import remember_dataset_folder
from dualprompt.data.types import DatasetSpec, DatasetSplits, Item

SPLIT_NAMES = ("train", "val", "test")
SEE_DOCS = "see DATASETS.md for the expected layout"
REDOWNLOAD = f"download the split file again ({SEE_DOCS})"
IMAGENET_N_CLASSES = 1000
FGVC_SPLIT_FILES = {
    "train": "images_variant_train.txt",
    "val": "images_variant_val.txt",
    "test": "images_variant_test.txt",
}

# A reader takes the catalogue entry and the dataset's folder (already checked to exist).
Reader = Callable[[DatasetSpec, Path], DatasetSplits]


def load_dataset(name: str, data_root: Path) -> DatasetSplits:
    """Read dataset `name` from `data_root/<spec.folder>/` with all of its classes and splits.

    Args:
        name: a catalogue key (`dualprompt.data.catalogue.CATALOGUE`), e.g. "dtd".
        data_root: the folder holding one sub-folder per dataset (DATASETS.md).

    Returns:
        The full dataset: absolute image paths, labels 0..n-1, class names ready for prompts
        (class-name fixes applied, underscores turned into spaces as every CoOp trainer does).

    Raises:
        DataError: unknown name, malformed split file; MissingDataError: data root, dataset folder,
        split file or listed images missing.
    """
    spec = get_spec(name)
    root = Path(data_root).expanduser().absolute()
    if spec.synthetic:
        # Imported here so that reading real datasets never pays for (or depends on) the generator.
        from dualprompt.data import synthetic

        synthetic.materialise(name, root)
    elif not root.is_dir() and not Path(spec.folder).is_absolute():
        raise MissingDataError(
            f"Data root {root} does not exist; create it and lay the datasets out in it as DATASETS.md "
            "describes, or pass the right --data-root (or set DUALPROMPT_DATA_ROOT).",
            missing=root.name + "/", expected_at=str(root),
        )
    folder = root / spec.folder  # an absolute spec.folder (a folder: dataset) replaces the root
    if not folder.is_dir():
        raise _missing_dataset_folder(spec, folder)
    if spec.reader not in READERS:
        raise DataError(f"Catalogue entry {name} names reader {spec.reader!r}, which does not exist; "
                        f"use one of {', '.join(READERS)}.")
    splits = READERS[spec.reader](spec, folder)
    remember_dataset_folder(str(folder), name)  # so that an unreadable image's error names this dataset
    return splits


def dataset_folder(name: str, data_root: Path) -> Path:
    """The folder of dataset `name` under `data_root` (or its own absolute folder), without reading it."""
    return Path(data_root).expanduser().absolute() / get_spec(name).folder


def _missing_dataset_folder(spec: DatasetSpec, folder: Path) -> MissingDataError:
    """The error for a dataset folder that is not there, worded for catalogue and for folder: datasets."""
    if spec.reader == "image_folder":
        where = "" if Path(spec.folder).is_absolute() else f" (a relative path starts at the data root {folder.parent})"
        message = (f"Folder {folder} of dataset {spec.name} does not exist; name a folder holding one sub-folder "
                   f"of images per class{where}.")
    else:
        message = (f"Dataset folder of {spec.name} is missing: expected {folder}; download and lay it out there "
                   f"({SEE_DOCS}).")
    return MissingDataError(message, missing=folder.name + "/", expected_at=str(folder))


# ---------------------------------------------------------------------------------------------------
# split_json: CoOp's split_zhou_*.json files
# ---------------------------------------------------------------------------------------------------


def read_split_json(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """Read a `{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}` split file.

    Paths in the file are relative to `folder/spec.image_dir`. Item order is the file's order, which
    the "coop" few-shot mode depends on.
    """
    split_path = require_file(folder / str(spec.split_file), spec)
    image_dir = require_folder(folder / spec.image_dir, spec) if spec.image_dir else folder
    content = _load_json(split_path)
    entries = {split: _validated_entries(content, split, spec, split_path.name) for split in SPLIT_NAMES}
    raw_names = _names_by_label(entries, spec, split_path.name)
    classnames = tuple(clean_classname(raw, spec) for raw in raw_names)
    items = {
        split: tuple(
            Item(os.path.join(image_dir, relpath), label, classnames[label])
            for relpath, label, _ in entries[split]
        )
        for split in SPLIT_NAMES
    }
    all_items = items["train"] + items["val"] + items["test"]
    check_images_exist([item.path for item in all_items], image_dir, split_path.name)
    return DatasetSplits(spec.name, classnames, items["train"], items["val"], items["test"])


def _load_json(path: Path, fix: str = REDOWNLOAD) -> dict:
    """Parse a split file, turning a JSON syntax error into one sentence ending in `fix`."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"Split file {path} is not valid JSON ({error}); {fix}.") from None
    if not isinstance(content, dict):
        raise DataError(f"Split file {path} holds a {type(content).__name__} where an object with keys "
                        f"'train', 'val', 'test' was expected; {fix}.")
    return content


def _validated_entries(
    content: dict, split: str, spec: DatasetSpec, file_name: str, fix: str = REDOWNLOAD,
) -> list[tuple[str, int, str]]:
    """Return the `split` list of a split file as (relpath, label, classname), checking every field."""
    if not isinstance(content.get(split), list):
        raise DataError(f"{file_name} has no list under key {split!r} (found "
                        f"{type(content.get(split)).__name__}); {fix}.")
    checked = []
    for index, entry in enumerate(content[split]):
        where = f"{file_name}: entry {index} of {split!r}"
        if not isinstance(entry, list) or len(entry) != 3:
            _malformed(where, "entry", entry, "a list [relative_path, label, classname]", fix)
        relpath, label, classname = entry
        if not isinstance(relpath, str) or not relpath or os.path.isabs(relpath):
            _malformed(where, "path (field 0)", relpath, "a non-empty path relative to the image folder", fix)
        # bool is an int subclass; a true/false label is a broken file, not label 1/0.
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < spec.n_classes:
            _malformed(where, "label (field 1)", label, f"an integer from 0 to {spec.n_classes - 1}", fix)
        if not isinstance(classname, str) or not classname.strip():
            _malformed(where, "classname (field 2)", classname, "a non-empty string", fix)
        checked.append((relpath, label, classname))
    return checked


def _malformed(where: str, field: str, value: object, expected: str, fix: str = REDOWNLOAD) -> NoReturn:
    """Raise the one-sentence error for a bad split-file field."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise DataError(f"{where} has {field} {shown} where {expected} was expected; {fix}.")


def _names_by_label(
    entries: dict[str, list[tuple[str, int, str]]], spec: DatasetSpec, file_name: str, fix: str = REDOWNLOAD,
) -> list[str]:
    """The raw class name of each label 0..n-1; every label must appear, always with the same name."""
    names: dict[int, tuple[str, str]] = {}
    for split in SPLIT_NAMES:
        for index, (_, label, classname) in enumerate(entries[split]):
            first = names.setdefault(label, (classname, f"entry {index} of {split!r}"))
            if first[0] != classname:
                raise DataError(f"{file_name}: entry {index} of {split!r} calls label {label} {classname!r} "
                                f"but {first[1]} calls it {first[0]!r}; {fix}.")
    absent = [label for label in range(spec.n_classes) if label not in names]
    if absent:
        raise DataError(f"{file_name} never uses label {absent[0]} ({len(absent)} of {spec.n_classes} labels "
                        f"unused), so it is not the {spec.name} split; download the right file ({SEE_DOCS}).")
    return [names[label][0] for label in range(spec.n_classes)]


# ---------------------------------------------------------------------------------------------------
# imagenet and its variants: class folders named by WordNet id, names from classnames.txt
# ---------------------------------------------------------------------------------------------------


def read_imagenet(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """Read ImageNet: `images/train/<wnid>/*` is train, the official `images/val/<wnid>/*` is test.

    Labels follow the sorted WordNet ids (as CoOp, whose labels enumerate the sorted train folders).
    There is no separate val split: `sample_few_shot` draws few-shot val images from train images
    not chosen as train shots. Listing the folders is the reading itself; images are not stat'ed.
    """
    names = read_wnid_classnames(require_file(folder / "classnames.txt", spec), spec.n_classes)
    wnids = sorted(names)
    classnames = tuple(clean_classname(names[wnid], spec) for wnid in wnids)
    image_root = require_folder(folder / spec.image_dir, spec)
    train = _items_from_class_folders(require_folder(image_root / "train", spec), wnids, classnames, spec)
    test = _items_from_class_folders(require_folder(image_root / "val", spec), wnids, classnames, spec)
    return DatasetSplits(spec.name, classnames, train, (), test)


def read_imagenet_variant(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """Read a test-only ImageNet variant; the class folders present define its class subset.

    Folders are named by wnid (-Sketch, -A, -R) or by ImageNet label 0..999 (-V2). Labels follow
    ImageNet's order (sorted wnids) restricted to the subset and renumbered 0..k-1, which is what CoOp
    gets for the 200-class -A and -R by enumerating their sorted wnid folders.
    """
    names = read_wnid_classnames(require_file(folder / "classnames.txt", spec), IMAGENET_N_CLASSES)
    imagenet_order = sorted(names)
    position = {wnid: index for index, wnid in enumerate(imagenet_order)}
    image_dir = require_folder(folder / spec.image_dir, spec)
    by_index = {_imagenet_index(sub, position, image_dir): sub for sub in _subfolders(image_dir)}
    if len(by_index) != spec.n_classes:
        raise DataError(f"{image_dir} has {len(by_index)} class folders where {spec.name} has {spec.n_classes}; "
                        f"extract the complete archive there ({SEE_DOCS}).")
    indices = sorted(by_index)
    classnames = tuple(clean_classname(names[imagenet_order[index]], spec) for index in indices)
    test = tuple(
        Item(os.path.join(image_dir, by_index[index], file_name), label, classnames[label])
        for label, index in enumerate(indices)
        for file_name in _image_files(image_dir / by_index[index])
    )
    return DatasetSplits(spec.name, classnames, (), (), test)


def read_wnid_classnames(path: Path, n_classes: int) -> dict[str, str]:
    """Parse classnames.txt: `n_classes` lines "nXXXXXXXX class name", giving wnid -> class name."""
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2 or not parts[0].startswith("n") or parts[0] in names:
                raise DataError(f"{path} line {line_number} reads {line.strip()[:60]!r} where a new "
                                f"'nXXXXXXXX class name' line was expected; use CLIP's ImageNet classnames.txt.")
            names[parts[0]] = parts[1].strip()
    if len(names) != n_classes:
        raise DataError(f"{path} lists {len(names)} classes where ImageNet has {n_classes}; "
                        f"use CLIP's ImageNet classnames.txt ({SEE_DOCS}).")
    return names


def _imagenet_index(sub: str, position: dict[str, int], image_dir: Path) -> int:
    """The ImageNet label of a class folder named by wnid or (ImageNetV2) by the label itself."""
    if sub in position:
        return position[sub]
    if sub.isdigit() and int(sub) < len(position):
        return int(sub)
    raise DataError(f"Folder {image_dir / sub} is neither an ImageNet wnid from classnames.txt nor a "
                    f"label 0..999; remove it or fix the layout ({SEE_DOCS}).")


def _items_from_class_folders(
    split_dir: Path, wnids: Sequence[str], classnames: Sequence[str], spec: DatasetSpec,
) -> tuple[Item, ...]:
    """Items of `split_dir/<wnid>/*`, label = position of the wnid; every wnid folder must exist."""
    present = set(_subfolders(split_dir))
    unknown = sorted(present - set(wnids))
    if unknown:
        raise DataError(f"Folder {split_dir / unknown[0]} is not a wnid listed in classnames.txt; "
                        f"remove it or fix the layout ({SEE_DOCS}).")
    absent = [wnid for wnid in wnids if wnid not in present]
    if absent:
        raise MissingDataError(
            f"{len(absent)} of the {len(wnids)} class folders are missing in {split_dir} "
            f"(first: {absent[0]}); extract the complete archive there ({SEE_DOCS}).",
            missing=f"{split_dir.name}/{absent[0]}/ and {len(absent) - 1} more class folders",
            expected_at=str(split_dir / absent[0]),
        )
    # Sorted file names keep the item order machine-independent (os.listdir order is not).
    return tuple(
        Item(os.path.join(split_dir, wnid, file_name), label, classnames[label])
        for label, wnid in enumerate(wnids)
        for file_name in _image_files(split_dir / wnid)
    )


# ---------------------------------------------------------------------------------------------------
# fgvc_aircraft: the official variant-level split of the FGVC-Aircraft tarball
# ---------------------------------------------------------------------------------------------------


def read_fgvc_aircraft(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """Read variants.txt (labels in file order) and images_variant_{train,val,test}.txt ("<id> <variant>")."""
    variants_path = require_file(folder / "variants.txt", spec)
    raw_names = [line.strip() for line in _read_lines(variants_path) if line.strip()]
    if len(raw_names) != spec.n_classes or len(set(raw_names)) != len(raw_names):
        raise DataError(f"{variants_path} lists {len(raw_names)} variants ({len(set(raw_names))} distinct) "
                        f"where FGVC-Aircraft has {spec.n_classes}; use the file of the official tarball.")
    label_of = {raw: label for label, raw in enumerate(raw_names)}
    classnames = tuple(clean_classname(raw, spec) for raw in raw_names)
    image_dir = require_folder(folder / spec.image_dir, spec)
    items = {
        split: _fgvc_split(require_file(folder / file_name, spec), image_dir, label_of, classnames)
        for split, file_name in FGVC_SPLIT_FILES.items()
    }
    all_paths = [item.path for split in SPLIT_NAMES for item in items[split]]
    check_images_exist(all_paths, image_dir, "images_variant_*.txt")
    return DatasetSplits(spec.name, classnames, items["train"], items["val"], items["test"])


def _fgvc_split(
    path: Path, image_dir: Path, label_of: dict[str, int], classnames: Sequence[str],
) -> tuple[Item, ...]:
    """Items of one images_variant_*.txt file, whose lines read "<image id> <variant name>"."""
    items = []
    for line_number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise DataError(f"{path} line {line_number} names variant {variant!r}, which is not in "
                            "variants.txt; use the files of the official tarball together.")
        label = label_of[variant]
        items.append(Item(os.path.join(image_dir, image_id + ".jpg"), label, classnames[label]))
    return tuple(items)


# ---------------------------------------------------------------------------------------------------
# image_folder: a user's own images, one sub-folder per class (`folder:<path>`)
# ---------------------------------------------------------------------------------------------------


def read_image_folder(spec: DatasetSpec, folder: Path) -> DatasetSplits:
    """Read `folder/<class>/...` images with labels = sorted class folders, split by `split.json`.

    Without `split.json` the deterministic split of `image_folder.deterministic_split` is made and
    recorded there. Class names: `classnames.json` if present, else the split file's class names, else the
    folder names (underscores become spaces, as for every dataset).
    """
    classes = image_folder.class_folders(folder)
    split_path = folder / image_folder.SPLIT_FILE
    fix = f"fix the file, or delete it to make a new split ({image_folder.DOCS})"
    if split_path.is_file():
        entries = _folder_split_entries(split_path, classes, spec, fix)
    else:
        content = image_folder.deterministic_split(folder, classes)
        image_folder.record_split(split_path, content, spec.name)
        entries = {split: [tuple(entry) for entry in content[split]] for split in SPLIT_NAMES}
    raw_names = _names_by_label(entries, replace(spec, n_classes=len(classes)), split_path.name, fix)
    natural = image_folder.natural_names(folder, [c.name for c in classes]) or {}
    named = zip(classes, raw_names, strict=True)
    classnames = tuple(clean_classname(natural.get(c.name, raw), spec) for c, raw in named)
    _require_distinct_names(classnames, classes, folder)
    items = {
        split: tuple(Item(os.path.join(folder, path), label, classnames[label]) for path, label, _ in entries[split])
        for split in SPLIT_NAMES
    }
    restore = f"put them back, or delete {split_path.name} to make a new split"
    check_images_exist([item.path for split in SPLIT_NAMES for item in items[split]], folder, split_path.name, restore)
    # The few-shot sample is seeded by this name: the folder's own name keeps it the same wherever it lives.
    name = f"{image_folder.FOLDER_PREFIX}{folder.name}"
    return DatasetSplits(name, classnames, items["train"], items["val"], items["test"])


def _folder_split_entries(
    split_path: Path, classes: list[image_folder.ClassFolder], spec: DatasetSpec, fix: str,
) -> dict[str, list[tuple[str, int, str]]]:
    """A user's (or a recorded) split file, checked against the class folders: paths in them, labels theirs."""
    content = _load_json(split_path, fix)
    counted = replace(spec, n_classes=len(classes))
    entries = {split: _validated_entries(content, split, counted, split_path.name, fix) for split in SPLIT_NAMES}
    label_of = {cls.name: label for label, cls in enumerate(classes)}
    for split in SPLIT_NAMES:
        for index, (relpath, label, _) in enumerate(entries[split]):
            top = relpath.replace("\\", "/").split("/")[0]
            if label_of.get(top) != label:
                found = f"class folder {top!r}, label {label_of[top]}" if top in label_of else "no class folder"
                raise DataError(f"{split_path.name}: entry {index} of {split!r} has label {label} but its path "
                                f"{relpath!r} lies in {found} (labels are the sorted class folders); {fix}.")
    listed = {label for split in SPLIT_NAMES for _, label, _ in entries[split]}
    unlisted = [cls.name for label, cls in enumerate(classes) if label not in listed]
    if unlisted:
        raise DataError(f"{split_path} lists no image of the class folder {unlisted[0]!r} (added after the split "
                        f"was made?); delete {split_path.name} to make a new split with every class folder.")
    return entries


def _require_distinct_names(classnames: Sequence[str], classes: list[image_folder.ClassFolder], folder: Path) -> None:
    """Two classes with one name cannot be told apart by a prompt: refuse rather than train on it."""
    first_with: dict[str, str] = {}
    for name, cls in zip(classnames, classes, strict=True):
        if name in first_with:
            raise DataError(f"Class folders {first_with[name]!r} and {cls.name!r} of {folder} both get the class "
                            f"name {name!r}; give them distinct names in {image_folder.CLASSNAMES_FILE} "
                            f"({image_folder.DOCS}).")
        first_with[name] = cls.name


# ---------------------------------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------------------------------


def require_file(path: Path, spec: DatasetSpec) -> Path:
    """Return `path` if it is a file, else raise MissingDataError naming it."""
    if not path.is_file():
        raise MissingDataError(f"{spec.name} needs {path.name}, which is missing: expected {path} ({SEE_DOCS}).",
                               missing=path.name, expected_at=str(path))
    return path


def require_folder(path: Path, spec: DatasetSpec) -> Path:
    """Return `path` if it is a folder, else raise MissingDataError naming it."""
    if not path.is_dir():
        raise MissingDataError(f"{spec.name} needs the folder {path.name}/, which is missing: expected {path} "
                               f"({SEE_DOCS}).", missing=path.name + "/", expected_at=str(path))
    return path


def clean_classname(raw: str, spec: DatasetSpec) -> str:
    """Apply the catalogue's class-name fix, then turn underscores into spaces (as CoOp's trainers do)."""
    return spec.classname_fixes.get(raw, raw).replace("_", " ").strip()


def check_images_exist(
    paths: Iterable[str], image_dir: Path, listed_in: str, fix: str = f"extract the image archive there ({SEE_DOCS})",
) -> None:
    """Raise MissingDataError if any listed image is not on disk.

    One directory listing per image folder instead of one stat per image: Food101's 101k images
    live in 101 folders, so this costs 101 listings.
    """
    listings: dict[str, frozenset[str]] = {}
    missing = []
    for path in paths:
        parent, file_name = os.path.split(path)
        if parent not in listings:
            listings[parent] = frozenset(os.listdir(parent)) if os.path.isdir(parent) else frozenset()
        if file_name not in listings[parent]:
            missing.append(path)
    if missing:
        first = os.path.relpath(missing[0], image_dir)
        raise MissingDataError(
            f"{len(missing)} images listed in {listed_in} are missing under {image_dir} (first: {first}); {fix}.",
            missing=f"{first} and {len(missing) - 1} more images listed in {listed_in}",
            expected_at=missing[0],
        )


def _subfolders(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `path` (files such as README.txt are skipped)."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


def _image_files(path: Path) -> list[str]:
    """Sorted names of the non-hidden files of a class folder."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_file() and not entry.name.startswith("."))


def _read_lines(path: Path) -> list[str]:
    """The lines of a small text file."""
    with open(path, encoding="utf-8") as handle:
        return handle.readlines()


READERS: dict[str, Reader] = {
    "split_json": read_split_json,
    "imagenet": read_imagenet,
    "fgvc_aircraft": read_fgvc_aircraft,
    "imagenet_variant": read_imagenet_variant,
    "image_folder": read_image_folder,
}
