"""The offline world as data: colours, shapes, image styles, caption templates, held-out classes.

Every class of the world is a (colour, shape) pair named in natural language ("red circle").
The colours and shapes are split into two disjoint halves: the synthetic benchmarks take their base
classes from the first half and their new classes from the second, so base and new class names
share no word (measured: the base/new trade-off only appears then). The new classes are held out of
pretraining in every style, so zero-shot accuracy on them measures compositional transfer.
"""

from __future__ import annotations

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
)

# Image styles of pretraining. Captions always name the style (measured: with captions that do not,
# the text encoder learns to ignore prefix words and prompt tuning has nothing to move).
STYLES: tuple[str, ...] = ("photo", "noisy", "blurry", "pixelated", "sketch", "faded")

# Style -> caption templates ("{}" is the class name). Only "photo" images are captioned with the
# plain "a photo of a {}.", so the benchmarks' hand-crafted prompt does not describe their style.
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

# Words the tokenizer knows beyond the captions: "x" is the placeholder CoOp-style prompt learners
# write in place of the soft context ("x x x x red circle.").
EXTRA_WORDS: tuple[str, ...] = ("x", "an", "the", "image", "of")

# Base classes use these colours and shapes only, new classes the others (disjoint name words).
BASE_COLOURS: tuple[str, ...] = ("red", "yellow", "blue", "pink", "brown")
NEW_COLOURS: tuple[str, ...] = ("orange", "green", "cyan", "purple", "black")
BASE_SHAPES: tuple[str, ...] = ("circle", "triangle", "cross", "ring", "moon")
NEW_SHAPES: tuple[str, ...] = ("square", "star", "diamond", "arrow", "heart")


def classname(colour: str, shape: str) -> str:
    """The natural-language class name of a (colour, shape) pair, e.g. "red circle"."""
    return f"{colour} {shape}"


def _cyclic_pairs(colours: tuple[str, ...], shapes: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Colour i with shapes i and i+1 (mod n): every colour and every shape occurs in exactly two pairs,
    so neither attribute alone identifies a class."""
    n = len(shapes)
    return tuple((c, shapes[(i + k) % n]) for i, c in enumerate(colours) for k in (0, 1))


# The synthetic benchmarks' classes in label order: base (labels 0..9) first, then new (10..19).
BASE_CLASSES: tuple[tuple[str, str], ...] = _cyclic_pairs(BASE_COLOURS, BASE_SHAPES)
NEW_CLASSES: tuple[tuple[str, str], ...] = _cyclic_pairs(NEW_COLOURS, NEW_SHAPES)

# Held out of pretraining, in every style: exactly the benchmarks' new classes.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(NEW_CLASSES)
PRETRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_COMBOS
)


def vocabulary() -> tuple[str, ...]:
    """Every word of the world (captions, class names, extras), sorted; punctuation not included."""
    words: set[str] = set(COLOURS) | set(SHAPES) | set(EXTRA_WORDS)
    for templates in CAPTION_TEMPLATES.values():
        for template in templates:
            words.update(template.replace("{}", " ").replace(".", " ").split())
    return tuple(sorted(words))
