"""`folder:<path>`: a user's own class folders as a dataset, in the reader, `check` and `python -m dualprompt`."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from image_folders import truncate, world_class_folders, world_image_folder, write_image_folder

from dualprompt.data import image_folder
from dualprompt.data.catalogue import get_spec
from dualprompt.data.errors import DataError, MissingDataError
from dualprompt.data.readers import load_dataset
from dualprompt.data.sampling import sample_few_shot

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_one_sentence(message: str) -> None:
    """A user-facing error: one line, one sentence (no second sentence starting after a full stop)."""
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith((".", "?")), message
    assert re.search(r"[.?!]\s+[A-Z]", message[:-1]) is None, message


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m <module> ...` in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=full_env, timeout=300)


def relative(items, folder: Path) -> list[str]:
    return [os.path.relpath(item.path, folder) for item in items]


# --- the name -----------------------------------------------------------------------------------------


def test_folder_name_gives_a_spec_with_the_generic_template(tmp_path: Path) -> None:
    spec = get_spec(f"folder:{tmp_path}")
    assert spec.reader == "image_folder" and spec.template == "a photo of a {}." and spec.folder == str(tmp_path)
    assert get_spec("folder:photos").folder == "photos"  # relative: resolved against the data root on reading
    with pytest.raises(DataError) as caught:
        get_spec("folder:")
    assert_one_sentence(str(caught.value))


# --- reading and the recorded split -------------------------------------------------------------------


def test_labels_follow_sorted_folders_and_the_split_is_recorded(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "photos", {"zebra_finch": 10, "blue_tit": 10, "robin": 7})
    (folder / "robin" / "2023").mkdir()
    (folder / "robin" / "2023" / "late.png").write_bytes((folder / "robin" / "000.png").read_bytes())
    (folder / "robin" / "notes.txt").write_text("not an image")
    (folder / "robin" / ".hidden.png").write_bytes(b"")
    (folder / ".thumbnails").mkdir()

    splits = load_dataset(f"folder:{folder}", tmp_path / "no-data-root-needed")

    assert splits.classnames == ("blue tit", "robin", "zebra finch")
    per_split = {split: len(getattr(splits, split)) for split in ("train", "val", "test")}
    # 50/20/30 per class (val and test rounded half up, train the rest): 10 -> 5/2/3, 8 -> 4/2/2.
    assert per_split == {"train": 5 + 4 + 5, "val": 2 + 2 + 2, "test": 3 + 2 + 3}
    assert "robin/2023/late.png" in relative(splits.train + splits.val + splits.test, folder)
    recorded = json.loads((folder / "split.json").read_text())
    label_of = {"blue_tit": 0, "robin": 1, "zebra_finch": 2}
    for split, entries in recorded.items():
        assert [[path, label_of[path.split("/")[0]], path.split("/")[0]] for path, _, _ in entries] == entries
        assert relative(getattr(splits, split), folder) == [path for path, _, _ in entries]
    assert sorted(os.listdir(folder)) == [".thumbnails", "blue_tit", "robin", "split.json", "zebra_finch"]

    # Images added later do not move the recorded split.
    write_image_folder(tmp_path / "photos", {"zebra_finch": 14})
    again = load_dataset(f"folder:{folder}", tmp_path)
    assert again == splits


def test_the_split_is_the_same_in_another_place_and_process(tmp_path: Path) -> None:
    first = world_image_folder(tmp_path / "a" / "photos", n_classes=3, per_class=12)
    second = tmp_path / "b" / "photos"
    shutil.copytree(first, second)
    load_dataset(f"folder:{first}", tmp_path)
    code = f"from dualprompt.data.readers import load_dataset; load_dataset('folder:photos', {str(second.parent)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "123"})
    assert (first / "split.json").read_bytes() == (second / "split.json").read_bytes()
    # The few-shot sample depends on the folder's name, not on where it lives.
    samples = [sample_few_shot(load_dataset(f"folder:{path}", tmp_path), 2, seed=1) for path in (first, second)]
    assert relative(samples[0].train, first) == relative(samples[1].train, second)


def test_relative_name_is_resolved_against_the_data_root(tmp_path: Path) -> None:
    world_image_folder(tmp_path / "root" / "mine" / "photos", n_classes=2, per_class=3)
    splits = load_dataset("folder:mine/photos", tmp_path / "root")
    assert len(splits.classnames) == 2 and len(splits.train + splits.val + splits.test) == 6


def test_a_users_split_file_is_used_and_never_overwritten(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "eurosat_like", {"SeaLake": 3, "Highway": 3})
    content = {
        "train": [["Highway/000.png", 0, "Highway or Road"], ["SeaLake/000.png", 1, "Sea or Lake"]],
        "val": [["Highway/001.png", 0, "Highway or Road"], ["SeaLake/001.png", 1, "Sea or Lake"]],
        "test": [["SeaLake/002.png", 1, "Sea or Lake"]],
    }
    text = json.dumps(content)
    (folder / "split.json").write_text(text)
    splits = load_dataset(f"folder:{folder}", tmp_path)
    assert splits.classnames == ("Highway or Road", "Sea or Lake")
    assert relative(splits.test, folder) == ["SeaLake/002.png"] and len(splits.train) == 2
    assert (folder / "split.json").read_text() == text


def test_class_name_file_gives_natural_names(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", {"n02085620": 3, "n02099601": 3})
    (folder / "classnames.json").write_text(json.dumps({"n02085620": "Chihuahua", "n02099601": "golden retriever"}))
    assert load_dataset(f"folder:{folder}", tmp_path).classnames == ("Chihuahua", "golden retriever")


def test_a_folder_that_cannot_be_written_still_reads_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    folder = world_image_folder(tmp_path / "readonly", n_classes=2, per_class=3)

    def refuse(path: Path, text: str) -> None:  # what a read-only share answers (the tests may run as root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(image_folder, "_create_atomically", refuse)
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(f"folder:{folder}", tmp_path)
    assert len(splits.train + splits.val + splits.test) == 6 and not (folder / "split.json").exists()
    assert len(caplog.records) == 1 and "Permission denied" in caplog.records[0].getMessage()


# --- bad layouts: one sentence naming the file or folder ------------------------------------------------


def _no_class_folders(folder: Path) -> str:
    folder.mkdir()
    (folder / "loose.png").write_bytes(b"")
    return f"{folder} has no class folders"


def _one_class(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3})
    return "only one class folder (cat)"


def _empty_class(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 0})
    return f"Class folder {folder / 'dog'} holds no images"


def _too_few_to_split(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 2})
    return f"Class folder {folder / 'dog'} has 2 images"


def _names_file_misses_a_folder(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3})
    (folder / "classnames.json").write_text(json.dumps({"cat": "tabby cat"}))
    return "classnames.json has no name for the class folder 'dog'"


def _names_file_names_an_unknown_folder(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3})
    (folder / "classnames.json").write_text(json.dumps({"cat": "cat", "dog": "dog", "dgo": "dog"}))
    return "names 'dgo', which is not a class folder"


def _names_file_not_json(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3})
    (folder / "classnames.json").write_text("cat: tabby cat\n")
    return "classnames.json is not valid JSON"


def _two_classes_one_name(folder: Path) -> str:
    write_image_folder(folder, {"sea_lake": 3, "sea lake": 3})
    return "both get the class name 'sea lake'"


def _split_label_is_not_the_folder(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3})
    entries = [["cat/000.png", 1, "cat"], ["dog/000.png", 1, "dog"]]
    (folder / "split.json").write_text(json.dumps({"train": entries, "val": [], "test": []}))
    return "split.json: entry 0 of 'train' has label 1 but its path 'cat/000.png' lies in class folder 'cat', label 0"


def _split_lists_a_missing_image(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3})
    entries = [["cat/000.png", 0, "cat"], ["dog/009.png", 1, "dog"]]
    (folder / "split.json").write_text(json.dumps({"train": entries, "val": [], "test": []}))
    return "1 images listed in split.json are missing under"


def _split_misses_a_class(folder: Path) -> str:
    write_image_folder(folder, {"cat": 3, "dog": 3, "emu": 3})
    entries = [["cat/000.png", 0, "cat"], ["dog/000.png", 1, "dog"]]
    (folder / "split.json").write_text(json.dumps({"train": entries, "val": [], "test": []}))
    return "lists no image of the class folder 'emu'"


@pytest.mark.parametrize("make", [
    _no_class_folders, _one_class, _empty_class, _too_few_to_split, _names_file_misses_a_folder,
    _names_file_names_an_unknown_folder, _names_file_not_json, _two_classes_one_name,
    _split_label_is_not_the_folder, _split_lists_a_missing_image, _split_misses_a_class,
])
def test_bad_layout_is_one_sentence_naming_what_to_fix(tmp_path: Path, make) -> None:
    folder = tmp_path / "bad"
    expected = make(folder)
    with pytest.raises(DataError) as caught:
        load_dataset(f"folder:{folder}", tmp_path)
    assert expected in str(caught.value)
    assert_one_sentence(str(caught.value))
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def test_missing_folder_names_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as caught:
        load_dataset("folder:holiday_photos", tmp_path)
    assert str(tmp_path / "holiday_photos") in str(caught.value) and "data root" in str(caught.value)
    assert_one_sentence(str(caught.value))


# --- through the commands -------------------------------------------------------------------------------


def test_check_command_checks_a_folder_dataset(tmp_path: Path) -> None:
    folder = world_image_folder(tmp_path / "photos", n_classes=3, per_class=10)
    result = run_module("dualprompt.data", "check", "--datasets", f"folder:{folder}",
                        env={"DUALPROMPT_DATA_ROOT": str(tmp_path / "absent")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"folder:{folder}", "ready", "train", "15", "val", "6", "test", "9"]

    truncate(folder / "red_circle" / "000.png")  # only the deep check opens images
    deep = run_module("dualprompt.data", "check", "--deep", "--data-root", str(tmp_path), "--datasets",
                      "folder:photos,folder:elsewhere")
    assert deep.returncode == 1 and deep.stderr == ""
    photos, elsewhere = deep.stdout.splitlines()
    assert photos.startswith("folder:photos    invalid: 1 of 30 images cannot be read under")
    assert "red_circle/000.png (image file is truncated)" in photos
    assert elsewhere.startswith("folder:elsewhere missing: elsewhere/")


def test_one_job_on_a_folder_dataset_and_a_bad_layout(tmp_path: Path) -> None:
    folder = world_image_folder(tmp_path / "photos", n_classes=4, per_class=10)
    env = {"DUALPROMPT_DATA_ROOT": str(tmp_path), "DUALPROMPT_CACHE_DIR": str(tmp_path / "features")}
    result = run_module("dualprompt", "--set", "dataset=folder:photos", "--set", "method=zeroshot",
                        "--set", "shots=2", env=env)
    assert result.returncode == 0, result.stderr
    assert 0.0 <= json.loads(result.stdout)["hm_test"] <= 100.0
    assert (folder / "split.json").is_file()

    bad_folder = write_image_folder(tmp_path / "bad", {world_class_folders(1)[0]: 3, "empty": 0})
    bad = run_module("dualprompt", "--set", f"dataset=folder:{bad_folder}", "--set", "method=zeroshot", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and f"Class folder {bad_folder / 'empty'} holds no images" in bad.stderr
