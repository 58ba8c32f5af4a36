"""`python -m dualprompt`: one job through the real command."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualprompt", *args], capture_output=True, text=True, env=env, timeout=300)


def test_one_zero_shot_job_prints_its_metrics(isolated_dirs):
    import os

    result = run("--set", "method=zeroshot", "--set", "dataset=synthetic_sketch", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert 10.0 < metrics["acc_test_new"] <= 100.0 and metrics["steps"] == 0


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
