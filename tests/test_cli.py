"""`python -m dualprompt`: one job through the real command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualprompt", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_one_zero_shot_job_prints_its_metrics(isolated_dirs):
    """Zero-shot is deterministic: the job gives exactly the accuracies that pretraining recorded for this
    dataset with the same method (to the 0.1 point of one test image in 1,000), and trains nothing."""
    import os

    from dualprompt import world

    dataset = "synthetic_sketch"
    result = run("--set", "method=zeroshot", "--set", f"dataset={dataset}", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    recorded = json.loads(world.PROVENANCE_PATH.read_text())["zero_shot_accuracy_percent"][dataset]
    assert metrics["acc_test_base"] == pytest.approx(recorded["base"], abs=0.05)
    assert metrics["acc_test_new"] == pytest.approx(recorded["new"], abs=0.05)
    base, new = metrics["acc_test_base"], metrics["acc_test_new"]
    assert metrics["hm_test"] == pytest.approx(2 * base * new / (base + new))
    assert metrics["steps"] == 0 and math.isnan(metrics["final_loss"])


def test_bad_input_is_one_sentence_and_exit_code_2(isolated_dirs):
    import os

    for args, message in [
        (["--set", "mi_temperature=0"], "error: mi_temperature: 0.0 must be > 0."),
        (["--set", "dataset=eurosatt"], "eurosat"),
        (["--set", "n_ctx=four"], "error: n_ctx: 'four' is not a valid int."),
    ]:
        result = run(*args, env=dict(os.environ))
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
