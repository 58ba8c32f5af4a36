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


def test_jobs_run_jointly_match_jobs_run_alone_and_fail_alone(tiny_clip, isolated_dirs, monkeypatch):
    """`Experiment.run_jointly`: a search trial's jobs (two datasets x two folds) trained together score as
    each does alone; a job that cannot start (an unknown dataset) fails alone; and when the joint pass
    itself fails, every job is trained again alone from a fresh context, so the results stay those of `run`."""
    from dualprompt import experiment as experiment_module
    from dualprompt.experiment import JobRequest

    cfg = Config().replace(**{**QUICK, "epochs": 3})
    requests = [JobRequest(cfg.replace(dataset=d), "search", fold=f)
                for d in ("synthetic_blurry", "synthetic_sketch") for f in (0, 1)]
    experiment = Experiment(tiny_clip)
    alone = [experiment.run(**vars(r)).metrics for r in requests]
    broken = JobRequest(cfg.replace(dataset="no_such_dataset"), "search")
    together = experiment.run_jointly([*requests[:2], broken, *requests[2:]])
    assert isinstance(together[2], Exception) and "no_such_dataset" in str(together[2])
    for joint, own in zip(together[:2] + together[3:], alone, strict=True):
        one_image = 100 / joint.counts["n_val_pseudobase"]  # float round-off may flip one prediction at most
        assert joint.metrics == pytest.approx(own, abs=one_image)

    train_prompts = experiment_module.train_prompts

    def fails_together(tasks, method, optim):
        if len(tasks) > 1:
            raise RuntimeError("the joint pass failed")
        return train_prompts(tasks, method, optim)

    monkeypatch.setattr(experiment_module, "train_prompts", fails_together)
    retried = experiment.run_jointly(requests)
    assert [r.metrics for r in retried] == alone  # trained alone from a fresh start: exactly `run`'s rows


def test_a_trials_jobs_are_grouped_by_seed_and_shots_in_one_process():
    from dualprompt.protocols import Job
    from dualprompt.trial import job_groups

    jobs = [Job(d, seed, 16, fold) for d in ("a", "b") for seed in (1, 2) for fold in (0, 1)]
    assert job_groups(jobs, world=1) == [[j for j in jobs if j.seed == 1], [j for j in jobs if j.seed == 2]]
    assert job_groups(jobs, world=2) == [[j] for j in jobs]  # data-parallel: one job at a time


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
