"""Class-wise visual augmentation: mixing each image feature with one of a different class.

Pure tensor functions. Randomness comes only from the generators passed in, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MixedBatch:
    """Mixed features z = normalize(lam * z_a + (1 - lam) * z_b) with their two classes and weights.

    features [B, E]; labels and partner_labels [B] (always different classes, except rows that had no
    different-class partner in the batch, which keep lam = 1); lam [B].
    """

    features: torch.Tensor
    labels: torch.Tensor
    partner_labels: torch.Tensor
    lam: torch.Tensor

    def soft_targets(self, n_classes: int) -> torch.Tensor:
        """lam * onehot(a) + (1 - lam) * onehot(b): [B, n_classes], rows sum to 1."""
        lam = self.lam.unsqueeze(1)
        return lam * F.one_hot(self.labels, n_classes) + (1 - lam) * F.one_hot(self.partner_labels, n_classes)

    def virtual_features(self, class_features: torch.Tensor) -> torch.Tensor:
        """Text features of the virtual classes, the same mix of the two classes': [B, E] (normalised)."""
        lam = self.lam.unsqueeze(1).to(class_features.dtype)
        mixed = lam * class_features[self.labels] + (1 - lam) * class_features[self.partner_labels]
        return F.normalize(mixed, dim=-1)


def draw_partners(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, a random other row of the batch with a different label.

    Returns partner indices [B] and a mask [B] of rows that found one (a batch of one class finds none).
    """
    different = labels.unsqueeze(0) != labels.unsqueeze(1)  # [B, B], True where classes differ
    has_partner = different.any(dim=1)
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)  # [B, B]
    weights = torch.where(has_partner.unsqueeze(1), different, itself)
    partners = torch.multinomial(weights.float().cpu(), 1, generator=generator).squeeze(1).to(labels.device)
    return partners, has_partner


def classwise_mix(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
    beta_rng: np.random.Generator,
) -> MixedBatch | None:
    """Mix L2-normalised features [B, E] with different-class partners, lam ~ Beta(alpha, alpha) per row.

    alpha = 0 means no augmentation (returns None).
    """
    if alpha <= 0:
        return None
    partners, has_partner = draw_partners(labels, generator)
    lam = torch.as_tensor(beta_rng.beta(alpha, alpha, size=len(labels)), dtype=features.dtype, device=features.device)
    lam = torch.where(has_partner, lam, torch.ones_like(lam))
    mixed = lam.unsqueeze(1) * features + (1 - lam.unsqueeze(1)) * features[partners]
    return MixedBatch(F.normalize(mixed, dim=-1), labels, labels[partners], lam)
