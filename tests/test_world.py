"""The offline world: renderer, tokenizer, class layout, synthetic datasets, committed tiny CLIP."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from dualprompt import world
from dualprompt.data.synthetic import (
    CLASSNAMES,
    MARKER_FILE,
    SYNTHETIC_SPECS,
    is_materialised,
    materialise,
)
from dualprompt.world.render import IMAGE_SIZE, render
from dualprompt.world.vocab import (
    BASE_CLASSES,
    HELD_OUT_COMBOS,
    NEW_CLASSES,
    PRETRAIN_COMBOS,
    SHAPES,
    STYLES,
    classname,
)

# The recorded accuracies were measured by the same code on the same files; only floating-point
# summation order (thread count) can differ, which may flip a prediction or two out of 1,000.
ACCURACY_TOLERANCE_POINTS = 1.0


# --- renderer -----------------------------------------------------------------------------------


def test_render_is_deterministic_per_generator_state():
    first = render("red", "star", "blurry", np.random.default_rng(7))
    again = render("red", "star", "blurry", np.random.default_rng(7))
    other = render("red", "star", "blurry", np.random.default_rng(8))
    assert first.size == (IMAGE_SIZE, IMAGE_SIZE) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("style", STYLES)
def test_every_shape_renders_in_every_style(style):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        pixels = np.asarray(render("blue", shape, style, rng), dtype=np.float32)
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert pixels.std() > 5.0, f"{shape} in {style} style is blank"


def test_render_rejects_unknown_attribute():
    with pytest.raises(ValueError, match="Unknown colour"):
        render("teal", "circle", "photo", np.random.default_rng(0))


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_layout_matches_open_clip_conventions():
    tokenizer = world.build_tokenizer()
    tokens = tokenizer(["a photo of a red circle.", "x x red circle ."])
    assert tokens.shape == (2, tokenizer.context_length) and tokens.dtype == torch.long
    assert tokenizer.eot_token_id == tokenizer.vocab_size - 1  # largest id: argmax pooling finds it
    assert (tokens[:, 0] == tokenizer.sot_token_id).all()
    words = tokenizer.encode("a photo of a red circle.")
    assert len(words) == 7 and tokenizer.sot_token_id not in words
    row = tokens[0].tolist()
    assert row[1:8] == words and row[8] == tokenizer.eot_token_id and set(row[9:]) == {0}
    assert tokens[0].argmax().item() == 8


def test_tokenizer_is_case_insensitive_and_splits_punctuation():
    tokenizer = world.build_tokenizer()
    assert tokenizer.encode("A Photo of a Red circle.") == tokenizer.encode("a photo of a red circle .")
    assert torch.equal(tokenizer("a red circle."), tokenizer(["a red circle."]))


def test_unknown_word_raises_one_clear_sentence():
    with pytest.raises(ValueError, match="'dog'.*only knows the world's vocabulary"):
        world.build_tokenizer().encode("a photo of a dog.")


def test_too_long_text_raises():
    with pytest.raises(ValueError, match="context length"):
        world.build_tokenizer()("x " * 40 + "red circle.")


def test_longest_soft_prompt_and_templates_fit_the_context():
    tokenizer = world.build_tokenizer()
    config = json.loads(world.CONFIG_PATH.read_text())
    assert config["text_cfg"]["vocab_size"] == tokenizer.vocab_size
    assert config["text_cfg"]["context_length"] == tokenizer.context_length
    longest = max(CLASSNAMES, key=lambda name: len(name.split()))
    tokenizer("x " * 16 + f"{longest}.")  # a 16-token soft prompt, the class, ".", SOT, EOT
    for spec in SYNTHETIC_SPECS.values():
        tokenizer([spec.template.format(name) for name in CLASSNAMES])


# --- class layout -------------------------------------------------------------------------------


def test_base_and_new_class_names_share_no_word():
    base_words = {word for c, s in BASE_CLASSES for word in classname(c, s).split()}
    new_words = {word for c, s in NEW_CLASSES for word in classname(c, s).split()}
    assert not base_words & new_words


def test_new_classes_are_exactly_the_pairs_held_out_of_pretraining():
    assert set(NEW_CLASSES) == HELD_OUT_COMBOS
    assert not HELD_OUT_COMBOS & set(PRETRAIN_COMBOS)
    assert set(BASE_CLASSES) <= set(PRETRAIN_COMBOS)
    assert len(PRETRAIN_COMBOS) + len(HELD_OUT_COMBOS) == 100


def test_datasets_put_base_classes_first_in_label_order():
    for spec in SYNTHETIC_SPECS.values():
        n_base = math.ceil(spec.n_classes / 2)
        assert spec.n_classes == len(CLASSNAMES) and spec.synthetic and spec.reader == "split_json"
        assert CLASSNAMES[:n_base] == tuple(classname(c, s) for c, s in BASE_CLASSES)
        assert CLASSNAMES[n_base:] == tuple(classname(c, s) for c, s in NEW_CLASSES)


# --- materialise --------------------------------------------------------------------------------


def _read_split(root: Path, name: str) -> dict:
    spec = SYNTHETIC_SPECS[name]
    return json.loads((root / spec.folder / spec.split_file).read_text())


def test_materialise_writes_the_expected_split_and_is_idempotent(tmp_path):
    name = "synthetic_blurry"
    spec = SYNTHETIC_SPECS[name]
    materialise(name, tmp_path)
    marker = tmp_path / spec.folder / MARKER_FILE
    built_at = marker.stat().st_mtime_ns
    splits = _read_split(tmp_path, name)
    counts = tuple(len(splits[split]) for split in ("train", "val", "test"))
    assert counts == spec.expected_counts
    relpath, label, name_of_class = splits["train"][0]
    assert (tmp_path / spec.folder / spec.image_dir / relpath).is_file()
    assert name_of_class == CLASSNAMES[label]
    materialise(name, tmp_path)
    assert marker.stat().st_mtime_ns == built_at  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [spec.folder]  # no staging leftovers


def test_materialise_is_deterministic_across_roots(tmp_path):
    name = "synthetic_sketch"
    materialise(name, tmp_path / "a")
    materialise(name, tmp_path / "b")
    relpath = _read_split(tmp_path / "a", name)["test"][-1][0]
    image_dir = Path(SYNTHETIC_SPECS[name].folder) / SYNTHETIC_SPECS[name].image_dir
    assert (tmp_path / "a" / image_dir / relpath).read_bytes() == (tmp_path / "b" / image_dir / relpath).read_bytes()


def test_materialise_rebuilds_an_outdated_copy(tmp_path):
    name = "synthetic_blurry"
    spec = SYNTHETIC_SPECS[name]
    materialise(name, tmp_path)
    marker = tmp_path / spec.folder / MARKER_FILE
    marker.write_text(json.dumps({"generator_version": 0}))
    assert not is_materialised(spec, tmp_path / spec.folder)
    materialise(name, tmp_path)
    assert is_materialised(spec, tmp_path / spec.folder)


@pytest.mark.slow
def test_concurrent_materialise_leaves_one_complete_copy(tmp_path):
    name = "synthetic_blurry"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=materialise, args=(name, tmp_path)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    spec = SYNTHETIC_SPECS[name]
    assert is_materialised(spec, tmp_path / spec.folder)
    assert [p.name for p in tmp_path.iterdir()] == [spec.folder]
    n_images = sum(1 for _ in (tmp_path / spec.folder / spec.image_dir).rglob("*.png"))
    assert n_images == sum(spec.expected_counts)


def test_unknown_synthetic_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown synthetic dataset"):
        materialise("synthetic_nope", tmp_path)


# --- committed tiny CLIP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_tiny():
    import open_clip

    assert world.CHECKPOINT_PATH.is_file(), "run `python -m dualprompt.world.pretrain` to create the checkpoint"
    open_clip.add_model_config(world.CONFIG_PATH)
    return open_clip.create_model(world.TINY_MODEL_NAME, pretrained=str(world.CHECKPOINT_PATH))


def test_checkpoint_is_small_and_loads_with_open_clip_defaults(open_clip_tiny):
    assert world.CHECKPOINT_PATH.stat().st_size < 8 * 2**20
    assert tuple(open_clip_tiny.visual.image_mean) == pytest.approx(world.IMAGE_MEAN)
    assert tuple(open_clip_tiny.visual.image_std) == pytest.approx(world.IMAGE_STD)
    assert open_clip_tiny.visual.image_size == (IMAGE_SIZE, IMAGE_SIZE)


def test_checkpoint_reproduces_recorded_zero_shot_accuracy(isolated_dirs):
    """The project's zero-shot method on the loaded checkpoint gives the accuracy pretraining recorded."""
    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment

    record = json.loads(world.PROVENANCE_PATH.read_text())
    recorded = record["zero_shot_accuracy_percent"]["synthetic_blurry"]
    cfg = Config().replace(method="zeroshot", dataset="synthetic_blurry")
    measured = Experiment(load_backbone(cfg.backbone)).run(cfg, "final").metrics
    assert measured["acc_test_base"] == pytest.approx(recorded["base"], abs=ACCURACY_TOLERANCE_POINTS)
    assert measured["acc_test_new"] == pytest.approx(recorded["new"], abs=ACCURACY_TOLERANCE_POINTS)