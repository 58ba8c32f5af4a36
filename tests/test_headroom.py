"""`python -m dualprompt.world.headroom`: the linear probe it compares zero-shot with, and its command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualprompt.world.headroom import WEIGHT_DECAYS, class_spacing, probe_accuracy

REPO = Path(__file__).resolve().parents[1]


def clusters(n_per_class: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes around three orthogonal directions in 8 dimensions: features [3n, 8], labels [3n]."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(8)[:3]  # [3, 8]
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), 8, generator=generator), labels


def test_probe_separates_separable_classes():
    accuracy, decay = probe_accuracy(clusters(16, 0, 0.1), clusters(4, 1, 0.1), clusters(100, 2, 0.1), n_classes=3)
    assert accuracy == pytest.approx(100.0)
    assert decay in WEIGHT_DECAYS


def test_probe_chooses_its_weight_decay_without_looking_at_the_test_images():
    train, val, (x_test, y_test) = clusters(16, 0, spread=1.0), clusters(4, 1, spread=1.0), clusters(100, 2)
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(3))]
    right, decay_right = probe_accuracy(train, val, (x_test, y_test), n_classes=3)
    wrong, decay_wrong = probe_accuracy(train, val, (x_test, shuffled), n_classes=3)
    assert decay_right == decay_wrong  # the test labels changed, the choice did not
    assert right > wrong + 30.0  # and the test accuracy is measured on the labels given


def test_class_spacing_on_a_hand_made_case():
    """Three unit features: a and b at cosine 0.8, c orthogonal to a and at cosine 0.6 to b."""
    a, b, c = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.8, 0.6, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    nearest, pairs = class_spacing(torch.stack([a, b, c]))
    assert nearest == pytest.approx((0.8 + 0.8 + 0.6) / 3)  # a's nearest is b, b's is a, c's is b
    assert pairs == pytest.approx((0.8 + 0.0 + 0.6) / 3)


def run_headroom(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualprompt.world.headroom", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.parametrize(("args", "named"), [(("--datasets", "synthetic_source"), "synthetic_noisy"),
                                              (("--shots", "33"), "1..32")])
def test_bad_input_is_one_sentence_and_exit_2(args, named):
    result = run_headroom(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and args[0] in result.stderr
    assert named in result.stderr  # says what to use instead


@pytest.mark.slow
def test_command_prints_every_column_for_a_dataset(isolated_dirs):
    result = run_headroom("--datasets", "synthetic_noisy", "--shots", "2", "--data-root", str(isolated_dirs / "data"),
                          "--cache-dir", str(isolated_dirs / "features"))
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("| dataset"))
    for column in ("zero-shot", "style-matched", "linear probe", "headroom", "beyond the style"):
        assert column in header
    row = next(line for line in result.stdout.splitlines() if line.startswith("| synthetic_noisy"))
    values = [float(cell) for cell in row.strip("| \n").split("|")[1:]]
    zero_shot, matched, probe, headroom, beyond = values
    assert all(0.0 <= v <= 100.0 for v in (zero_shot, matched, probe))
    assert headroom == pytest.approx(probe - zero_shot, abs=0.11)
    assert beyond == pytest.approx(probe - matched, abs=0.11)
    spacing = next(line for line in result.stdout.splitlines()[result.stdout.splitlines().index(row) + 1 :]
                   if line.startswith("| synthetic_noisy"))
    nearest_base, nearest_new, pairs_base, pairs_new = (float(cell) for cell in spacing.strip("| \n").split("|")[1:])
    assert -1.0 <= pairs_base <= nearest_base <= 1.0 and -1.0 <= pairs_new <= nearest_new <= 1.0
