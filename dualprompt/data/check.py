"""`check`: is each dataset on disk, complete, and of the published size? One line per dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dualprompt.data.catalogue import REAL_DATASETS, get_spec
from dualprompt.data.errors import DataError, MissingDataError
from dualprompt.data.readers import SPLIT_NAMES, load_dataset

READY = "ready"
WRONG_COUNT = "wrong count"
MISSING = "missing"
INVALID = "invalid"


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


def check_dataset(name: str, data_root: Path) -> CheckResult:
    """Load dataset `name` and compare its (train, val, test) sizes with the published ones."""
    try:
        splits = load_dataset(name, data_root)
    except MissingDataError as error:
        return CheckResult(name, MISSING, f"{error.missing} (expected at {error.expected_at})")
    except DataError as error:
        return CheckResult(name, INVALID, str(error))
    counts = (len(splits.train), len(splits.val), len(splits.test))
    expected = get_spec(name).expected_counts
    found = "  ".join(f"{split} {count}" for split, count in zip(SPLIT_NAMES, counts))
    wrong = [
        f"{split} {count} where {want} expected"
        for split, count, want in zip(SPLIT_NAMES, counts, expected)
        if want is not None and count != want
    ]
    if wrong:
        return CheckResult(name, WRONG_COUNT, f"{found}  ({'; '.join(wrong)})")
    return CheckResult(name, READY, found)


def validate_names(names: list[str]) -> None:
    """Raise DataError for an empty list or an unknown name, before any dataset is read."""
    if not names:
        raise DataError("No dataset named; pass --datasets with comma-separated catalogue names, e.g. dtd,eurosat.")
    for name in names:
        get_spec(name)


def default_check_names() -> list[str]:
    """The datasets checked when none are named: every real one (synthetic ones are generated)."""
    return list(REAL_DATASETS)
