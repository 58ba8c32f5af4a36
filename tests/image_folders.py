"""Tiny folders of a user's own images (one sub-folder per class), for the `folder:<path>` dataset tests.

Class folders are named "<colour>_<shape>" from the offline world's words, so that the tiny CLIP can
encode their class names; images are small PNGs in the class's colour.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dualprompt.world.vocab import COLOURS, SHAPES


def world_class_folders(n_classes: int) -> list[str]:
    """`n_classes` folder names such as "red_circle", whose names the tiny CLIP knows."""
    colours = list(COLOURS)
    return [f"{colours[i % len(colours)]}_{SHAPES[i % len(SHAPES)]}" for i in range(n_classes)]


def write_image_folder(folder: Path, per_class: dict[str, int], size: int = 16) -> Path:
    """Write `folder/<class>/<i>.png` for each class and count; returns `folder`."""
    colours = list(COLOURS.values())
    for index, (name, count) in enumerate(per_class.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _image(colours[index % len(colours)], i, size).save(folder / name / f"{i:03d}.png")
    return folder


def _image(colour: tuple[int, int, int], variant: int, size: int) -> Image.Image:
    """The class colour with a faint per-image ripple: distinct files (and cache entries), and enough pixel
    data that cutting a file short cuts into its pixels."""
    pixels = bytes((colour[c] + (x * y + 5 * variant) % 23) % 256
                   for y in range(size) for x in range(size) for c in range(3))
    return Image.frombytes("RGB", (size, size), pixels)


def world_image_folder(folder: Path, n_classes: int = 4, per_class: int = 10) -> Path:
    """A ready folder dataset of `n_classes` world-named classes with `per_class` images each."""
    return write_image_folder(folder, dict.fromkeys(world_class_folders(n_classes), per_class))


def truncate(path: Path) -> None:
    """Cut a file to its first half, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
