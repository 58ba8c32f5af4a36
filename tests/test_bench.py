"""The benchmark compares like with like: (a) the field's loop and (b) ours compute the same thing.

Not timing tests: timings belong to `python -m dualprompt.bench` on a quiet machine (docs/performance.md).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dualprompt import world
from dualprompt.bench.field_loop import FieldPromptLearner
from dualprompt.bench.loops import run_field_loop, run_our_loop
from dualprompt.bench.measure import dense_pass_flops, prompt_length, shared_prefix_flops, text_encoder_flops
from dualprompt.bench.problem import build_problem
from dualprompt.config import PromptConfig
from dualprompt.prompt_learner import PromptLearner

# Both loops draw the same batches and views and start from the same context; only float round-off
# differs (77-position vs truncated attention, batch composition of the image encoder).
LOSS_RTOL = 1e-4
SMALL = {"shots": 4, "n_views": 2, "batch_size": 8, "steps": 15, "test_images": 100, "lr": 0.02}


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_accuracy(problem, field: dict, ours: dict) -> None:
    """Base and new: the same predictions, up to a near-tie flipped by round-off (one test image)."""
    for eval_set, a, b in zip(problem.eval_sets, field["accuracy"], ours["accuracy"], strict=True):
        assert abs(a - b) <= 100.0 / len(eval_set.items) + 1e-9, eval_set.name


@pytest.mark.parametrize("method", ["coop", "dualprompt"])
def test_field_loop_and_our_loop_reach_the_same_loss_and_accuracy(test_clip, isolated_dirs, method):
    """test_clip has CLIP's 77-token context and BPE tokenizer, so (a) runs 77 positions and (b) about 10."""
    problem = build_problem(test_clip, method=method, **SMALL)
    assert prompt_length(PromptLearner(test_clip, PromptConfig()), problem.classnames) < 20
    field, ours = run_field_loop(problem), run_our_loop(problem)
    assert field["steps"] == ours["steps"] >= SMALL["steps"]
    assert ours["final_loss"] == pytest.approx(field["final_loss"], rel=LOSS_RTOL)
    assert_same_accuracy(problem, field, ours)


@pytest.mark.skipif(not world.CHECKPOINT_PATH.is_file(), reason="the tiny CLIP checkpoint is not built yet")
def test_same_accuracy_with_the_pretrained_tiny_clip(tiny_clip, isolated_dirs):
    """A CLIP that actually classifies the images: tuning moves accuracy, identically in both loops."""
    problem = build_problem(tiny_clip, method="coop", **SMALL)
    field, ours = run_field_loop(problem), run_our_loop(problem)
    assert ours["final_loss"] == pytest.approx(field["final_loss"], rel=LOSS_RTOL)
    assert_same_accuracy(problem, field, ours)
    assert ours["accuracy"][0] > 20.0  # well above chance (10%), so the agreement is not two coin flips


def test_more_class_prompts_pad_with_distractor_names(test_clip, isolated_dirs):
    problem = build_problem(test_clip, classes=40, **SMALL)
    assert len(problem.classnames) == len(set(problem.classnames)) == 40
    assert problem.handcrafted.shape[0] == 40


@pytest.mark.parametrize("kind", [PromptLearner, FieldPromptLearner, "per-prompt attention"])
@pytest.mark.parametrize("n_ctx", [1, 4, 16])
def test_flop_estimate_equals_torch_flop_counter(test_clip, kind, n_ctx):
    """(a) every prompt over the full context; (b) the shared [SOS][ctx] prefix once: this small pass in
    dense_pass.py, or with one attention sequence per prompt (shared_prefix.py, as larger passes run)."""
    backbone = test_clip
    if kind == "per-prompt attention":
        backbone, kind = copy.copy(test_clip), PromptLearner
        backbone.dense_text = False
    learner = kind(backbone, PromptConfig(n_ctx=n_ctx, ctx_init=""))
    names = ("red circle", "a much longer class name with many words", "dog")
    if kind is FieldPromptLearner:
        expected = text_encoder_flops(test_clip, len(names), test_clip.context_length)
    else:
        assert test_clip.shares_prefix
        lengths = (learner._frozen_tokens(names)[1] + 1).tolist()  # up to each prompt's own EOT token
        assert len(set(lengths)) > 1  # the names differ in length: no padding rows are counted
        dense = learner._frozen_suffixes(names).groups[0].dense is not None
        assert dense == backbone.dense_text
        expected = (dense_pass_flops if dense else shared_prefix_flops)(test_clip, 1 + n_ctx, lengths)
    with FlopCounterMode(display=False) as counter:
        learner(names).sum().backward()
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_unshared_flop_estimate_equals_torch_flop_counter(test_clip):
    """The whole-prompt pass (`encode_embeddings`, the fallback and the earlier (b)) keeps its own formula."""
    learner = PromptLearner(test_clip, PromptConfig())
    names = ("red circle", "a much longer class name with many words", "dog")
    embeddings, eot = learner._frozen_tokens(names)
    ctx = learner.ctx.unsqueeze(0).expand(len(names), -1, -1)
    with FlopCounterMode(display=False) as counter:
        prompts = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + learner.n_ctx :]], dim=1)
        test_clip.encode_embeddings(prompts, eot).sum().backward()
    expected = text_encoder_flops(test_clip, len(names), prompt_length(learner, names))
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_smoke_command_prints_the_comparison(isolated_dirs, precision):
    """`--precision amp` is bf16 autocast on CUDA only: on a CPU the loops and the probe stay float32."""
    done = subprocess.run([sys.executable, "-m", "dualprompt.bench", "--smoke", "--threads", "1",
                           "--precision", precision], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert f"on cpu, {precision};" in out and "256x256 float32 matmul probe" in out, out
    for field in ("(a) field loop", "(b) our loop", "(b)/(a)", "train steps/s", "time per trial, warm cache",
                  "time per trial, cold cache", "feature extraction", "peak memory above loaded model",
                  "final training loss", "test accuracy", "GFLOP", "matmul probe", "executed FLOPs",
                  "text step share of the matmul probe", "[SOS][ctx] once", "load average"):
        assert field in out, f"{field!r} missing from:\n{out}"


def test_jobs_together_smoke_times_both_ways_of_a_search_trial(isolated_dirs):
    done = subprocess.run([sys.executable, "-m", "dualprompt.bench", "--jobs-together", "--smoke", "--threads", "1",
                           "--method", "dualprompt"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "2 search jobs of one trial (1 seed(s) x the offline datasets x 2 folds)" in out, out
    for field in ("one after another", "together", "mean objective", "faster", "load average"):
        assert field in out, f"{field!r} missing from:\n{out}"
