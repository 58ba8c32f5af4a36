"""Plain data types shared by the dataset readers, the samplers and the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One labelled image. `path` is absolute; `label` indexes `DatasetSplits.classnames`."""

    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train/val/test items over one label space (labels 0..len(classnames)-1)."""

    name: str
    classnames: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    test: tuple[Item, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """One catalogue entry: everything needed to find, read and prompt a dataset (data, not code).

    `reader` names one of the readers in `dualprompt.data.readers` (dispatch by a small dict).
    `template` is the hand-crafted prompt of the dataset ("{}" is replaced by the class name).
    `expected_counts` is (train, val, test) as published; None where a split does not exist.
    `n_classes` is 0 for a `folder:<path>` dataset, whose class folders are only known on reading it.
    """

    name: str
    folder: str
    reader: str
    template: str
    n_classes: int
    image_dir: str = ""
    split_file: str | None = None
    expected_counts: tuple[int | None, int | None, int | None] = (None, None, None)
    test_only: bool = False
    classname_fixes: dict[str, str] = field(default_factory=dict)
    synthetic: bool = False
