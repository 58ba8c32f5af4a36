"""`python -m dualprompt.predict`: images in, top-k classes out, with a trained prompt or zero-shot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dualprompt.config import Config
from dualprompt.data.readers import load_dataset
from dualprompt.data.sampling import subsample_classes
from dualprompt.experiment import Experiment


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualprompt.predict", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def trained(tiny_clip, tmp_path_factory):
    """A CoOp prompt tuned briefly on synthetic_blurry's base classes, and every base-class test image."""
    root = tmp_path_factory.mktemp("predict")
    cfg = Config().replace(dataset="synthetic_blurry", method="coop", epochs=6, warmup_epochs=0, shots=8, n_views=2,
                           lr=0.02, data_root=str(root / "data"), cache_dir=str(root / "features"))
    path = root / "prompt.safetensors"
    result = Experiment(tiny_clip).run(cfg, "final", prompt_path=str(path))
    base = subsample_classes(load_dataset("synthetic_blurry", root / "data"), "base")
    return {"prompt": path, "classes": base.classnames, "images": list(base.test),
            "acc": result.metrics["acc_test_base"]}


@pytest.mark.slow
def test_a_trained_prompt_classifies_the_test_images_as_its_job_did(trained):
    items = trained["images"]
    done = predict("--prompt", str(trained["prompt"]), "--classes", ",".join(trained["classes"]), "--top-k", "3",
                   "--json", *[item.path for item in items])
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["image"] for a in answers] == [item.path for item in items]
    right = sum(a["top"][0]["class"] == item.classname for a, item in zip(answers, items, strict=True))
    # The command reads the prompt back from its file and classifies the same images the job tested on: the
    # job's accuracy to one image (a near tie may round differently), and far above chance (one in 18).
    assert abs(100 * right / len(items) - trained["acc"]) <= 100 / len(items), (right, len(items), trained["acc"])
    assert right > 3 * len(items) / len(trained["classes"])
    for answer in answers:
        probabilities = [entry["probability"] for entry in answer["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


@pytest.mark.slow
def test_zero_shot_runs_without_a_prompt_and_prints_readable_lines(trained, tmp_path):
    items = trained["images"][:2]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(trained["classes"]) + "\n")
    done = predict("--classes-file", str(classes), "--top-k", "2", *[item.path for item in items])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == items[0].path and len(lines) == 2 * 3  # per image: its path, then 2 classes
    probability, name = lines[1].split(maxsplit=1)
    assert 0 <= float(probability) <= 1 and name in trained["classes"]


def test_bad_input_is_one_sentence_and_exit_2(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG signature and nothing else
    for args, words in [
        ((str(broken), "--classes", "red circle,blue star"), "cannot be read"),
        ((str(tmp_path / "missing.png"), "--classes", "red circle,blue star"), "No such file or directory"),
        ((str(broken),), "Name the classes once"),
        ((str(broken), "--classes", "red circle"), "at least two distinct names"),
        ((str(broken), "--classes", "a,b", "--prompt", str(tmp_path / "none.safetensors")), "does not exist"),
    ]:
        done = predict(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
