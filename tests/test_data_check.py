"""`python -m dualprompt.data check` on fake trees: the real command in a subprocess, plus `main()` in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_trees import write_split_json_dataset

from dualprompt.data.__main__ import main
from dualprompt.data.synthetic import SYNTHETIC_SPECS

REPO_ROOT = Path(__file__).resolve().parents[1]
DTD_PUBLISHED_PER_CLASS = (60, 24, 36)  # 2820 / 1128 / 1692 over 47 classes
CHECKED = "dtd,eurosat,ucf101,oxford_pets,caltech101,food101"


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "dualprompt.data", "check", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=env, timeout=120)


def line_of(output: str, name: str) -> str:
    """The output line of dataset `name`."""
    lines = [line for line in output.splitlines() if line.split()[0] == name]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ready dataset (dtd) and one of each kind of broken dataset; food101 is absent."""
    root = tmp_path_factory.mktemp("data")
    write_split_json_dataset(root, "dtd", DTD_PUBLISHED_PER_CLASS)
    write_split_json_dataset(root, "eurosat", (2, 1, 1))  # wrong counts
    write_split_json_dataset(root, "ucf101", (1, 1, 1)).unlink()  # images there, split file missing
    pets_split = write_split_json_dataset(root, "oxford_pets", (1, 1, 1), shuffle_seed=None)
    (pets_split.parent / "images" / "class_000" / "val_000.png").unlink()  # a listed image missing
    caltech_split = write_split_json_dataset(root, "caltech101", (1, 1, 1))
    content = json.loads(caltech_split.read_text())
    content["val"][2] = ["a.png", 3]  # an entry with two fields
    caltech_split.write_text(json.dumps(content))
    return root


def test_check_command_prints_one_line_per_dataset(data_root: Path) -> None:
    result = run_check("--data-root", str(data_root), "--datasets", CHECKED)
    assert result.returncode == 1
    assert result.stderr == "" and "Traceback" not in result.stdout
    assert len(result.stdout.splitlines()) == 6
    dtd = line_of(result.stdout, "dtd")
    assert dtd.split()[1:] == ["ready", "train", "2820", "val", "1128", "test", "1692"]
    eurosat = line_of(result.stdout, "eurosat")
    assert "wrong count" in eurosat and "train 20 where 13500 expected" in eurosat
    assert "test 10 where 8100 expected" in eurosat
    split_path = data_root / "ucf101" / "split_zhou_UCF101.json"
    assert line_of(result.stdout, "ucf101").endswith(f"missing: split_zhou_UCF101.json (expected at {split_path})")
    pets = line_of(result.stdout, "oxford_pets")
    assert f"missing: {os.path.join('class_000', 'val_000.png')} and 0 more images" in pets
    assert pets.endswith(f"(expected at {data_root / 'oxford_pets' / 'images' / 'class_000' / 'val_000.png'})")
    caltech = line_of(result.stdout, "caltech101")
    assert "invalid: split_zhou_Caltech101.json: entry 2 of 'val' has entry" in caltech
    assert line_of(result.stdout, "food101").endswith(f"missing: food-101/ (expected at {data_root / 'food-101'})")


def test_all_ready_exits_0(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--data-root", str(data_root), "--datasets", "dtd"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["dtd", "ready"]


def test_missing_data_root_exits_2_with_one_sentence() -> None:
    result = run_check("--data-root", "/no/such/folder/anywhere", "--datasets", "dtd")
    assert result.returncode == 2 and result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("Data root /no/such/folder/anywhere does not exist; pass")
    assert "\n" not in message and "Traceback" not in message


def test_unknown_dataset_exits_2_with_a_suggestion(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--data-root", str(data_root), "--datasets", "dtd,oxford_pet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.strip()
    assert message.startswith("Unknown dataset 'oxford_pet'; did you mean 'oxford_pets'")
    assert message.endswith("?") and "\n" not in message


BENCHMARK_DATASETS = [  # the eleven base-to-new datasets and the four ImageNet variants, in catalogue order
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
]


def test_check_without_datasets_checks_every_real_dataset_and_no_synthetic_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--data-root", str(tmp_path)]) == 1  # an empty root: nothing is ready
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == BENCHMARK_DATASETS
    assert all(line.split()[1] == "missing:" for line in lines)
    assert not set(BENCHMARK_DATASETS) & set(SYNTHETIC_SPECS)  # the offline world is generated, never checked
