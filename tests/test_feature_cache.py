"""The feature cache heals itself: damaged files are recomputed and replaced, and never fail a job."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from image_folders import world_image_folder

from dualprompt import features
from dualprompt.config import Config
from dualprompt.experiment import Experiment


def folder_job(tmp_path: Path, method: str) -> Config:
    """A small job on a folder dataset: 4 classes of 10 images, 2 shots, 2 epochs (one of them warm-up)."""
    folder = world_image_folder(tmp_path / "photos", n_classes=4, per_class=10)
    return Config().replace(dataset=f"folder:{folder}", method=method, shots=2, epochs=2, n_views=2)


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "features").rglob("*.pt"))


def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the features this process already read, as a new job in a new process would."""
    monkeypatch.setattr(features, "_in_memory", {})


def damage(files: list[Path], width: int) -> None:
    """Five kinds of damage a cache meets: cut short, foreign bytes, a foreign pickle, the wrong width, NaN."""
    files[0].write_bytes(files[0].read_bytes()[:40])
    files[1].write_text("this is not a tensor\n")
    files[2].write_bytes(pickle.dumps({"features": [1, 2, 3]}))
    torch.save(torch.zeros(2, width + 1), files[3])
    torch.save(torch.full((2, width), float("nan")), files[4])


def healed_counts(records: list[logging.LogRecord]) -> list[int]:
    """The number of healed files each warning line reports."""
    lines = [r.getMessage() for r in records if r.name == "dualprompt.features"]
    assert all("\n" not in line for line in lines)
    return [int(line.split("recomputed and replaced ")[1].split()[0]) for line in lines]


@pytest.mark.parametrize("method", ["zeroshot", "coop"])
def test_damaged_cache_gives_the_metrics_of_a_clean_cache(
    tiny_clip, isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, method: str,
) -> None:
    cfg = folder_job(isolated_dirs, method)
    clean = Experiment(tiny_clip).run(cfg, "final").metrics
    files = cache_files(isolated_dirs)
    assert len(files) >= 5
    width = torch.load(files[0], weights_only=True).shape[1]
    damage(files, width)

    fresh_process(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dualprompt.features"):
        healed = Experiment(tiny_clip).run(cfg, "final").metrics
    assert healed == clean
    counts = healed_counts(caplog.records)
    assert sum(counts) == 5 and len(counts) <= 3  # one line per feature call (train views, base, new)
    for path in files:
        tensor = torch.load(path, weights_only=True)
        assert tensor.dtype == torch.float32 and tensor.shape[1] == width and torch.isfinite(tensor).all()

    caplog.clear()
    fresh_process(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dualprompt.features"):
        assert Experiment(tiny_clip).run(cfg, "final").metrics == clean
    assert healed_counts(caplog.records) == []


def test_a_cache_that_cannot_be_written_costs_speed_not_the_job(
    tiny_clip, isolated_dirs: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = folder_job(isolated_dirs, "zeroshot")

    def full_disk(tensor: torch.Tensor, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features, "_atomic_save", full_disk)
    with caplog.at_level(logging.WARNING, logger="dualprompt.features"):
        metrics = Experiment(tiny_clip).run(cfg, "final").metrics
    assert 0.0 <= metrics["hm_test"] <= 100.0
    lines = [r.getMessage() for r in caplog.records if r.name == "dualprompt.features"]
    assert len(lines) == 2 and all("No space left on device" in line for line in lines)  # base and new
    assert cache_files(isolated_dirs) == []
