"""`check`: is each dataset on disk, complete, and of the published size? One line per dataset.

`deep=True` also decodes every image, as training would, and reports the unreadable ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dualprompt.data.catalogue import REAL_DATASETS, get_spec
from dualprompt.data.errors import DataError, MissingDataError
from dualprompt.data.images import decode_all
from dualprompt.data.readers import SPLIT_NAMES, dataset_folder, load_dataset
from dualprompt.data.types import DatasetSplits

READY = "ready"
WRONG_COUNT = "wrong count"
MISSING = "missing"
INVALID = "invalid"
SHOWN_UNREADABLE = 3  # how many unreadable images a deep check names per dataset


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one dataset: `status` is one of READY, WRONG_COUNT, MISSING, INVALID."""

    name: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == READY

    def line(self, name_width: int = 16) -> str:
        """The printed line, e.g. "dtd              ready        train 2820  val 1128  test 1692"."""
        if self.status in (MISSING, INVALID):
            return f"{self.name:<{name_width}} {self.status}: {self.detail}"
        return f"{self.name:<{name_width}} {self.status:<12} {self.detail}"


def check_dataset(
    name: str, data_root: Path, deep: bool = False, progress: Callable[[int, int], None] | None = None,
) -> CheckResult:
    """Load dataset `name` and compare its (train, val, test) sizes with the published ones.

    With `deep`, every image is also decoded (`progress(done, total)` after each block of images) and
    unreadable ones make the dataset INVALID.
    """
    try:
        splits = load_dataset(name, data_root)
    except MissingDataError as error:
        return CheckResult(name, MISSING, f"{error.missing} (expected at {error.expected_at})")
    except DataError as error:
        return CheckResult(name, INVALID, str(error))
    if deep:
        unreadable = _unreadable_images(splits, dataset_folder(name, data_root), progress)
        if unreadable:
            return CheckResult(name, INVALID, unreadable)
    counts = (len(splits.train), len(splits.val), len(splits.test))
    expected = get_spec(name).expected_counts
    found = "  ".join(f"{split} {count}" for split, count in zip(SPLIT_NAMES, counts, strict=True))
    wrong = [
        f"{split} {count} where {want} expected"
        for split, count, want in zip(SPLIT_NAMES, counts, expected, strict=True)
        if want is not None and count != want
    ]
    if wrong:
        return CheckResult(name, WRONG_COUNT, f"{found}  ({'; '.join(wrong)})")
    return CheckResult(name, READY, found)


def _unreadable_images(
    splits: DatasetSplits, folder: Path, progress: Callable[[int, int], None] | None,
) -> str | None:
    """One sentence naming the first unreadable images of `splits` (paths relative to `folder`), or None."""
    # dict.fromkeys: an image listed in two splits (ImageNet-style val drawn from train) is decoded once.
    paths = list(dict.fromkeys(item.path for item in splits.train + splits.val + splits.test))
    report = decode_all(paths, progress)
    if not report.unreadable:
        return None
    shown = ", ".join(f"{os.path.relpath(path, folder)} ({reason})"
                      for path, reason in report.unreadable[:SHOWN_UNREADABLE])
    more = len(report.unreadable) - SHOWN_UNREADABLE
    and_more = f" and {more} more" if more > 0 else ""
    fix = "replace it with an intact copy" if len(report.unreadable) == 1 else "replace them with intact copies"
    return (f"{len(report.unreadable)} of {report.n_images} images cannot be read under {folder}: {shown}{and_more}; "
            f"{fix}.")


def validate_names(names: list[str]) -> None:
    """Raise DataError for an empty list or an unknown name, before any dataset is read."""
    if not names:
        raise DataError("No dataset named; pass --datasets with comma-separated catalogue names or folder:<path>, "
                        "e.g. dtd,eurosat.")
    for name in names:
        get_spec(name)


def default_check_names() -> list[str]:
    """The datasets checked when none are named: every real one (synthetic ones are generated)."""
    return list(REAL_DATASETS)
