"""Loss terms as pure tensor functions. Each returns a scalar; `method_loss` returns them by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of logits [B, C] against integer labels [B]."""
    return F.cross_entropy(logits, labels)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE of logits [B, C] against probability targets [B, C] (rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def mutual_information_nce(soft: torch.Tensor, handcrafted: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE over the class axis between the two text views.

    soft, handcrafted: L2-normalised [N, E]; row i of each is class i. S_ij = w_i . h_j / tau.
    Returns `mi` = (soft_to_hand + hand_to_soft) / 2 and both directions. I(W; H) >= log N - mi.
    """
    similarity = soft @ handcrafted.T / temperature  # [N, N]
    targets = torch.arange(similarity.shape[0], device=similarity.device)
    soft_to_hand = F.cross_entropy(similarity, targets)
    hand_to_soft = F.cross_entropy(similarity.T, targets)
    return {
        "mi": 0.5 * (soft_to_hand + hand_to_soft),
        "mi_soft_to_hand": soft_to_hand,
        "mi_hand_to_soft": hand_to_soft,
    }


def knowledge_guidance(soft: torch.Tensor, handcrafted: torch.Tensor) -> torch.Tensor:
    """KgCoOp's term 1 - mean_i cos(w_i, h_i) for L2-normalised [N, E] features."""
    return 1.0 - (soft * handcrafted).sum(dim=-1).mean()
