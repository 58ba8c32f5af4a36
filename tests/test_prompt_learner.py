"""The soft prompt: shared context, any class names, only the context trains."""

from __future__ import annotations

import torch

from dualprompt.config import PromptConfig
from dualprompt.losses import mutual_information_nce
from dualprompt.prompt_learner import PromptLearner

BASE, NEW = ("dog", "cat", "horse"), ("sea lion", "red panda")


def test_switching_to_new_class_names_changes_the_classifier_not_the_context(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    ctx_before = learner.ctx.detach().clone()
    base, new = learner(BASE), learner(NEW)
    assert base.shape == (3, 64) and new.shape == (2, 64)
    assert torch.equal(learner.ctx.detach(), ctx_before)
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
