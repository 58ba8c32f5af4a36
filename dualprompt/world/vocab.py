"""The offline world as data: colours, shapes, image styles, caption templates and class layouts.

Every class of the world is a (colour, shape) pair. All 144 pairs are seen in pretraining, in every
style, as real CLIP has seen the pictures of the benchmarks' classes. Pretraining captions name a shape
by its common word ("red circle", `common_name`) and only rarely by its rare synonym ("red disc"); the
datasets name their classes by the rare synonym (`classname`), as the field's class names ("Sikorsky
S-92", "globe thistle") are words CLIP met far more rarely than the things they name. A prompt can then
win class-specific accuracy on base classes beyond the style (measured: docs/offline-world.md).

A downstream dataset does not use all of them: each base-to-new dataset draws its own 36 classes from
its own grouping of the words (`base_to_new_layout`), in four word-disjoint blocks of 3 colours x 3
shapes (a shape and its synonym belong to the same block):

    labels  0-8   block A  -> pseudo-base  \
    labels  9-17  block B  -> pseudo-new   / base
    labels 18-26  block C  \
    labels 27-35  block D  / new

so the protocol's rules (base = the first ceil(n/2) labels, the same rule again inside base) put A+B
in base and C+D in new (no shared word), and A and B in pseudo-base and pseudo-new (no shared word):
the pseudo split is a miniature of the true split, and base and new are made the same way (two blocks
each), so neither is easier by construction. Inside a block every colour and every shape occurs in
three classes, so neither word alone names a class. The grouping is a pure function of the dataset name
(SHA-256, not Python's salted hash()), the same on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Name -> RGB. Chosen to stay distinguishable from each other after blurring and against the
# light-to-mid grey backgrounds of the renderer (no white or grey, which would vanish into them).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (35, 160, 55),
    "cyan": (30, 200, 215),
    "blue": (30, 60, 220),
    "purple": (135, 40, 185),
    "pink": (250, 120, 190),
    "brown": (120, 70, 25),
    "black": (20, 20, 20),
    "lime": (160, 225, 40),
    "navy": (20, 30, 110),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "diamond",
    "ring",
    "arrow",
    "moon",
    "heart",
    "hexagon",
    "hourglass",
)

# Shape -> its rare synonym, the word a dataset's class name uses. One word each, not a shape word.
SHAPE_SYNONYMS: dict[str, str] = {
    "circle": "disc",
    "square": "tile",
    "triangle": "wedge",
    "star": "spark",
    "cross": "plus",
    "diamond": "rhombus",
    "ring": "hoop",
    "arrow": "pointer",
    "moon": "crescent",
    "heart": "valentine",
    "hexagon": "honeycomb",
    "hourglass": "sandglass",
}

# Image styles of pretraining. Captions always name the style (measured: with captions that do not,
# the text encoder learns to ignore prefix words and prompt tuning has nothing to move).
STYLES: tuple[str, ...] = ("photo", "noisy", "blurry", "pixelated", "sketch", "faded")

# Style -> caption templates ("{}" is the class name). Only "photo" images are captioned with the
# plain "a photo of a {}.", so the hand-crafted prompt describes the photo style and no other.
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.", "a picture of a {}.", "a clean photo of a {}."),
    "noisy": ("a noisy photo of a {}.", "a noisy picture of a {}.", "a grainy photo of a {}."),
    "blurry": ("a blurry photo of a {}.", "a blurry picture of a {}.", "a blurred photo of a {}."),
    "pixelated": (
        "a pixelated photo of a {}.",
        "a pixelated picture of a {}.",
        "a low resolution photo of a {}.",
    ),
    "sketch": ("a sketch of a {}.", "a drawing of a {}.", "a pencil sketch of a {}."),
    "faded": ("a faded photo of a {}.", "a faded picture of a {}.", "a washed out photo of a {}."),
}

# The hand-crafted template that describes each style (the first caption template): the gap between it
# and "a photo of a {}." on a styled dataset is what a prompt can win without knowing any class.
STYLE_MATCHED_TEMPLATES: dict[str, str] = {style: templates[0] for style, templates in CAPTION_TEMPLATES.items()}

# Words the tokenizer knows beyond the captions: "x" is the placeholder CoOp-style prompt learners
# write in place of the soft context ("x x x x red circle.").
EXTRA_WORDS: tuple[str, ...] = ("x", "an", "the", "image", "of")

# Every (colour, shape) pair is seen in pretraining.
PRETRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)

Pair = tuple[str, str]

# A base-to-new dataset: BLOCKS word-disjoint blocks of BLOCK_SIZE colours x BLOCK_SIZE shapes.
BLOCKS = 4
BLOCK_SIZE = 3


def classname(colour: str, shape: str) -> str:
    """The class name datasets give a (colour, shape) pair: the shape's rare synonym, e.g. "red disc"."""
    return f"{colour} {SHAPE_SYNONYMS[shape]}"


def common_name(colour: str, shape: str) -> str:
    """The common name of a (colour, shape) pair, most pretraining captions' word for it: "red circle"."""
    return f"{colour} {shape}"


def _stable_order(words, key: str) -> list[str]:
    """`words` sorted by SHA-256 of (key, word): a shuffle that is a pure function of `key`."""
    return sorted(words, key=lambda word: hashlib.sha256(f"{key}/{word}".encode()).hexdigest())


@dataclass(frozen=True)
class Block:
    """The classes `colours` x `shapes` (every combination), in label order."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]

    @property
    def classes(self) -> tuple[Pair, ...]:
        return tuple((c, s) for c in self.colours for s in self.shapes)

    @property
    def words(self) -> frozenset[str]:
        return frozenset(self.colours) | frozenset(self.shapes)


def base_to_new_layout(name: str) -> tuple[Block, ...]:
    """The four word-disjoint blocks (A, B, C, D) of base-to-new dataset `name`; classes = A + B + C + D.

    Colours and shapes are each shuffled by a key derived from `name` and cut into groups of three;
    block k is colour group k x shape group k.
    """
    colours = _stable_order(COLOURS, f"{name}/colours")
    shapes = _stable_order(SHAPES, f"{name}/shapes")
    cut = lambda words, k: tuple(words[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE])  # noqa: E731
    return tuple(Block(cut(colours, k), cut(shapes, k)) for k in range(BLOCKS))


def banded_classes(name: str, per_colour: int) -> tuple[Pair, ...]:
    """`per_colour` shapes for each colour, every shape used equally often (a cyclic band over the
    shuffled shapes): 12 x `per_colour` classes, grouped by colour. Used by the source dataset."""
    colours = _stable_order(COLOURS, f"{name}/colours")
    shapes = _stable_order(SHAPES, f"{name}/shapes")
    n = len(shapes)
    return tuple((c, shapes[(i + k) % n]) for i, c in enumerate(colours) for k in range(per_colour))


def stable_subset(pairs: tuple[Pair, ...], size: int, key: str) -> tuple[Pair, ...]:
    """`size` of `pairs` chosen by `key`, kept in their original (label) order."""
    chosen = set(_stable_order([classname(c, s) for c, s in pairs], key)[:size])
    return tuple(p for p in pairs if classname(*p) in chosen)


def vocabulary() -> tuple[str, ...]:
    """Every word of the world (captions, class names, extras), sorted; punctuation not included."""
    words: set[str] = set(COLOURS) | set(SHAPES) | set(SHAPE_SYNONYMS.values()) | set(EXTRA_WORDS)
    for templates in CAPTION_TEMPLATES.values():
        for template in templates:
            words.update(template.replace("{}", " ").replace(".", " ").split())
    return tuple(sorted(words))
