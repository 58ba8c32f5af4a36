"""Hand-crafted prompt templates as data (the per-dataset template lives in the dataset catalogue)."""

from __future__ import annotations

# CLIP's seven "select" ImageNet templates, which CoOp's ZeroshotCLIP2 ensembles with the dataset template.
IMAGENET_SELECT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def handcrafted_templates(dataset_template: str, ensemble: bool) -> tuple[str, ...]:
    """The templates whose (normalised, averaged) text features form the hand-crafted view."""
    if ensemble:
        return (dataset_template, *IMAGENET_SELECT_TEMPLATES)
    return (dataset_template,)


def fill(template: str, classname: str) -> str:
    """The prompt for one class (the dataset readers already turned underscores into spaces)."""
    return template.format(classname)
