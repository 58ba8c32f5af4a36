"""The data protocol: catalogue, readers, few-shot sampling, base/new and pseudo splits, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_trees import (
    write_fgvc_aircraft,
    write_imagenet,
    write_imagenet_variant,
    write_split_json_dataset,
)

from dualprompt.data.catalogue import CATALOGUE, READER_NAMES, REAL_DATASETS, default_data_root, get_spec
from dualprompt.data.errors import DataError, MissingDataError
from dualprompt.data.readers import READERS, load_dataset, read_fgvc_aircraft, read_imagenet, read_imagenet_variant
from dualprompt.data.sampling import pseudo_split, sample_few_shot, subsample_classes
from dualprompt.data.types import DatasetSplits, Item

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_NAMES = {
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
}
DTD_PER_CLASS = (20, 6, 3)


def assert_one_sentence(message: str) -> None:
    """A user-facing error: one line, one sentence (no second sentence starting after a full stop)."""
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith((".", "?")), message
    assert re.search(r"[.?!]\s+[A-Z]", message[:-1]) is None, message


def in_memory_splits(n_classes: int, per_class: int = 3) -> DatasetSplits:
    """A dataset without files, for the pure class-subset functions."""
    names = tuple(f"c{label}" for label in range(n_classes))

    def items(split: str) -> tuple[Item, ...]:
        return tuple(Item(f"/x/{split}/{label}_{i}.png", label, names[label])
                     for i in range(per_class) for label in range(n_classes))

    return DatasetSplits("toy", names, items("train"), items("val"), items("test"))


@pytest.fixture(scope="module")
def dtd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_split_json_dataset(root, "dtd", DTD_PER_CLASS)
    return root


@pytest.fixture(scope="module")
def dtd(dtd_root: Path) -> DatasetSplits:
    return load_dataset("dtd", dtd_root)


# --- catalogue --------------------------------------------------------------------------------------


def test_catalogue_has_the_benchmark_datasets_with_templates_and_known_readers() -> None:
    assert set(REAL_DATASETS) == BENCHMARK_NAMES
    assert set(READER_NAMES) == set(READERS)
    for name, spec in CATALOGUE.items():
        assert spec.name == name
        assert spec.template.count("{}") == 1, name
        assert spec.reader in READERS, name
    assert get_spec("dtd").template == "a photo of a {}, a type of texture."
    assert all(REAL_DATASETS[name].test_only for name in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"))


def test_unknown_dataset_names_the_closest_valid_names() -> None:
    with pytest.raises(DataError) as caught:
        get_spec("oxford_pet")
    assert "'oxford_pets'" in str(caught.value)
    assert_one_sentence(str(caught.value))


def test_default_data_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUALPROMPT_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("DUALPROMPT_DATA_ROOT")
    assert default_data_root() == Path.home() / ".cache" / "dualprompt" / "data"


# --- readers ----------------------------------------------------------------------------------------


def test_split_json_reader_gives_absolute_paths_labels_and_clean_names(dtd: DatasetSplits, dtd_root: Path) -> None:
    assert len(dtd.classnames) == 47
    assert (len(dtd.train), len(dtd.val), len(dtd.test)) == tuple(47 * n for n in DTD_PER_CLASS)
    assert dtd.classnames[5] == "class 005"  # underscores become spaces, as CoOp's trainers do
    assert all(os.path.isabs(item.path) and os.path.exists(item.path) for item in dtd.train[:10])
    assert all(dtd.classnames[item.label] == item.classname for item in dtd.train + dtd.val + dtd.test)


def test_classname_fixes_apply_to_raw_folder_names(tmp_path: Path) -> None:
    raw = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]
    write_split_json_dataset(tmp_path, "eurosat", (1, 1, 1), raw_names=raw)
    splits = load_dataset("eurosat", tmp_path)
    assert splits.classnames[0] == "Annual Crop Land" and splits.classnames[9] == "Sea or Lake"
    assert splits.classnames[1] == "Forest"


def test_imagenet_reader_labels_follow_sorted_wnids_and_has_no_val(tmp_path: Path) -> None:
    folder = write_imagenet(tmp_path, n_classes=4, train_per_class=6, test_per_class=2)
    spec = replace(get_spec("imagenet"), n_classes=4)
    splits = read_imagenet(spec, folder)
    assert splits.classnames == ("thing 0", "thing 1", "thing 2", "thing 3")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 0, 8)
    assert all(f"n{item.label:08d}" in item.path for item in splits.train + splits.test)
    few = sample_few_shot(splits, shots=2, seed=1)
    assert len(few.train) == 8 and len(few.val) == 8
    assert not set(few.train) & set(few.val)  # val comes from train images not chosen as shots


def test_imagenet_a_subset_keeps_imagenet_order(tmp_path: Path) -> None:
    folder = write_imagenet_variant(tmp_path, "imagenet_a", class_indices=[900, 7, 42], per_class=2)
    splits = read_imagenet_variant(replace(get_spec("imagenet_a"), n_classes=3), folder)
    assert splits.classnames == ("thing 7", "thing 42", "thing 900")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (0, 0, 6)
    assert [item.label for item in splits.test] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="test-only"):
        sample_few_shot(splits, shots=1, seed=1)


def test_imagenetv2_numeric_folders_are_imagenet_labels(tmp_path: Path) -> None:
    folder = write_imagenet_variant(tmp_path, "imagenetv2", [3, 1, 2], per_class=1, numeric_folders=True)
    splits = read_imagenet_variant(replace(get_spec("imagenetv2"), n_classes=3), folder)
    assert splits.classnames == ("thing 1", "thing 2", "thing 3")
    assert splits.test[0].path.endswith(os.path.join("1", "000.png"))


def test_fgvc_aircraft_reader(tmp_path: Path) -> None:
    folder = write_fgvc_aircraft(tmp_path, ["707-320", "A300B4", "Cessna 172"], per_split=2)
    splits = read_fgvc_aircraft(replace(get_spec("fgvc_aircraft"), n_classes=3), folder)
    assert splits.classnames == ("707-320", "A300B4", "Cessna 172")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 6, 6)
    assert [item.label for item in splits.test] == [0, 0, 1, 1, 2, 2]


# --- base / new / pseudo ----------------------------------------------------------------------------


def test_base_new_split_uses_ceil_half_and_relabels() -> None:
    splits = in_memory_splits(5)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    assert base.classnames == ("c0", "c1", "c2") and new.classnames == ("c3", "c4")
    for part in (base, new):
        for items in (part.train, part.val, part.test):
            assert sorted({item.label for item in items}) == list(range(len(part.classnames)))
            assert all(part.classnames[item.label] == item.classname for item in items)
    assert len(base.test) == 9 and len(new.train) == 6
    assert subsample_classes(splits, "all") == splits
    with pytest.raises(DataError):
        subsample_classes(splits, "novel")


def test_pseudo_new_classes_are_base_classes_never_true_new(dtd: DatasetSplits) -> None:
    base, new = subsample_classes(dtd, "base"), subsample_classes(dtd, "new")
    pseudo_base, pseudo_new = pseudo_split(base)
    assert len(base.classnames) == 24 and len(pseudo_base.classnames) == 12 and len(pseudo_new.classnames) == 12
    assert set(pseudo_new.classnames) <= set(base.classnames)
    assert not set(pseudo_new.classnames) & set(new.classnames)
    assert not set(pseudo_base.classnames) & set(pseudo_new.classnames)
    new_paths = {item.path for item in new.train + new.val + new.test}
    for part in (pseudo_base, pseudo_new):
        assert part.test == () and part.train and part.val
        assert not {item.path for item in part.train + part.val} & new_paths
        assert {item.label for item in part.train} == set(range(len(part.classnames)))


# --- few-shot sampling ------------------------------------------------------------------------------


def test_few_shot_counts_and_val_min_k_4(dtd: DatasetSplits) -> None:
    for shots, val_shots in ((16, 4), (2, 2)):
        few = sample_few_shot(dtd, shots=shots, seed=1)
        assert Counter(item.label for item in few.train) == {label: shots for label in range(47)}
        assert Counter(item.label for item in few.val) == {label: val_shots for label in range(47)}
        assert few.test == dtd.test and few.classnames == dtd.classnames


def test_stable_sampling_is_deterministic_and_ignores_global_random_state(dtd: DatasetSplits) -> None:
    random.seed(123)
    first = sample_few_shot(dtd, shots=4, seed=1)
    state = random.getstate()
    random.seed(999)
    np.random.seed(5)
    torch.manual_seed(5)
    random.random()
    second = sample_few_shot(dtd, shots=4, seed=1)
    assert first == second
    assert sample_few_shot(dtd, shots=4, seed=2).train != first.train
    random.setstate(state)
    sample_few_shot(dtd, shots=4, seed=3)
    assert random.getstate() == state  # the global generator is never used


def test_stable_sampling_is_nested_in_k_and_commutes_with_subsampling(dtd: DatasetSplits) -> None:
    four, eight = sample_few_shot(dtd, shots=4, seed=1), sample_few_shot(dtd, shots=8, seed=1)
    assert set(four.train) <= set(eight.train)
    base_then_sample = sample_few_shot(subsample_classes(dtd, "base"), shots=4, seed=1)
    sample_then_base = subsample_classes(four, "base")
    assert set(base_then_sample.train) == set(sample_then_base.train)


def test_stable_sampling_ignores_item_order(dtd: DatasetSplits) -> None:
    shuffled = replace(dtd, train=tuple(reversed(dtd.train)), val=tuple(reversed(dtd.val)))
    assert set(sample_few_shot(shuffled, 4, 1).train) == set(sample_few_shot(dtd, 4, 1).train)


def test_stable_sampling_is_the_same_in_a_fresh_process(dtd: DatasetSplits, dtd_root: Path) -> None:
    code = (
        "import hashlib, sys; from pathlib import Path;"
        "from dualprompt.data.readers import load_dataset; from dualprompt.data.sampling import sample_few_shot;"
        "few = sample_few_shot(load_dataset('dtd', Path(sys.argv[1])), shots=4, seed=1);"
        "print(hashlib.sha256('|'.join(i.path for i in few.train + few.val).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "random"}
    result = subprocess.run([sys.executable, "-c", code, str(dtd_root)], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=env, check=True)
    few = sample_few_shot(dtd, shots=4, seed=1)
    expected = hashlib.sha256("|".join(item.path for item in few.train + few.val).encode()).hexdigest()
    assert result.stdout.strip() == expected


def dassl_reference(splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Item], list[Item]]:
    """What CoOp does: set_random_seed, then generate_fewshot_dataset on train, then on val."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    def generate(data_source: tuple[Item, ...], num_shots: int) -> list[Item]:
        tracker: dict[int, list[Item]] = defaultdict(list)
        for item in data_source:
            tracker[item.label].append(item)
        dataset: list[Item] = []
        for items in tracker.values():
            dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
        return dataset

    return generate(splits.train, shots), generate(splits.val, min(shots, 4))


@pytest.mark.parametrize("shots,seed", [(16, 1), (4, 2), (1, 3)])
def test_coop_mode_matches_a_dassl_style_reference(dtd: DatasetSplits, shots: int, seed: int) -> None:
    state = random.getstate()
    train, val = dassl_reference(dtd, shots, seed)
    random.setstate(state)
    few = sample_few_shot(dtd, shots=shots, seed=seed, mode="coop")
    assert list(few.train) == train and list(few.val) == val
    assert random.getstate() == state


def test_k_larger_than_a_class_is_refused_unless_allowed(dtd: DatasetSplits) -> None:
    with pytest.raises(DataError) as caught:
        sample_few_shot(dtd, shots=32, seed=1)
    message = str(caught.value)
    assert "'class 000' has only 20 train images" in message and "allow_fewer" in message
    assert_one_sentence(message)
    few = sample_few_shot(dtd, shots=32, seed=1, allow_fewer=True, mode="coop")
    assert len(few.train) == len(dtd.train)  # all images of every short class, as Dassl
    with pytest.raises(DataError):
        sample_few_shot(dtd, shots=0, seed=1)
    with pytest.raises(DataError):
        sample_few_shot(dtd, shots=1, seed=1, mode="random")


# --- bad inputs -------------------------------------------------------------------------------------


def test_missing_data_root_and_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as caught:
        load_dataset("dtd", tmp_path / "nowhere")
    assert_one_sentence(str(caught.value))
    with pytest.raises(MissingDataError) as caught:
        load_dataset("dtd", tmp_path)
    assert str(tmp_path / "dtd") in str(caught.value) and "DATASETS.md" in str(caught.value)
    assert_one_sentence(str(caught.value))


@pytest.mark.parametrize("field,value,expected", [
    (1, "7", "label (field 1)"), (1, 47, "label (field 1)"), (0, "", "path (field 0)"), (2, None, "classname"),
])
def test_malformed_split_file_names_entry_and_field(tmp_path: Path, field: int, value: object,
                                                    expected: str) -> None:
    split_path = write_split_json_dataset(tmp_path, "dtd", (1, 1, 1))
    content = json.loads(split_path.read_text())
    content["train"][3][field] = value
    split_path.write_text(json.dumps(content))
    with pytest.raises(DataError) as caught:
        load_dataset("dtd", tmp_path)
    message = str(caught.value)
    assert "entry 3 of 'train'" in message and expected in message
    assert_one_sentence(message)


def test_split_file_that_is_not_json(tmp_path: Path) -> None:
    split_path = write_split_json_dataset(tmp_path, "dtd", (1, 1, 1))
    split_path.write_text("{not json")
    with pytest.raises(DataError) as caught:
        load_dataset("dtd", tmp_path)
    assert_one_sentence(str(caught.value))


def test_image_listed_but_missing(tmp_path: Path) -> None:
    split_path = write_split_json_dataset(tmp_path, "dtd", (1, 1, 1), shuffle_seed=None)
    image_dir = split_path.parent / "images"
    (image_dir / "class_002" / "train_000.png").unlink()
    (image_dir / "class_010" / "test_000.png").unlink()
    with pytest.raises(MissingDataError) as caught:
        load_dataset("dtd", tmp_path)
    message = str(caught.value)
    assert message.startswith("2 images listed in split_zhou_DescribableTextures.json are missing")
    assert os.path.join("class_002", "train_000.png") in message
    assert_one_sentence(message)


def test_transforms_and_image_dataset(dtd: DatasetSplits) -> None:
    from dualprompt.data.transforms import ImageDataset, build_transforms

    train_tf, eval_tf = build_transforms(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    for transform in (train_tf, eval_tf):
        image, label = ImageDataset(dtd.train[:2], transform)[1]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == dtd.train[1].label
