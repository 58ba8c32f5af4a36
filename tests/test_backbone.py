"""The backbone: exact truncated text encoding, and clear errors for bad backbones and contexts."""

from __future__ import annotations

import pytest
import torch

from dualprompt.backbone import load_backbone
from dualprompt.config import BackboneConfig, ConfigError, PromptConfig
from dualprompt.prompt_learner import PromptLearner

PROMPTS = ["a photo of a dog.", "a photo of a great crested newt, a type of amphibian.", "x."]


def test_truncated_encoding_matches_full_context(test_clip):
    """Stopping at the longest prompt's EOT equals open_clip's own 77-token encode_text (causal attention)."""
    full_ids = test_clip.tokenizer(PROMPTS)  # [3, 77], padded to the full context
    with torch.no_grad():
        full = torch.nn.functional.normalize(test_clip.model.encode_text(full_ids), dim=-1)
    truncated = test_clip.encode_texts(PROMPTS)
    assert truncated.shape == full.shape
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=0)


def test_chunked_encoding_matches_unchunked(test_clip):
    chunked = load_backbone(BackboneConfig(backbone="test-clip", pretrained="random", text_chunk_size=1))
    chunked.model.load_state_dict(test_clip.model.state_dict())
    torch.testing.assert_close(chunked.encode_texts(PROMPTS), test_clip.encode_texts(PROMPTS), atol=1e-6, rtol=0)


def test_chunked_training_gives_the_same_features_and_gradients(test_clip):
    """Chunks recomputed in backward (the 1000-class memory mechanism) change nothing but memory."""
    chunked = load_backbone(BackboneConfig(backbone="test-clip", pretrained="random", text_chunk_size=3))
    chunked.model.load_state_dict(test_clip.model.state_dict())
    names = tuple(f"class number {i}" for i in range(7))
    plain_learner = PromptLearner(test_clip, PromptConfig(), torch.Generator().manual_seed(0))
    chunked_learner = PromptLearner(chunked, PromptConfig(), torch.Generator().manual_seed(0))
    plain, chunked_features = plain_learner(names), chunked_learner(names)
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), plain_learner.ctx)
    (grad_chunked,) = torch.autograd.grad(chunked_features.square().sum(), chunked_learner.ctx)
    torch.testing.assert_close(chunked_features, plain)
    torch.testing.assert_close(grad_chunked, grad_plain)


def test_soft_prompt_with_init_words_equals_the_hand_written_prompt(test_clip):
    """With ctx initialised from "a photo of a", the soft prompt is exactly the text "a photo of a {}."."""
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4, ctx_init="a photo of a"))
    with torch.no_grad():
        soft = learner(("dog", "sea lion"))
    hand = test_clip.encode_texts(["a photo of a dog.", "a photo of a sea lion."])
    torch.testing.assert_close(soft, hand, atol=1e-5, rtol=0)


def test_unknown_backbone_names_the_closest(test_clip):
    with pytest.raises(ConfigError, match="backbone: 'ViT-B-61' is not an open_clip model name.*ViT-B-16"):
        load_backbone(BackboneConfig(backbone="ViT-B-61", pretrained="openai"))


def test_unknown_pretrained_tag(test_clip):
    with pytest.raises(ConfigError, match="pretrained: 'imagenet' is not a known tag for ViT-B-16"):
        load_backbone(BackboneConfig(backbone="ViT-B-16", pretrained="imagenet"))


def test_context_longer_than_the_text_tower_is_refused(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=64, ctx_init=""))
    ten_words = "one two three four five six seven eight nine ten"
    assert learner((ten_words,)).shape == (1, 64)  # SOS + 64 + 10 words + "." + EOT = 77 tokens: fits
    with pytest.raises(ConfigError, match="n_ctx: a prompt needs 78 tokens .* holds 77; lower n_ctx"):
        learner((ten_words + " eleven",))
