"""The soft prompt: shared context, any class names, only the context trains."""

from __future__ import annotations

import pytest
import torch

from dualprompt.config import ConfigError, PromptConfig
from dualprompt.losses import mutual_information_nce
from dualprompt.prompt_learner import PromptLearner

BASE, NEW = ("dog", "cat", "horse"), ("sea lion", "red panda")


def test_switching_to_new_class_names_changes_the_classifier_not_the_context(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    with torch.no_grad():
        base, new, both = learner(BASE), learner(NEW), learner(BASE + NEW)
    assert base.shape == (3, 64) and new.shape == (2, 64)
    # A class's feature depends on its name and the context only, not on which other classes are listed
    # (prompts of different lengths share one padded, EOT-truncated pass).
    torch.testing.assert_close(both, torch.cat([base, new]), rtol=1e-5, atol=1e-6)
    assert (base @ new.T).max() < 1 - 1e-3  # the names change the classifier
    assert list(learner.state_dict()) == ["ctx"]  # the frozen CLIP is not part of the learner's state


def test_gradients_reach_only_the_context(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4), torch.Generator().manual_seed(0))
    handcrafted = test_clip.encode_texts([f"a photo of a {c}." for c in BASE])
    mutual_information_nce(learner(BASE), handcrafted, 0.07)["mi"].backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in test_clip.model.parameters())
    assert not any(p.requires_grad for p in test_clip.model.parameters())


def test_init_words_are_right_aligned_and_extra_positions_random(test_clip):
    words = test_clip.embed_tokens(torch.tensor(test_clip.word_ids("a photo of a")))
    eight = PromptLearner(test_clip, PromptConfig(n_ctx=8, ctx_init="a photo of a"), torch.Generator().manual_seed(0))
    torch.testing.assert_close(eight.ctx.detach()[4:], words)
    assert eight.ctx.detach()[:4].std() < 0.05  # N(0, 0.02^2)
    two = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init="a photo of a"))
    torch.testing.assert_close(two.ctx.detach(), words[2:])  # "of a"


def test_one_context_encodes_more_classes_than_the_text_tower_has_positions(test_clip):
    """100 class prompts (more than the 77 token positions): each gets its own feature, the same as when
    the classes are encoded in two halves."""
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4), torch.Generator().manual_seed(0))
    names = tuple(f"class number {i}" for i in range(100))
    with torch.no_grad():
        features = learner(names)
        halves = torch.cat([learner(names[:50]), learner(names[50:])])
    assert features.shape == (100, 64)
    torch.testing.assert_close(features, halves, rtol=1e-5, atol=1e-6)


def test_a_context_too_long_for_the_text_tower_is_refused_when_the_learner_is_built(tiny_clip):
    n_ctx = tiny_clip.context_length - 2  # SOS + context + one word + EOT is one token too many
    with pytest.raises(ConfigError, match=f"n_ctx: a prompt needs {n_ctx + 3} tokens"):
        PromptLearner(tiny_clip, PromptConfig(n_ctx=n_ctx, ctx_init=""))
    PromptLearner(tiny_clip, PromptConfig(n_ctx=n_ctx - 1, ctx_init=""))  # one fewer fits

