"""Loss terms as pure tensor functions. Each returns a scalar; `method_loss` returns them by name."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import classwise_mix
from .config import MethodConfig


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of logits [B, C] against integer labels [B]."""
    return F.cross_entropy(logits, labels)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE of logits [B, C] against probability targets [B, C] (rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def mutual_information_nce(
    soft: torch.Tensor, handcrafted: torch.Tensor, temperature: float
) -> dict[str, torch.Tensor]:
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


def method_loss(
    cfg: MethodConfig,
    logit_scale: float,
    image_features: torch.Tensor,
    labels: torch.Tensor,
    soft: torch.Tensor,
    handcrafted: torch.Tensor,
    generator: torch.Generator,
    beta_rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """The method's loss terms by name, plus `loss`, their weighted sum.

    image_features [B, E] and labels [B]; soft and handcrafted [C, E] over the C training classes.
    """
    terms = {"ce": cross_entropy(logit_scale * image_features @ soft.T, labels)}
    loss = terms["ce"]
    if cfg.method == "kgcoop":
        terms["kg"] = knowledge_guidance(soft, handcrafted)
        loss = loss + cfg.kg_weight * terms["kg"]
    if cfg.method == "dualprompt":
        mixed = classwise_mix(image_features, labels, cfg.aug_strength, generator, beta_rng)
        mi_soft, mi_hand = soft, handcrafted
        if mixed is not None and cfg.aug_variant == "virtual":
            # Each mixed feature is its own virtual class; its text features mix w (and h) the same way.
            soft_virtual = torch.cat([soft, mixed.virtual_features(soft)])  # [C + B, E]
            mi_soft, mi_hand = soft_virtual, torch.cat([handcrafted, mixed.virtual_features(handcrafted)])
            virtual_labels = soft.shape[0] + torch.arange(len(labels), device=labels.device)
            terms["aug"] = cross_entropy(logit_scale * mixed.features @ soft_virtual.T, virtual_labels)
        elif mixed is not None:
            targets = mixed.soft_targets(soft.shape[0]).to(soft.dtype)
            terms["aug"] = soft_cross_entropy(logit_scale * mixed.features @ soft.T, targets)
        terms.update(mutual_information_nce(mi_soft, mi_hand, cfg.mi_temperature))
        loss = loss + cfg.mi_weight * terms["mi"]
        if "aug" in terms:
            loss = loss + cfg.aug_weight * terms["aug"]
    terms["loss"] = loss
    return terms
