"""Zero-shot diagnostics of the tiny CLIP, outside the benchmark protocol.

- `style_accuracies`: per style, 144-way zero-shot accuracy among all colour x shape classes on fresh
  images, with "a photo of a {}." and with the style's own caption template (what pretraining learned,
  and how much the words of the prompt matter per style);
- `dataset_accuracy`: zero-shot accuracy on a materialised dataset's test split over all its classes
  (the domain-generalisation targets are test only, so the protocol's base/new jobs cannot read them).

The synthetic datasets' base/new accuracies go through the project's own zero-shot method instead.
Deterministic: a seeded renderer, eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualprompt.world.render import render
from dualprompt.world.vocab import PRETRAIN_COMBOS, STYLE_MATCHED_TEMPLATES, STYLES, classname

PLAIN_TEMPLATE = "a photo of a {}."


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


def style_accuracies(model, tokenizer, per_class: int = 10, seed: int = 1234) -> dict[str, dict[str, float]]:
    """Per style: 144-way zero-shot accuracy (percent) on `per_class` fresh images of every class, with
    "a photo of a {}." ("plain") and with the style's own template ("style_matched")."""
    names = [classname(c, s) for c, s in PRETRAIN_COMBOS]
    labels = torch.arange(len(PRETRAIN_COMBOS)).repeat_interleave(per_class)  # [N]
    results = {}
    for index, style in enumerate(STYLES):
        rng = np.random.default_rng([seed, index])
        images = [render(c, s, style, rng) for c, s in PRETRAIN_COMBOS for _ in range(per_class)]
        tensor = images_to_tensor(images, model.visual.image_mean, model.visual.image_std)
        results[style] = {
            key: zero_shot_accuracy(model, tokenizer, tensor, labels, names, template)
            for key, template in (("plain", PLAIN_TEMPLATE), ("style_matched", STYLE_MATCHED_TEMPLATES[style]))
        }
    return results


def dataset_accuracy(backbone, name: str, data_root: Path, template: str | None = None) -> float:
    """Zero-shot accuracy (percent) on the test split of dataset `name`, over all of its classes, with the
    protocol's evaluation transform and `template` (default: the catalogue's)."""
    from dualprompt.data.catalogue import get_spec
    from dualprompt.data.readers import load_dataset
    from dualprompt.evaluate import accuracy
    from dualprompt.experiment import eval_image_features
    from dualprompt.features import FeatureStore

    splits = load_dataset(name, data_root)
    features = eval_image_features(FeatureStore(backbone, None, enabled=False), splits.test)  # [N, E]
    template = template or get_spec(name).template
    with torch.no_grad():
        classifier = torch.nn.functional.normalize(
            backbone.encode_texts([template.format(c) for c in splits.classnames]), dim=-1)
    labels = torch.tensor([item.label for item in splits.test])
    return round(accuracy(classifier, features, labels), 2)
