"""Every configuration knob the search turns or a method uses acts, and acts where it should.

Each test recomputes the expected value independently, from the loss functions' definitions
(README, "The method") and the same random generators, with values of the knob other than its
default and other than 1, so that a knob that is ignored, inverted or applied to the wrong term
gives a different number. CPU only, no Ray, no images (training reads random cached features).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dualprompt.augment import MixedBatch, classwise_mix, draw_partners
from dualprompt.config import CTX_FILLS, MethodConfig, OptimConfig, PromptConfig
from dualprompt.data.errors import DataError
from dualprompt.data.sampling import pseudo_split, sample_few_shot, subsample_classes
from dualprompt.data.types import DatasetSplits, Item
from dualprompt.evaluate import harmonic_mean
from dualprompt.features import CachedViews
from dualprompt.losses import knowledge_guidance, method_loss, mutual_information_nce
from dualprompt.prompt_learner import PromptLearner
from dualprompt.tables import summarise
from dualprompt.train import TrainTask, learning_rate, train_prompt, train_prompts

SCALE = 20.0  # a logit scale other than 1, so that a dropped scale shows
CLASSES = ("dog", "cat", "horse")


def unit_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    """n random L2-normalised rows [n, dim]."""
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image features z [6, 16] of labels [6] over 3 classes, soft w and hand-crafted h features [3, 16]."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return unit_rows(6, 16, seed), labels, unit_rows(3, 16, seed + 1), unit_rows(3, 16, seed + 2)


def partners_and_lam(labels: torch.Tensor, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The partner rows and lam ~ Beta(alpha, alpha) that generators seeded with `seed` give, drawn in the
    order the augmentation draws them (partners from the torch generator, then lam from numpy's)."""
    partners, _ = draw_partners(labels, torch.Generator().manual_seed(seed))
    lam = torch.as_tensor(np.random.default_rng(seed).beta(alpha, alpha, size=len(labels)), dtype=torch.float32)
    return partners, lam


def info_nce(soft: torch.Tensor, hand: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of InfoNCE over the class axis, from the definition S_ij = w_i . h_j / tau."""
    similarity = soft @ hand.T / tau
    targets = torch.arange(len(soft))
    return F.cross_entropy(similarity, targets), F.cross_entropy(similarity.T, targets)


# --- loss weights, temperature, augmentation strength and variant -----------------------------------


def test_mix_variant_loss_is_ce_plus_weighted_mi_and_aug_recomputed_from_their_definitions():
    z, labels, w, h = batch()
    cfg = MethodConfig(method="dualprompt", mi_weight=0.3, mi_temperature=0.2, aug_weight=2.5, aug_strength=0.7,
                       aug_variant="mix")
    terms = method_loss(cfg, SCALE, z, labels, w, h, torch.Generator().manual_seed(3), np.random.default_rng(3))

    partners, lam = partners_and_lam(labels, 0.7, seed=3)
    mixed = F.normalize(lam[:, None] * z + (1 - lam[:, None]) * z[partners], dim=-1)
    targets = lam[:, None] * F.one_hot(labels, 3) + (1 - lam[:, None]) * F.one_hot(labels[partners], 3)
    ce = F.cross_entropy(SCALE * z @ w.T, labels)
    aug = -(targets * F.log_softmax(SCALE * mixed @ w.T, dim=-1)).sum(dim=-1).mean()
    soft_to_hand, hand_to_soft = info_nce(w, h, 0.2)
    mi = (soft_to_hand + hand_to_soft) / 2

    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(terms["aug"], aug)
    torch.testing.assert_close(terms["mi_soft_to_hand"], soft_to_hand)
    torch.testing.assert_close(terms["mi_hand_to_soft"], hand_to_soft)
    torch.testing.assert_close(terms["mi"], mi)
    torch.testing.assert_close(terms["loss"], ce + 0.3 * mi + 2.5 * aug)


def test_virtual_variant_loss_makes_each_mixed_feature_its_own_class_in_ce_and_mi():
    z, labels, w, h = batch()
    cfg = MethodConfig(method="dualprompt", mi_weight=1.7, mi_temperature=0.5, aug_weight=0.4, aug_strength=2.0,
                       aug_variant="virtual")
    terms = method_loss(cfg, SCALE, z, labels, w, h, torch.Generator().manual_seed(5), np.random.default_rng(5))

    partners, lam = partners_and_lam(labels, 2.0, seed=5)
    lam_col = lam[:, None]
    mixed = F.normalize(lam_col * z + (1 - lam_col) * z[partners], dim=-1)
    w_all = torch.cat([w, F.normalize(lam_col * w[labels] + (1 - lam_col) * w[labels[partners]], dim=-1)])  # [3+6, E]
    h_all = torch.cat([h, F.normalize(lam_col * h[labels] + (1 - lam_col) * h[labels[partners]], dim=-1)])
    ce = F.cross_entropy(SCALE * z @ w.T, labels)
    aug = F.cross_entropy(SCALE * mixed @ w_all.T, 3 + torch.arange(6))  # row b's class is virtual class 3 + b
    mi = sum(info_nce(w_all, h_all, 0.5)) / 2

    torch.testing.assert_close(terms["ce"], ce)
    torch.testing.assert_close(terms["aug"], aug)
    torch.testing.assert_close(terms["mi"], mi)
    torch.testing.assert_close(terms["loss"], ce + 1.7 * mi + 0.4 * aug)


def test_the_two_aug_variants_give_different_augmentation_terms_on_the_same_draw():
    z, labels, w, h = batch(seed=7)
    aug = {}
    for variant in ("mix", "virtual"):
        cfg = MethodConfig(method="dualprompt", aug_variant=variant)
        aug[variant] = method_loss(cfg, SCALE, z, labels, w, h, torch.Generator().manual_seed(1),
                                   np.random.default_rng(1))["aug"]
    assert abs(float(aug["mix"] - aug["virtual"])) > 1e-2


@pytest.mark.parametrize("variant", ["mix", "virtual"])
def test_mi_and_aug_weights_scale_only_their_own_term(variant):
    """Changing one weight moves the loss by exactly (change) x (its term), and by nothing else."""
    z, labels, w, h = batch(seed=11)

    def run(**weights):
        cfg = MethodConfig(method="dualprompt", aug_variant=variant, **weights)
        return method_loss(cfg, SCALE, z, labels, w, h, torch.Generator().manual_seed(2), np.random.default_rng(2))

    reference = run(mi_weight=1.0, aug_weight=1.0)
    more_mi, more_aug = run(mi_weight=4.0, aug_weight=1.0), run(mi_weight=1.0, aug_weight=0.25)
    off = run(mi_weight=0.0, aug_weight=0.0)
    torch.testing.assert_close(more_mi["loss"] - reference["loss"], 3.0 * reference["mi"])
    torch.testing.assert_close(more_aug["loss"] - reference["loss"], -0.75 * reference["aug"])
    torch.testing.assert_close(off["loss"], reference["ce"])
    assert float(reference["mi"]) > 0.1 and float(reference["aug"]) > 0.1  # both terms are large enough to see


def test_kg_weight_scales_one_minus_the_mean_cosine_of_the_two_views():
    z, labels, w, h = batch(seed=13)
    for kg_weight in (0.0, 3.0, 8.0):
        terms = method_loss(MethodConfig(method="kgcoop", kg_weight=kg_weight), SCALE, z, labels, w, h,
                            torch.Generator(), np.random.default_rng())
        kg = 1 - F.cosine_similarity(w, h, dim=-1).mean()
        torch.testing.assert_close(terms["kg"], kg)
        torch.testing.assert_close(terms["loss"], F.cross_entropy(SCALE * z @ w.T, labels) + kg_weight * kg)


def test_coop_loss_is_plain_ce_whatever_the_other_methods_weights():
    z, labels, w, h = batch(seed=17)
    cfg = MethodConfig(method="coop", mi_weight=5.0, kg_weight=5.0, aug_weight=5.0, aug_strength=1.0)
    terms = method_loss(cfg, SCALE, z, labels, w, h, torch.Generator(), np.random.default_rng())
    assert set(terms) == {"ce", "loss"}
    torch.testing.assert_close(terms["loss"], F.cross_entropy(SCALE * z @ w.T, labels))


def test_mi_temperature_divides_the_similarity_of_the_two_views():
    soft, hand = unit_rows(5, 8, 21), unit_rows(5, 8, 22)
    for tau in (0.05, 0.5, 2.0):
        terms = mutual_information_nce(soft, hand, tau)
        soft_to_hand, hand_to_soft = info_nce(soft, hand, tau)
        torch.testing.assert_close(terms["mi_soft_to_hand"], soft_to_hand)
        torch.testing.assert_close(terms["mi_hand_to_soft"], hand_to_soft)
    # A lower temperature sharpens the softmax: for well-aligned views the loss falls towards 0.
    aligned = F.normalize(hand + 0.05 * soft, dim=-1)
    assert mutual_information_nce(aligned, hand, 0.02)["mi"] < 0.5 * mutual_information_nce(aligned, hand, 0.5)["mi"]


def test_knowledge_guidance_is_zero_only_when_the_views_agree():
    views = unit_rows(4, 8, 23)
    assert float(knowledge_guidance(views, views)) == pytest.approx(0.0, abs=1e-6)
    assert float(knowledge_guidance(views, -views)) == pytest.approx(2.0, abs=1e-6)


def test_classwise_mix_is_normalize_of_lam_z_plus_one_minus_lam_partner():
    z, labels, _, _ = batch(seed=29)
    for alpha in (0.3, 4.0):
        mixed = classwise_mix(z, labels, alpha, torch.Generator().manual_seed(8), np.random.default_rng(8))
        partners, lam = partners_and_lam(labels, alpha, seed=8)
        torch.testing.assert_close(mixed.lam, lam)
        torch.testing.assert_close(mixed.partner_labels, labels[partners])
        torch.testing.assert_close(mixed.labels, labels)
        torch.testing.assert_close(mixed.features, F.normalize(lam[:, None] * z + (1 - lam[:, None]) * z[partners],
                                                               dim=-1))
        # The own image keeps weight lam: the mix is closer to z than to its partner where lam > 1/2.
        own, other = (mixed.features * z).sum(-1), (mixed.features * z[partners]).sum(-1)
        assert torch.equal(own > other, lam > 0.5)


def test_aug_strength_is_the_beta_parameter_of_lam():
    labels = torch.arange(4).repeat(250)  # 1000 rows
    z = unit_rows(1000, 4, 31)
    for alpha in (0.2, 1.0, 30.0):
        mixed = classwise_mix(z, labels, alpha, torch.Generator().manual_seed(0), np.random.default_rng(9))
        expected = np.random.default_rng(9).beta(alpha, alpha, size=1000)
        np.testing.assert_allclose(mixed.lam.numpy(), expected, rtol=1e-6)
        # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)).
        assert mixed.lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.15)


def test_mixed_batch_soft_targets_and_virtual_features_weight_own_class_by_lam():
    labels, partner_labels = torch.tensor([0, 2]), torch.tensor([1, 0])
    lam = torch.tensor([0.8, 0.3])
    mixed = MixedBatch(unit_rows(2, 4, 0), labels, partner_labels, lam)
    expected = torch.tensor([[0.8, 0.2, 0.0, 0.0], [0.7, 0.0, 0.3, 0.0]])  # class 3 is in no row of the batch
    torch.testing.assert_close(mixed.soft_targets(4), expected)
    w = unit_rows(3, 4, 33)
    virtual = torch.stack([0.8 * w[0] + 0.2 * w[1], 0.3 * w[2] + 0.7 * w[0]])
    torch.testing.assert_close(mixed.virtual_features(w), F.normalize(virtual, dim=-1))


# --- the schedule: lr, warm-up, epochs --------------------------------------------------------------


def test_learning_rate_is_warmup_then_cosine_from_lr_to_zero():
    cfg = OptimConfig(epochs=10, lr=0.01, warmup_epochs=1, warmup_lr=1e-4)
    assert learning_rate(cfg, 0) == 1e-4  # the warm-up epoch
    assert learning_rate(cfg, 1) == pytest.approx(0.01)  # the first cosine epoch starts at lr
    assert learning_rate(cfg, 5) == pytest.approx(0.5 * 0.01 * (1 + math.cos(math.pi * 4 / 9)))
    assert learning_rate(cfg, 9) == pytest.approx(0.5 * 0.01 * (1 + math.cos(math.pi * 8 / 9)))  # the last epoch
    decay = [learning_rate(cfg, epoch) for epoch in range(1, 10)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))


def test_warmup_epochs_and_warmup_lr_hold_the_rate_then_cosine_starts():
    cfg = OptimConfig(epochs=8, lr=0.05, warmup_epochs=3, warmup_lr=2e-3)
    assert [learning_rate(cfg, epoch) for epoch in range(3)] == [2e-3] * 3
    assert learning_rate(cfg, 3) == pytest.approx(0.05)
    assert learning_rate(cfg, 7) == pytest.approx(0.5 * 0.05 * (1 + math.cos(math.pi * 4 / 5)))
    no_warmup = OptimConfig(epochs=4, lr=0.05, warmup_epochs=0)
    assert learning_rate(no_warmup, 0) == pytest.approx(0.05)
    assert learning_rate(no_warmup, 2) == pytest.approx(0.5 * 0.05 * (1 + math.cos(math.pi * 2 / 4)))


def cached_views(n_images: int, n_views: int, dim: int, seed: int) -> CachedViews:
    """Random normalised training features [N, V, E], standing in for encoded images."""
    return CachedViews(F.normalize(torch.randn(n_images, n_views, dim, generator=torch.Generator().manual_seed(seed)),
                                   dim=-1))


def test_train_prompt_steps_sgd_with_the_schedules_rate_each_epoch(test_clip):
    """One full batch per epoch and CoOp's loss, so each step's gradient is known: the trained context equals
    SGD with momentum and weight decay run by hand at warmup_lr, then lr, then the cosine's lr / 2."""
    n_images, init = 6, torch.Generator().manual_seed(0)
    optim = OptimConfig(epochs=3, batch_size=32, lr=0.5, momentum=0.9, weight_decay=0.01, warmup_epochs=1,
                        warmup_lr=0.05)
    trained = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), init)
    by_hand = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(0))
    start = by_hand.ctx.detach().clone()
    views, labels = cached_views(n_images, 1, 64, seed=1), torch.tensor([0, 1, 2, 0, 1, 2])
    handcrafted = unit_rows(3, 64, 2)
    log = train_prompt(trained, views, labels, 1, CLASSES, handcrafted, MethodConfig(method="coop"), optim, seed=0)

    features, momentum = views.features[:, 0], None
    for rate in (0.05, 0.5, 0.25):  # warm-up, first cosine epoch (progress 0), last (progress 1/2)
        loss = F.cross_entropy(test_clip.logit_scale * features @ by_hand(CLASSES).T, labels)
        (grad,) = torch.autograd.grad(loss, by_hand.ctx)
        with torch.no_grad():
            step = grad + 0.01 * by_hand.ctx
            momentum = step if momentum is None else 0.9 * momentum + step
            by_hand.ctx -= rate * momentum
    # Float32 round-off of three steps at rates up to 0.5 on a context of scale 2 reaches 2e-6 (on either
    # text path); a wrong rate in any epoch moves the context by 1e-2 or more (below).
    torch.testing.assert_close(trained.ctx.detach(), by_hand.ctx.detach(), rtol=1e-4, atol=1e-5)
    assert (by_hand.ctx.detach() - start).abs().max() > 1e-2  # the steps moved the context visibly
    assert log.steps == 3 and len(log.epoch_terms) == 3


@pytest.mark.parametrize("epochs,batch_size,steps_per_epoch", [(1, 4, 3), (2, 4, 3), (3, 10, 1)])
def test_epochs_and_batch_size_set_the_number_of_logged_epochs_and_steps(test_clip, epochs, batch_size,
                                                                          steps_per_epoch):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # 10 images
    optim = OptimConfig(epochs=epochs, batch_size=batch_size, warmup_epochs=0)
    log = train_prompt(learner, cached_views(10, 2, 64, 3), labels, 2, CLASSES, unit_rows(3, 64, 4),
                       MethodConfig(method="dualprompt"), optim, seed=1)
    assert len(log.epoch_terms) == epochs
    assert log.steps == epochs * steps_per_epoch
    assert all({"ce", "mi", "aug", "loss"} <= set(terms) for terms in log.epoch_terms)


def test_logged_epoch_terms_are_the_means_of_their_steps_and_train_s_is_the_loops_time(test_clip):
    """Two equal batches per epoch and a rate of 1e-12 (the context stays put), so the epoch's mean CE over
    its two steps is the CE of all eight images at the initial context."""
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(0))
    views, labels = cached_views(8, 1, 64, seed=7), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        expected = F.cross_entropy(test_clip.logit_scale * views.features[:, 0] @ learner(CLASSES).T, labels)
    optim = OptimConfig(epochs=1, batch_size=4, lr=1e-12, momentum=0.0, weight_decay=0.0, warmup_epochs=0)
    start = time.perf_counter()
    log = train_prompt(learner, views, labels, 1, CLASSES, unit_rows(3, 64, 8), MethodConfig(method="coop"), optim,
                       seed=3)
    elapsed = time.perf_counter() - start
    assert log.steps == 2 and set(log.epoch_terms[0]) == {"ce", "loss"}
    assert log.epoch_terms[0]["ce"] == pytest.approx(float(expected), rel=1e-5)
    assert log.epoch_terms[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert 0 < log.train_s <= elapsed


def test_jobs_trained_together_follow_their_own_paths(test_clip):
    """`train_prompts`: three jobs (other classes, images, views and seeds; the full dual-view loss with its
    random augmentation) in lockstep end where each ends trained alone, up to float round-off, with the
    same logged terms; the joint loop's time is shared equally. Lockstep needs equal steps per epoch."""
    optim = OptimConfig(epochs=3, batch_size=4, lr=0.02, warmup_epochs=1)
    method = MethodConfig(method="dualprompt", mi_weight=1.0, aug_strength=1.0)
    classes = [CLASSES, ("lion", "sea lion"), ("red panda", "x", "dog", "newt")]
    labels = [torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.tensor([0, 1] * 4), torch.tensor([0, 1, 2, 3, 3, 2, 1])]

    def task(j: int, n_images: int | None = None) -> TrainTask:
        learner = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(j))
        job_labels = labels[j] if n_images is None else labels[j].repeat(2)[:n_images]
        return TrainTask(learner, cached_views(len(job_labels), 2 + j, 64, seed=10 + j), job_labels, 2 + j,
                         classes[j], unit_rows(len(classes[j]), 64, 20 + j), seed=30 + j)

    alone_tasks, joint_tasks = [task(j) for j in range(3)], [task(j) for j in range(3)]
    alone = [train_prompts([t], method, optim)[0] for t in alone_tasks]
    joint = train_prompts(joint_tasks, method, optim)
    for j, (t, log, own, own_log) in enumerate(zip(joint_tasks, joint, alone_tasks, alone, strict=True)):
        assert (own.learner.ctx - task(j).learner.ctx).abs().max() > 1e-2  # training moved the context
        torch.testing.assert_close(t.learner.ctx.detach(), own.learner.ctx.detach(), rtol=1e-4, atol=1e-6)
        assert log.steps == own_log.steps == 6
        for terms, own_terms in zip(log.epoch_terms, own_log.epoch_terms, strict=True):
            assert terms.keys() == own_terms.keys() and {"ce", "mi", "aug", "loss"} <= terms.keys()
            assert terms == pytest.approx(own_terms, rel=1e-4)
    assert len({log.train_s for log in joint}) == 1 and joint[0].train_s > 0
    with pytest.raises(ValueError, match="same number of steps per epoch"):
        train_prompts([task(0), task(1, n_images=12)], method, optim)  # 2 steps an epoch and 3


class RecordingViews:
    """A view source that says it encodes images (as `EncodedViews` does), recording what it is asked for."""

    encodes_images = True

    def __init__(self, features: torch.Tensor) -> None:
        self.features, self.calls = features, []

    def get(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        self.calls.append((indices.tolist(), views.tolist()))
        return self.features[indices, views]


def test_a_view_source_that_encodes_images_trains_exactly_like_the_cache(test_clip):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    cached = cached_views(7, 3, 64, seed=9)
    encoding = RecordingViews(cached.features)
    method, optim = MethodConfig(method="dualprompt"), OptimConfig(epochs=2, batch_size=3, lr=0.5)
    runs = []
    for views in (cached, encoding):
        learner = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(0))
        log = train_prompt(learner, views, labels, 3, CLASSES, unit_rows(3, 64, 10), method, optim, seed=4)
        runs.append((learner.ctx.detach(), log.epoch_terms))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert len(encoding.calls) == 2 * 3  # one request per step: batches of 3, 3 and 1 images, two epochs
    for epoch in range(2):
        asked = [i for indices, _ in encoding.calls[3 * epoch : 3 * epoch + 3] for i in indices]
        assert sorted(asked) == list(range(7))  # each image once per epoch
    assert all(0 <= v < 3 for _, views in encoding.calls for v in views)


def test_training_seed_reproduces_a_run_and_another_seed_changes_it(test_clip):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    views, hand = cached_views(8, 3, 64, 5), unit_rows(3, 64, 6)
    method, optim = MethodConfig(method="dualprompt", aug_strength=1.0), OptimConfig(epochs=2, batch_size=4, lr=0.5)

    def train(seed: int) -> tuple[torch.Tensor, list[dict[str, float]]]:
        learner = PromptLearner(test_clip, PromptConfig(n_ctx=2, ctx_init=""), torch.Generator().manual_seed(0))
        log = train_prompt(learner, views, labels, 3, CLASSES, hand, method, optim, seed=seed)
        return learner.ctx.detach(), log.epoch_terms

    (ctx_a, log_a), (ctx_b, log_b), (ctx_c, log_c) = train(1), train(1), train(2)
    assert torch.equal(ctx_a, ctx_b) and log_a == log_b
    assert not torch.allclose(ctx_a, ctx_c) and log_a[-1]["aug"] != log_c[-1]["aug"]


# --- the soft prompt: n_ctx, ctx_init and the init seed ---------------------------------------------


@pytest.mark.parametrize("n_ctx", [2, 4, 7])
def test_n_ctx_and_ctx_init_set_the_initial_context(test_clip, n_ctx):
    """The init words' embeddings fill the last positions ("... a photo of a {class}."); with the random fill
    the others are the generator's N(0, 0.02^2) draws."""
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=n_ctx, ctx_init="a photo of a", ctx_fill="random"),
                            torch.Generator().manual_seed(4))
    expected = torch.randn(n_ctx, test_clip.token_dim, generator=torch.Generator().manual_seed(4)) * 0.02
    words = test_clip.embed_tokens(torch.tensor(test_clip.word_ids("a photo of a"))).detach()  # [4, D]
    kept = min(n_ctx, 4)
    expected[n_ctx - kept :] = words[4 - kept :]
    assert learner.ctx.shape == (n_ctx, test_clip.token_dim)
    torch.testing.assert_close(learner.ctx.detach(), expected)


@pytest.mark.parametrize("n_ctx", [2, 4, 7])
def test_ctx_fill_words_repeats_the_init_words_over_every_position_whatever_the_seed(test_clip, n_ctx):
    """ "... a photo of a a photo of a": position M - 1 - i holds word 3 - (i mod 4), the same on every seed;
    up to 4 vectors it is the random fill's context exactly (the words cover every position there)."""
    words = test_clip.embed_tokens(torch.tensor(test_clip.word_ids("a photo of a"))).detach()  # [4, D]
    expected = torch.stack([words[3 - (i % 4)] for i in reversed(range(n_ctx))])  # [n_ctx, D]

    def ctx(fill: str, seed: int) -> torch.Tensor:
        cfg = PromptConfig(n_ctx=n_ctx, ctx_init="a photo of a", ctx_fill=fill)
        return PromptLearner(test_clip, cfg, torch.Generator().manual_seed(seed)).ctx.detach()

    torch.testing.assert_close(ctx("words", 4), expected)
    assert torch.equal(ctx("words", 4), ctx("words", 5))
    assert torch.equal(ctx("words", 4), ctx("random", 4)) == (n_ctx <= 4)


@pytest.mark.parametrize("fill", CTX_FILLS)
def test_empty_ctx_init_draws_the_whole_context_from_the_seeded_generator(test_clip, fill):
    """Without init words there is nothing to repeat: every position is drawn, whatever the fill."""
    def ctx(seed: int) -> torch.Tensor:
        cfg = PromptConfig(n_ctx=5, ctx_init="", ctx_fill=fill)
        return PromptLearner(test_clip, cfg, torch.Generator().manual_seed(seed)).ctx.detach()

    expected = torch.randn(5, test_clip.token_dim, generator=torch.Generator().manual_seed(3)) * 0.02
    torch.testing.assert_close(ctx(3), expected)
    assert torch.equal(ctx(3), ctx(3)) and not torch.allclose(ctx(3), ctx(4))


def test_every_context_vector_reaches_the_text_features(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=6, ctx_init=""), torch.Generator().manual_seed(0))
    learner(CLASSES).sum().backward()
    assert (learner.ctx.grad.abs().sum(dim=1) > 0).all()


# --- the few-shot sample: shots and seed ------------------------------------------------------------


def toy_splits(per_class: int = 12, n_classes: int = 3) -> DatasetSplits:
    """An in-memory dataset: `per_class` train and val items per class, two test items per class."""
    names = tuple(f"class {c}" for c in range(n_classes))

    def items(split: str, count: int) -> tuple[Item, ...]:
        return tuple(Item(f"/toy/{split}/{c}/{i:03d}.png", c, names[c]) for c in range(n_classes) for i in range(count))

    return DatasetSplits("toy", names, items("train", per_class), items("val", per_class), items("test", 2))


@pytest.mark.parametrize("mode", ["stable", "coop"])
@pytest.mark.parametrize("shots,val_shots", [(1, 1), (3, 3), (7, 4)])
def test_shots_is_the_number_of_train_images_per_class(mode, shots, val_shots):
    splits = toy_splits()
    few = sample_few_shot(splits, shots, seed=1, mode=mode)
    assert Counter(item.label for item in few.train) == {0: shots, 1: shots, 2: shots}
    assert Counter(item.label for item in few.val) == {0: val_shots, 1: val_shots, 2: val_shots}
    assert set(few.train) <= set(splits.train) and set(few.val) <= set(splits.val) and few.test == splits.test


@pytest.mark.parametrize("mode", ["stable", "coop"])
def test_seed_changes_the_few_shot_sample_and_the_same_seed_reproduces_it(mode):
    splits = toy_splits()
    first, again = sample_few_shot(splits, 4, seed=1, mode=mode), sample_few_shot(splits, 4, seed=1, mode=mode)
    other = sample_few_shot(splits, 4, seed=2, mode=mode)
    assert first == again
    assert set(first.train) != set(other.train) and set(first.val) != set(other.val)


def test_stable_sample_is_pinned_for_a_given_dataset_and_seed():
    """The "stable" sample is the same on any machine and in any version: a change here changes published
    few-shot sets (update only on purpose, with a note in DATASETS.md)."""
    few = sample_few_shot(toy_splits(), 2, seed=1)
    assert [item.path.removeprefix("/toy/") for item in few.train] == [
        "train/0/000.png", "train/0/008.png", "train/1/004.png", "train/1/003.png", "train/2/004.png",
        "train/2/003.png",
    ]
    assert [item.path.removeprefix("/toy/") for item in few.val] == [
        "val/0/004.png", "val/0/008.png", "val/1/010.png", "val/1/005.png", "val/2/004.png", "val/2/008.png",
    ]


@pytest.mark.parametrize("mode", ["stable", "coop"])
def test_without_a_val_split_the_val_shots_are_train_images_not_chosen_as_train_shots(mode):
    """ImageNet's case: model selection must never see test images, so val comes from the rest of train."""
    splits = replace(toy_splits(per_class=7), val=())
    few = sample_few_shot(splits, 3, seed=1, mode=mode)
    assert Counter(item.label for item in few.train) == {0: 3, 1: 3, 2: 3}
    assert Counter(item.label for item in few.val) == {0: 3, 1: 3, 2: 3}
    assert set(few.val) <= set(splits.train) and not set(few.val) & set(few.train)
    exactly_enough = replace(toy_splits(per_class=6), val=())  # 3 shots + 3 val shots
    assert len(sample_few_shot(exactly_enough, 3, seed=1, mode=mode).val) == 9
    with pytest.raises(DataError, match=r"has only 5 train \(shots plus val shots\) images where 6 are needed"):
        sample_few_shot(replace(toy_splits(per_class=5), val=()), 3, seed=1, mode=mode)


def test_coop_mode_samples_a_class_of_exactly_k_images_like_dassl():
    """Dassl calls random.sample(items, K) even when a class has exactly K items, which permutes them and
    moves the generator on, so the classes after it get Dassl's samples too."""
    splits = toy_splits(per_class=4)
    rng = random.Random(2)
    train = [item for c in range(3) for item in rng.sample([i for i in splits.train if i.label == c], 4)]
    val = [item for c in range(3) for item in rng.sample([i for i in splits.val if i.label == c], 4)]
    few = sample_few_shot(splits, 4, seed=2, mode="coop")
    assert list(few.train) == train and list(few.val) == val


@pytest.mark.parametrize("shots", [0, -1, True, 2.0])
def test_shots_must_be_a_positive_integer(shots):
    with pytest.raises(DataError, match="shots must be a positive integer, got"):
        sample_few_shot(toy_splits(), shots, seed=1)
    with pytest.raises(DataError, match="Unknown few-shot sampling mode 'dassl'"):
        sample_few_shot(toy_splits(), 2, seed=1, mode="dassl")


def test_a_class_short_of_val_images_is_refused_naming_the_split():
    splits = replace(toy_splits(), val=toy_splits(per_class=2).val)
    with pytest.raises(DataError, match="'class 0' has only 2 val images where 3 are needed .* allow_fewer=True"):
        sample_few_shot(splits, 3, seed=1)
    assert Counter(item.label for item in sample_few_shot(splits, 3, seed=1, allow_fewer=True).val) == {
        0: 2, 1: 2, 2: 2}


def test_a_test_only_dataset_and_an_unknown_class_subset_are_refused_in_one_sentence():
    with pytest.raises(DataError, match=r"^toy has no train images .* source dataset \(e\.g\. imagenet\) instead\.$"):
        sample_few_shot(replace(toy_splits(), train=(), val=()), 2, seed=1)
    with pytest.raises(DataError, match="Unknown class subset 'novel'; use 'all', 'base' or 'new'."):
        subsample_classes(toy_splits(), "novel")


def test_the_pseudo_split_of_two_base_classes_holds_one_out():
    pseudo_base, pseudo_new = pseudo_split(toy_splits(n_classes=2))
    assert pseudo_base.classnames == ("class 0",) and pseudo_new.classnames == ("class 1",)
    with pytest.raises(DataError, match="has 1 base class, too few to hold out pseudo-new classes"):
        pseudo_split(toy_splits(n_classes=1))


# --- the table's Average row ------------------------------------------------------------------------


def test_harmonic_mean_values():
    assert harmonic_mean(80.0, 40.0) == pytest.approx(160 / 3)
    assert harmonic_mean(40.0, 80.0) == pytest.approx(160 / 3)
    assert harmonic_mean(70.0, 70.0) == pytest.approx(70.0)
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4)  # accuracies given as fractions work too
    assert harmonic_mean(90.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0


def final_rows(records: list[tuple[str, str, int, float, float, str]]) -> pd.DataFrame:
    """Minimal final-stage rows: (method, dataset, seed, base, new, status)."""
    rows = [{"stage": "final", "protocol": "base2new", "method": m, "variant": m, "dataset": d, "seed": s,
             "acc_test_base": b, "acc_test_new": n, "hm_test": harmonic_mean(b, n), "status": st,
             "backbone": "tiny-synthetic", "pretrained": "synthetic"} for m, d, s, b, n, st in records]
    return pd.DataFrame(rows)


def test_summary_average_row_is_the_hm_of_the_averaged_base_and_new():
    rows = final_rows([
        ("coop", "a", 1, 90.0, 30.0, "ok"), ("coop", "a", 2, 80.0, 50.0, "ok"),
        ("coop", "b", 1, 50.0, 90.0, "ok"), ("coop", "b", 2, 60.0, 70.0, "ok"),
        ("coop", "b", 3, math.nan, math.nan, "failed"),
    ])
    summary = summarise(rows)
    table = summary.set_index(["dataset", "variant" if "variant" in summary else "method"])
    a_base, a_new, b_base, b_new = 85.0, 40.0, 55.0, 80.0
    assert table.loc[("a", "coop"), "base"] == pytest.approx(a_base)
    assert table.loc[("a", "coop"), "new"] == pytest.approx(a_new)
    assert table.loc[("a", "coop"), "hm"] == pytest.approx(2 * a_base * a_new / (a_base + a_new))
    assert table.loc[("b", "coop"), "n_seeds"] == 2 and table.loc[("b", "coop"), "n_failed"] == 1
    assert table.loc[("a", "coop"), "base_std"] == pytest.approx(np.std([90.0, 80.0], ddof=1))
    base, new = (a_base + b_base) / 2, (a_new + b_new) / 2
    average = table.loc[("average", "coop")]
    assert average["base"] == pytest.approx(base) and average["new"] == pytest.approx(new)
    assert average["hm"] == pytest.approx(2 * base * new / (base + new))
    mean_of_hms = (table.loc[("a", "coop"), "hm"] + table.loc[("b", "coop"), "hm"]) / 2
    assert abs(average["hm"] - mean_of_hms) > 1.0  # the two conventions differ on these numbers
    assert average["n_failed"] == 1 and average["n_seeds"] == 2
    assert table.loc[("b", "coop"), "new_std"] == pytest.approx(np.std([90.0, 70.0], ddof=1))
    assert table.loc[("a", "coop"), "n_failed"] == 0
    key = summary.columns[0]
    assert key in ("method", "variant")
    assert list(summary.columns) == [key, "dataset", "base", "base_std", "new", "new_std", "hm", "hm_std", "n_seeds",
                                     "n_failed"]
    assert list(summary.index) == list(range(len(summary)))


def test_summary_keeps_a_dataset_whose_every_seed_failed_and_orders_methods_as_the_papers():
    rows = final_rows([
        ("my_method", "a", 1, 60.0, 60.0, "ok"),
        ("dualprompt", "a", 1, 80.0, 70.0, "ok"), ("kgcoop", "a", 1, 75.0, 72.0, "ok"),
        ("coop", "a", 1, 82.0, 60.0, "ok"), ("zeroshot", "a", 1, 70.0, 74.0, "ok"),
        ("coop", "b", 1, math.nan, math.nan, "failed"), ("coop", "b", 2, math.nan, math.nan, "failed"),
    ])
    summary = summarise(rows)
    key = summary.columns[0]
    on_a = summary[summary["dataset"] == "a"]
    assert list(on_a[key]) == ["zeroshot", "coop", "kgcoop", "dualprompt", "my_method"]  # unknown names last
    assert pd.api.types.is_integer_dtype(summary["n_seeds"]) and pd.api.types.is_integer_dtype(summary["n_failed"])
    failed = summary[(summary["dataset"] == "b") & (summary[key] == "coop")].iloc[0]
    assert failed["n_seeds"] == 0 and failed["n_failed"] == 2 and math.isnan(failed["base"])
    empty = summarise(final_rows([("coop", "a", 1, 80.0, 70.0, "ok")]).assign(stage="search"))
    assert empty.empty and list(empty.columns) == list(summary.columns)
