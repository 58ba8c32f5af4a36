"""Closed-set accuracy in percent (the harmonic mean of base and new is `results.harmonic_mean`)."""

from __future__ import annotations

import torch


@torch.no_grad()
def accuracy(class_features: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor, batch: int = 4096) -> float:
    """Top-1 accuracy (%) of classifying image features [N, E] with class text features [C, E].

    The text side is computed once by the caller, not per test batch; the logit scale does not change
    the argmax, so it is left out.
    """
    correct = 0
    for start in range(0, len(labels), batch):
        logits = image_features[start : start + batch].float() @ class_features.float().T  # [b, C]
        correct += int((logits.argmax(dim=-1).cpu() == labels[start : start + batch].cpu()).sum())
    return 100.0 * correct / max(1, len(labels))
