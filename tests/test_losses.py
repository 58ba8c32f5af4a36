"""Loss terms and the class-wise augmentation, as pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualprompt.augment import classwise_mix, draw_partners
from dualprompt.config import MethodConfig
from dualprompt.losses import knowledge_guidance, method_loss, mutual_information_nce, soft_cross_entropy


def _separated(n: int, dim: int = 64) -> torch.Tensor:
    noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    return F.normalize(torch.eye(n, dim) + 0.01 * noise, dim=-1)


def test_mi_is_near_its_minimum_when_views_coincide_and_classes_separate():
    views = _separated(10)
    terms = mutual_information_nce(views, views, temperature=0.05)
    assert terms["mi"] < 1e-3  # minimum of InfoNCE is 0: the bound log N - L_mi reaches log N
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    shuffled = mutual_information_nce(views, views[permutation], 0.05)
    assert shuffled["mi"] > 1.0  # mismatched views are far from the minimum


def test_mi_of_views_that_cannot_tell_classes_apart_is_log_n_so_the_bound_is_zero():
    """Every row of both views the same: S is constant, each softmax is uniform, L_mi = log N exactly."""
    soft, hand = _separated(1).expand(10, -1), _separated(2)[1:].expand(10, -1)
    for temperature in (0.05, 1.0):
        terms = mutual_information_nce(soft, hand, temperature)
        for name in ("mi", "mi_soft_to_hand", "mi_hand_to_soft"):
            assert float(terms[name]) == pytest.approx(math.log(10), rel=1e-5), name


def test_mi_is_unchanged_by_permuting_classes():
    soft, hand = F.normalize(torch.randn(8, 32), dim=-1), F.normalize(torch.randn(8, 32), dim=-1)
    perm = torch.randperm(8)
    a, b = mutual_information_nce(soft, hand, 0.1), mutual_information_nce(soft[perm], hand[perm], 0.1)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_symmetric_mi_is_the_mean_of_both_directions():
    soft, hand = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    terms = mutual_information_nce(soft, hand, 0.07)
    torch.testing.assert_close(terms["mi"], 0.5 * (terms["mi_soft_to_hand"] + terms["mi_hand_to_soft"]))
    sim = soft @ hand.T / 0.07
    torch.testing.assert_close(terms["mi_hand_to_soft"], F.cross_entropy(sim.T, torch.arange(6)))
    assert not torch.allclose(terms["mi_soft_to_hand"], terms["mi_hand_to_soft"])


def test_knowledge_guidance_is_zero_for_identical_views_and_one_minus_cosine_otherwise():
    views = _separated(5)
    assert knowledge_guidance(views, views).abs() < 1e-6
    other = F.normalize(torch.randn(5, 64), dim=-1)
    expected = 1 - F.cosine_similarity(views, other).mean()
    torch.testing.assert_close(knowledge_guidance(views, other), expected)


def test_mixed_targets_sum_to_one_and_partners_are_of_another_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 1, 0])
    features = F.normalize(torch.randn(8, 16), dim=-1)
    for seed in range(20):
        mixed = classwise_mix(features, labels, 0.5, torch.Generator().manual_seed(seed), np.random.default_rng(seed))
        assert (mixed.partner_labels != mixed.labels).all()
        targets = mixed.soft_targets(4)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
        assert ((mixed.lam > 0) & (mixed.lam < 1)).all()
        torch.testing.assert_close(mixed.features.norm(dim=1), torch.ones(8))


def test_alpha_zero_means_no_augmentation():
    labels = torch.tensor([0, 1])
    assert classwise_mix(torch.randn(2, 4), labels, 0.0, torch.Generator(), np.random.default_rng()) is None
    cfg = MethodConfig(method="dualprompt", aug_strength=0.0)
    w = F.normalize(torch.randn(2, 4), dim=-1)
    terms = method_loss(cfg, 10.0, w, labels, w, w, torch.Generator(), np.random.default_rng())
    assert "aug" not in terms


def test_a_batch_of_one_class_is_left_unmixed():
    partners, found = draw_partners(torch.tensor([3, 3, 3]), torch.Generator().manual_seed(0))
    assert not found.any()
    mixed = classwise_mix(torch.randn(3, 4), torch.tensor([3, 3, 3]), 1.0, torch.Generator(), np.random.default_rng(0))
    assert (mixed.lam == 1).all()


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_methods_use_exactly_their_own_terms():
    labels, gen = torch.tensor([0, 1, 2, 0]), torch.Generator().manual_seed(0)
    z, w, h = (F.normalize(torch.randn(n, 8), dim=-1) for n in (4, 3, 3))
    rng = np.random.default_rng(0)
    coop = method_loss(MethodConfig(method="coop"), 10.0, z, labels, w, h, gen, rng)
    kg = method_loss(MethodConfig(method="kgcoop", kg_weight=8.0), 10.0, z, labels, w, h, gen, rng)
    dual_cfg = MethodConfig(method="dualprompt", aug_variant="virtual", mi_weight=0.5, aug_weight=2.0)
    dual = method_loss(dual_cfg, 10.0, z, labels, w, h, gen, rng)
    assert set(coop) == {"ce", "loss"}
    torch.testing.assert_close(kg["loss"], kg["ce"] + 8.0 * kg["kg"])
    assert {"ce", "mi", "aug", "loss"} <= set(dual) and "kg" not in dual and "mi" not in kg
    torch.testing.assert_close(dual["loss"], dual["ce"] + 0.5 * dual["mi"] + 2.0 * dual["aug"])
