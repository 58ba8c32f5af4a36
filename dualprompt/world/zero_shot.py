"""Zero-shot accuracy on photos of the held-out colour-shape pairs, among them and among all 100 pairs.

A pretraining diagnostic outside the benchmark protocol (the synthetic datasets' base/new accuracies go
through the project's own zero-shot method). Deterministic: a seeded renderer, eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dualprompt.world.render import render
from dualprompt.world.vocab import COLOURS, NEW_CLASSES, SHAPES, classname


def images_to_tensor(images: Sequence[Image.Image], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL RGB images -> normalised float tensor [N, 3, H, W]."""
    pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) for image in images]))  # [N, H, W, 3]
    pixels = pixels.permute(0, 3, 1, 2) / 255.0  # [N, 3, H, W] in [0, 1]
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    template: str,
) -> float:
    """Closed-set zero-shot accuracy (percent) of `images` [N, 3, H, W] over `classnames` with `template`."""
    model.eval()
    text = tokenizer([template.format(name) for name in classnames])  # [C, L]
    text_features = model.encode_text(text, normalize=True)  # [C, D]
    image_features = torch.cat([model.encode_image(chunk, normalize=True) for chunk in images.split(500)])  # [N, D]
    predictions = (image_features @ text_features.T).argmax(dim=1)  # [N]
    return round(100.0 * (predictions == labels).float().mean().item(), 2)


def held_out_accuracies(model, tokenizer, per_class: int = 50, seed: int = 1234) -> dict[str, float]:
    """Zero-shot accuracy (percent) on photo-style images of the held-out pairs, with "a photo of a {}.".

    "among_held_out" chooses among the held-out classes only; "among_all" among all 100 colour-shape
    classes (much harder: colour alone narrows a held-out class to two options, not to one).
    """
    rng = np.random.default_rng(seed)
    pairs = list(NEW_CLASSES)
    images = [render(c, s, "photo", rng) for c, s in pairs for _ in range(per_class)]
    labels = torch.arange(len(pairs)).repeat_interleave(per_class)  # [N]
    tensor = images_to_tensor(images, model.visual.image_mean, model.visual.image_std)
    all_pairs = [(c, s) for c in COLOURS for s in SHAPES]
    labels_among_all = torch.tensor([all_pairs.index(pair) for pair in pairs]).repeat_interleave(per_class)
    template = "a photo of a {}."
    return {
        "among_held_out": zero_shot_accuracy(
            model, tokenizer, tensor, labels, [classname(c, s) for c, s in pairs], template
        ),
        "among_all": zero_shot_accuracy(
            model, tokenizer, tensor, labels_among_all, [classname(c, s) for c, s in all_pairs], template
        ),
    }
