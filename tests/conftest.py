"""Shared fixtures: a random-weight CLIP with open_clip's own BPE tokenizer, and the offline world's tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualprompt.backbone import Backbone, load_backbone
from dualprompt.config import BackboneConfig

TEST_CLIP_CONFIG = Path(__file__).parent / "assets" / "test-clip.json"


@pytest.fixture(scope="session")
def test_clip() -> Backbone:
    """A 77-token open_clip CLIP (random weights, real BPE tokenizer), registered from tests/assets."""
    import open_clip

    open_clip.add_model_config(TEST_CLIP_CONFIG)
    torch.manual_seed(0)
    return load_backbone(BackboneConfig(backbone="test-clip", pretrained="random"))


@pytest.fixture(scope="session")
def tiny_clip() -> Backbone:
    """The offline world's pretrained tiny CLIP, loaded through the same API as real models."""
    return load_backbone(BackboneConfig())


@pytest.fixture()
def isolated_dirs(tmp_path, monkeypatch) -> Path:
    """Per-test data root and feature cache, so tests never share or pollute the user's caches."""
    monkeypatch.setenv("DUALPROMPT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DUALPROMPT_CACHE_DIR", str(tmp_path / "features"))
    return tmp_path


@pytest.fixture()
def one_thread():
    """Tiny ops run fastest on one thread, and far slower with more threads than free cores (shared CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
