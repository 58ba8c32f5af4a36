"""A truncated or corrupt image is one sentence naming the file and its dataset, wherever it is met."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_trees import write_split_json_dataset
from image_folders import truncate, world_image_folder
from PIL import ImageFile

from dualprompt.config import Config
from dualprompt.data.errors import DataError
from dualprompt.data.images import UnreadableImageError, decode_all, read_rgb
from dualprompt.data.readers import load_dataset
from dualprompt.experiment import Experiment

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m <module> ...` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}, timeout=300)


def test_truncated_image_ends_one_job_with_one_sentence_and_exit_2(tmp_path: Path) -> None:
    folder = world_image_folder(tmp_path / "photos", n_classes=4, per_class=10)
    broken = Path(load_dataset(f"folder:{folder}", tmp_path).test[0].path)  # zero-shot encodes every test image
    truncate(broken)
    env = {"DUALPROMPT_DATA_ROOT": str(tmp_path), "DUALPROMPT_CACHE_DIR": str(tmp_path / "features")}
    result = run_module("dualprompt", "--set", "dataset=folder:photos", "--set", "method=zeroshot",
                        "--set", "shots=2", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert f"Image {broken} of dataset folder:photos cannot be read (image file is truncated)" in result.stderr


def test_a_jobs_error_names_the_file_and_dataset_on_its_first_line(tiny_clip, isolated_dirs: Path) -> None:
    # A sweep's failed row keeps the first line of the error, so the file and dataset must be on it.
    folder = world_image_folder(isolated_dirs / "photos", n_classes=4, per_class=10)
    splits = load_dataset(f"folder:{folder}", isolated_dirs)
    for item in splits.train:  # whichever two shots are drawn, one of them is this foreign file
        Path(item.path).write_bytes(b"%PDF-1.4 not a picture\n")
    cfg = Config().replace(dataset=f"folder:{folder}", method="coop", shots=2, epochs=2, n_views=1)
    with pytest.raises(UnreadableImageError) as caught:
        Experiment(tiny_clip).run(cfg, "final")
    message = str(caught.value)
    assert isinstance(caught.value, DataError) and "\n" not in message
    assert message.startswith(f"Image {folder}/") and f"of dataset folder:{folder} cannot be read" in message
    assert "not an image file PIL can identify" in message


def test_a_catalogue_datasets_image_error_names_the_dataset(tmp_path: Path) -> None:
    write_split_json_dataset(tmp_path, "dtd", (1, 1, 1))
    image = load_dataset("dtd", tmp_path).train[0].path
    truncate(Path(image))
    with pytest.raises(UnreadableImageError) as caught:
        read_rgb(image)
    assert str(caught.value).startswith(f"Image {image} of dataset dtd cannot be read")
    assert "check --deep --datasets dtd" in str(caught.value)


def test_deep_check_decodes_every_image_and_names_the_unreadable_ones(tmp_path: Path) -> None:
    write_split_json_dataset(tmp_path, "dtd", (1, 1, 1))
    images = tmp_path / "dtd" / "images"
    for name in ("class_003/test_000.png", "class_001/train_000.png"):
        (images / name).write_bytes(b"")
    env = {"DUALPROMPT_DATA_ROOT": str(tmp_path)}
    shallow = run_module("dualprompt.data", "check", "--datasets", "dtd", env=env)
    assert shallow.returncode == 1 and "wrong count" in shallow.stdout  # listing alone cannot see it
    deep = run_module("dualprompt.data", "check", "--deep", "--datasets", "dtd", env=env)
    assert deep.returncode == 1 and deep.stderr == ""
    assert deep.stdout.strip() == (
        f"dtd invalid: 2 of 141 images cannot be read under {tmp_path / 'dtd'}: "
        "images/class_001/train_000.png (not an image file PIL can identify), "
        "images/class_003/test_000.png (not an image file PIL can identify); replace them with intact copies."
    )


def test_decode_all_reports_progress_and_every_unreadable_image(tmp_path: Path) -> None:
    folder = world_image_folder(tmp_path / "photos", n_classes=2, per_class=5)
    paths = sorted(str(path) for path in folder.rglob("*.png"))
    truncate(Path(paths[3]))
    seen: list[tuple[int, int]] = []
    report = decode_all(paths, progress=lambda done, total: seen.append((done, total)), block=4)
    assert report.n_images == 10 and [path for path, _ in report.unreadable] == [paths[3]]
    assert seen == [(4, 10), (8, 10), (10, 10)]


def test_truncated_images_stay_refused() -> None:
    # Padding a truncated image with grey would train on a picture nobody took.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
