"""End to end on the offline world: training works, and the feature cache changes nothing but speed."""

from __future__ import annotations

import pytest
import torch

from dualprompt.config import Config
from dualprompt.data.synthetic import OFFLINE_TRAINING
from dualprompt.experiment import Experiment

pytestmark = pytest.mark.slow  # about a minute on a 2-core CPU

QUICK = {"dataset": "synthetic_blurry", "epochs": 10, "n_views": 2, "shots": 8}


def test_tuning_lowers_the_loss_and_beats_zero_shot_on_base(tiny_clip, isolated_dirs):
    # The offline budget's epochs and crop (none): with the field's crop down to 8% of a 32-pixel image,
    # CoOp stays below zero-shot on this world (docs/offline-world.md).
    budget = {**QUICK, "epochs": OFFLINE_TRAINING["epochs"], "crop_scale_min": OFFLINE_TRAINING["crop_scale_min"]}
    experiment = Experiment(tiny_clip)
    zero_shot = experiment.run(Config().replace(**budget, method="zeroshot"), "final")
    coop = experiment.run(Config().replace(**budget, method="coop", lr=0.02), "final")
    losses = [epoch["loss"] for epoch in coop.loss_terms_by_epoch]
    assert losses[-1] < 0.8 * losses[1], losses  # epoch 0 is the warm-up at 1e-5
    assert coop.metrics["acc_test_base"] > zero_shot.metrics["acc_test_base"] + 2.0


@pytest.mark.parametrize("method", ["dualprompt", "kgcoop"])
def test_cached_and_uncached_training_give_the_same_losses(tiny_clip, isolated_dirs, method):
    """One deterministic view per image: the cache returns exactly the features the uncached loop encodes."""
    cfg = Config().replace(**{**QUICK, "epochs": 3, "n_views": 1}, method=method, aug_variant="virtual")
    experiment = Experiment(tiny_clip)
    cached = experiment.run(cfg, "search")
    uncached = experiment.run(cfg.replace(use_feature_cache=False), "search")
    for a, b in zip(cached.loss_terms_by_epoch, uncached.loss_terms_by_epoch, strict=True):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name  # float32 round-off only
    assert cached.metrics == pytest.approx(uncached.metrics)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_on_cuda_trains_like_fp32(isolated_dirs):
    """bf16 autocast of the text tower on CUDA: finite losses, and accuracy within noise of fp32."""
    from dualprompt.backbone import load_backbone

    cfg = Config().replace(**QUICK, method="dualprompt", lr=0.02)
    fp32 = Experiment(load_backbone(cfg.backbone, "cuda")).run(cfg, "final")
    amp_cfg = cfg.replace(precision="amp")
    amp = Experiment(load_backbone(amp_cfg.backbone, "cuda")).run(amp_cfg, "final")
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in amp.loss_terms_by_epoch)
    assert abs(amp.metrics["acc_test_base"] - fp32.metrics["acc_test_base"]) < 5.0
