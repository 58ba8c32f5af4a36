"""Closed-set accuracy, the harmonic mean of base and new, and their binomial standard errors (percent)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def accuracy(
    class_features: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor, batch: int = 4096
) -> float:
    """Top-1 accuracy (%) of classifying image features [N, E] with class text features [C, E].

    The text side is computed once by the caller, not per test batch; the logit scale does not change
    the argmax, so it is left out.
    """
    correct = 0
    for start in range(0, len(labels), batch):
        logits = image_features[start : start + batch].float() @ class_features.float().T  # [b, C]
        correct += int((logits.argmax(dim=-1).cpu() == labels[start : start + batch].cpu()).sum())
    return 100.0 * correct / max(1, len(labels))


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2AB / (A + B) of two accuracies; 0 when both are 0."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def accuracy_se(accuracy_pct: float, n_images: int) -> float:
    """Binomial standard error (points) of an accuracy measured on `n_images` images: sqrt(p(1-p)/n)."""
    if n_images <= 0:
        return math.nan
    p = accuracy_pct / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n_images)


def harmonic_mean_se(a_pct: float, n_a: int, b_pct: float, n_b: int) -> float:
    """Standard error (points) of HM(a, b) from the two accuracies' binomial errors (delta method).

    dHM/da = 2b^2 / (a + b)^2 and dHM/db = 2a^2 / (a + b)^2; the two image sets are independent.
    """
    if a_pct + b_pct <= 0:
        return 0.0
    total = a_pct + b_pct
    d_a, d_b = 2 * b_pct**2 / total**2, 2 * a_pct**2 / total**2
    return math.sqrt((d_a * accuracy_se(a_pct, n_a)) ** 2 + (d_b * accuracy_se(b_pct, n_b)) ** 2)


def mean_se(standard_errors: list[float]) -> float:
    """Standard error of the mean of independent estimates: sqrt(sum se^2) / n."""
    if not standard_errors:
        return math.nan
    return math.sqrt(sum(se * se for se in standard_errors)) / len(standard_errors)
