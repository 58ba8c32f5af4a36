"""Trained prompts as artefacts: saved by a final job, loaded anywhere, classifying any class names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save as save_safetensors

from dualprompt import load_prompt
from dualprompt.config import Config
from dualprompt.experiment import Experiment
from dualprompt.saved_prompt import PromptFileError, ZeroShotPrompt

QUICK = {"dataset": "synthetic_blurry", "method": "coop", "epochs": 3, "warmup_epochs": 0, "shots": 4, "n_views": 2,
         "lr": 0.02, "n_ctx": 6}

# In a fresh process: load the prompt and classify every base and new test image of the job's dataset with
# the public API (image files in, probabilities out), as a user would; print the two accuracies.
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from dualprompt import load_prompt
    from dualprompt.data.readers import load_dataset
    from dualprompt.data.sampling import subsample_classes
    prompt = load_prompt(sys.argv[1])
    dataset = load_dataset(prompt.trained_on["dataset"], Path(sys.argv[2]))
    out = {}
    for subset in ("base", "new"):
        split = subsample_classes(dataset, subset)
        probs = prompt.probabilities([item.path for item in split.test], split.classnames)
        correct = sum(int(p.argmax()) == item.label for p, item in zip(probs, split.test))
        out[subset] = 100.0 * correct / len(split.test)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_a_saved_prompt_reproduces_its_jobs_test_accuracy_in_a_fresh_process(tiny_clip, isolated_dirs, tmp_path):
    cfg = Config().replace(**QUICK)
    path = tmp_path / "prompt.safetensors"
    result = Experiment(tiny_clip).run(cfg, "final", prompt_path=str(path))
    assert result.prompt_path == str(path) and path.is_file()
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), str(isolated_dirs / "data")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["base"] == pytest.approx(result.metrics["acc_test_base"], abs=1e-9)
    assert measured["new"] == pytest.approx(result.metrics["acc_test_new"], abs=1e-9)
    loaded = load_prompt(path, backbone=tiny_clip)
    assert loaded.config == cfg and loaded.trained_on["classnames"][0] == loaded.trained_on["classnames"][0]
    assert loaded.trained_on["dataset"] == "synthetic_blurry" and loaded.metrics == result.metrics
    assert loaded.provenance["git_commit"] and loaded.learner.ctx.shape == (6, tiny_clip.token_dim)


def test_a_prompt_classifies_any_class_names_and_zero_shot_needs_no_file(tiny_clip, tmp_path):
    import numpy as np

    from dualprompt.prompt_learner import PromptLearner
    from dualprompt.saved_prompt import save_prompt
    from dualprompt.world.render import render

    learner = PromptLearner(tiny_clip, Config().prompt, torch.Generator().manual_seed(0))
    path = str(tmp_path / "p.safetensors")
    save_prompt(learner, Config().replace(data_root="/machine/data", cache_dir="/machine/cache"), path,
                {"dataset": "none"})
    assert load_prompt(path, backbone=tiny_clip).config == Config()  # the file names no path of this machine
    images = [render("red", "circle", "photo", np.random.default_rng(i)) for i in range(3)]
    names = ["red circle", "blue star", "green heart"]
    for prompt in (load_prompt(path, backbone=tiny_clip), ZeroShotPrompt(tiny_clip)):
        probs = prompt.probabilities(images, names)
        assert probs.shape == (3, 3) and torch.allclose(probs.sum(dim=1), torch.ones(3))
        top = prompt.classify(images, names, top_k=2)
        assert [len(row) for row in top] == [2, 2, 2] and all(row[0][1] >= row[1][1] for row in top)
    torch.testing.assert_close(load_prompt(path, backbone=tiny_clip).learner.ctx, learner.ctx)


def test_bad_prompt_files_are_one_sentence(tiny_clip, test_clip, tmp_path):
    from dualprompt.prompt_learner import PromptLearner
    from dualprompt.saved_prompt import save_prompt

    cases = {
        "missing.safetensors": (None, "Cannot read prompt file"),
        "text.safetensors": (b"not a safetensors file", "is not a safetensors prompt file"),
        "foreign.safetensors": (save_safetensors({"w": torch.zeros(2)}), "not a dualprompt prompt"),
    }
    for name, (content, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(PromptFileError, match=words) as caught:
            load_prompt(tmp_path / name, backbone=tiny_clip)
        assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")
    path = str(tmp_path / "tiny.safetensors")
    save_prompt(PromptLearner(tiny_clip, Config().prompt), Config(), path, {})
    with pytest.raises(PromptFileError, match="was trained on tiny-synthetic"):
        load_prompt(path, backbone=test_clip)
    # A prompt of other weights under the same name and tag (the offline CLIP before it was retrained).
    from safetensors import safe_open
    with safe_open(path, "pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    older = tmp_path / "older.safetensors"
    older.write_bytes(save_safetensors(tensors, metadata={**metadata, "weights_id": "0123456789abcdef"}))
    with pytest.raises(PromptFileError, match="'0123456789abcdef', but tiny-synthetic .* now loads") as caught:
        load_prompt(older)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")
    assert load_prompt(path).learner.ctx.shape == (Config().prompt.n_ctx, tiny_clip.token_dim)
