"""Opening image files: the one place that decodes them, so training and `check --deep` agree on what is readable.

A file that cannot be decoded (truncated, corrupt, not an image) raises `UnreadableImageError`, one
sentence naming the file and, when this process read it through `load_dataset`, its dataset. PIL's
`ImageFile.LOAD_TRUNCATED_IMAGES` stays False on purpose: padding a truncated image with grey would
train on a picture nobody took.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from dualprompt.data.errors import DataError

DEEP_CHECK_HINT = "python -m dualprompt.data check --deep"

# Dataset folder (absolute) -> dataset name, for every dataset `load_dataset` read in this process. The
# feature code only sees image paths; this lets its error name the dataset the user asked for.
_dataset_folders: dict[str, str] = {}


class UnreadableImageError(DataError):
    """An image file that PIL cannot decode; `path` is the file, `reason` PIL's own words."""

    def __init__(self, path: str, reason: str) -> None:
        dataset = dataset_of(path)
        of_dataset = f" of dataset {dataset}" if dataset else ""
        names = f" --datasets {dataset}" if dataset else ""
        super().__init__(f"Image {path}{of_dataset} cannot be read ({reason}); replace it with an intact copy "
                         f"(`{DEEP_CHECK_HINT}{names}` lists every unreadable image).")
        self.path = path
        self.reason = reason


def remember_dataset_folder(folder: str, name: str) -> None:
    """Record that images under `folder` belong to dataset `name` (called by `load_dataset`)."""
    _dataset_folders[os.path.abspath(folder)] = name


def dataset_of(path: str) -> str | None:
    """The dataset whose folder holds `path` (the innermost one), or None if no dataset read here has it."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if folder in _dataset_folders:
            return _dataset_folders[folder]
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def read_rgb(path: str) -> Image.Image:
    """The fully decoded image at `path` in RGB; raises UnreadableImageError if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            # convert() decodes every pixel, so a truncated file fails here and not later in a transform.
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - PIL's decoders raise many types on malformed files
        raise UnreadableImageError(path, _reason(error)) from error


def _reason(error: Exception) -> str:
    """PIL's message in one short line (it can be empty or span lines for some formats)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file PIL can identify"  # PIL's own message repeats the path
    if isinstance(error, OSError) and error.filename and error.strerror:
        return error.strerror  # e.g. "Permission denied", without the path the sentence already names
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class DecodeReport:
    """The outcome of decoding many images: how many were read, and the unreadable ones (path, reason)."""

    n_images: int
    unreadable: tuple[tuple[str, str], ...]


def decode_all(
    paths: Sequence[str], progress: Callable[[int, int], None] | None = None, block: int = 256,
) -> DecodeReport:
    """Decode every image of `paths` as training would; `progress(done, total)` is called after each block.

    Threads, because PIL releases the GIL while it decodes, so a few of them keep several cores busy.
    """
    unreadable = []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start, failures in _blocks(pool, paths, block):
            unreadable.extend(failure for failure in failures if failure is not None)
            if progress is not None:
                progress(min(start + block, len(paths)), len(paths))
    return DecodeReport(len(paths), tuple(unreadable))


def _blocks(pool: ThreadPoolExecutor, paths: Sequence[str], block: int) -> Iterator[tuple[int, list]]:
    """(block start, [None or (path, reason)] per path), block by block so memory stays flat."""
    for start in range(0, len(paths), block):
        yield start, list(pool.map(_failure, paths[start : start + block]))


def _failure(path: str) -> tuple[str, str] | None:
    """None if `path` decodes, else (path, reason)."""
    try:
        read_rgb(path)
    except UnreadableImageError as error:
        return path, error.reason
    return None
