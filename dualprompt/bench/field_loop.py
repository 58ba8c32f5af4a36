"""BASELINE (a): the field's loop (CoOp/KgCoOp), kept here on purpose; the package itself never encodes this way."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone
from ..data.types import Item
from ..features import render_view
from ..prompt_learner import PromptLearner

FIELD_TEST_BATCH = 100  # Dassl's TEST batch size: (a) re-encodes every prompt once per this many test images


def field_text_features(backbone: Backbone, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """BASELINE. CoOp's TextEncoder: every prompt over all `context_length` positions, pooled at its EOT.

    prompts [C, context_length, D] (soft context already spliced in), eot [C] -> L2-normalised [C, E].
    No truncation, no chunking, no checkpointing.
    """
    text = backbone.text
    x = prompts + text.positional_embedding.to(prompts.dtype)  # [C, context_length, D]
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask))
    pooled = x[torch.arange(x.shape[0], device=x.device), eot]  # [C, D]
    projection = text.text_projection
    pooled = projection(pooled) if isinstance(projection, nn.Module) else pooled @ projection
    return F.normalize(pooled, dim=-1)


class FieldPromptLearner(PromptLearner):
    """BASELINE. The same soft prompt (same `ctx`, same token layout), encoded the field's way."""

    def forward(self, classnames: tuple[str, ...] | list[str]) -> torch.Tensor:
        embeddings, eot = self._frozen_tokens(tuple(classnames))  # [C, context_length, D], [C]
        ctx = self.ctx.to(embeddings.dtype).unsqueeze(0).expand(embeddings.shape[0], -1, -1)  # [C, M, D]
        prompts = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + self.n_ctx :]], dim=1)
        return field_text_features(self.backbone, prompts, eot)


@torch.no_grad()
def field_evaluate(learner: FieldPromptLearner, items: Sequence[Item], transform, classnames: tuple[str, ...]) -> float:
    """BASELINE. CoOp's `model_inference`: per test batch, encode the images and re-encode every prompt."""
    correct = 0
    for start in range(0, len(items), FIELD_TEST_BATCH):
        batch = items[start : start + FIELD_TEST_BATCH]
        images = torch.stack([render_view(item.path, transform, None) for item in batch])
        logits = learner.backbone.encode_images(images) @ learner(classnames).T  # [b, C]
        labels = torch.tensor([item.label for item in batch])
        correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
    return 100.0 * correct / max(1, len(items))
