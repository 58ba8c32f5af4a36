"""The offline world: renderer, tokenizer, class layouts through the protocol's own rules, synthetic datasets
(counts, determinism, test-only targets), the committed tiny CLIP, and the world check command."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dualprompt import world
from dualprompt.data.readers import load_dataset
from dualprompt.data.sampling import pseudo_split, sample_few_shot, subsample_classes
from dualprompt.data.synthetic import (
    BASE_TO_NEW_DATASETS,
    DATASETS,
    MARKER_FILE,
    OFFLINE_TRAINING,
    SOURCE_DATASET,
    SYNTHETIC_SPECS,
    is_materialised,
    materialise,
)
from dualprompt.data.types import DatasetSplits
from dualprompt.world.render import IMAGE_SIZE, Variation, render
from dualprompt.world.vocab import (
    CAPTION_TEMPLATES,
    COLOURS,
    PRETRAIN_COMBOS,
    SHAPE_SYNONYMS,
    SHAPES,
    STYLES,
    base_to_new_layout,
    classname,
    vocabulary,
)

REPO = Path(__file__).resolve().parent.parent

# The recorded accuracies were measured by the same code on the same files; only floating-point
# summation order (thread count) can differ, which may flip a prediction or two out of 1,600.
ACCURACY_TOLERANCE_POINTS = 1.0

# What docs/offline-world.md documents: classes, then train / val / test images (None: no such split).
DOCUMENTED_COUNTS: dict[str, tuple[int, int | None, int | None, int]] = {
    **{name: (36, 1_152, 288, 3_600) for name in BASE_TO_NEW_DATASETS},
    "synthetic_source": (60, 1_920, 480, 6_000),
    "synthetic_source_v2": (60, None, None, 6_000),
    "synthetic_source_sketch": (60, None, None, 6_000),
    "synthetic_source_a": (12, None, None, 2_400),
    "synthetic_source_r": (12, None, None, 2_400),
}


def _words(classnames) -> set[str]:
    return {word for name in classnames for word in name.split()}


def _splits_of(name: str) -> DatasetSplits:
    """A dataset with its declared classes and no images: enough for the protocol's class rules."""
    return DatasetSplits(name, DATASETS[name].classnames, (), (), ())


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


def test_variation_shifts_the_image_distribution():
    """A hard variation (small, noisy, faded) gives lower-contrast, noisier images than the default."""
    def stats(variation):
        rng = np.random.default_rng(3)
        images = [np.asarray(render("black", "square", "photo", rng, variation), dtype=np.float32) for _ in range(40)]
        blocks = [image.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)) for image in images]  # 4x4 means: noise averages out
        contrast = np.mean([np.abs(block - block.mean()).mean() for block in blocks])
        roughness = np.mean([np.abs(np.diff(image, axis=1)).mean() for image in images])
        return contrast, roughness

    default_contrast, default_roughness = stats(Variation())
    hard_contrast, hard_roughness = stats(DATASETS["synthetic_source_a"].variation)
    assert hard_contrast < 0.8 * default_contrast
    assert hard_roughness > 1.5 * default_roughness


@pytest.mark.parametrize("style", [s for s in STYLES if s != "photo"])
def test_severity_moves_a_style_towards_the_photo(style):
    """A milder severity makes the same scene (same draws) closer to its photo rendering: monotonically,
    and for the image-level corruptions at severity 0 within the photo style's own noise."""
    def distance_to_photo(severity: float) -> float:
        gaps = []
        for seed in range(12):
            styled = render("red", "star", style, np.random.default_rng(seed), Variation(severity=severity))
            photo = render("red", "star", "photo", np.random.default_rng(seed))
            gaps.append(np.abs(np.asarray(styled, np.float32) - np.asarray(photo, np.float32)).mean())
        return float(np.mean(gaps))

    gaps = [distance_to_photo(s) for s in (1.0, 0.5, 0.0)]
    assert gaps[0] > gaps[1] > gaps[2], gaps
    if style != "sketch":  # a sketch keeps its paper background at every severity
        assert gaps[2] < 6.0, gaps


def test_severity_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="Variation.severity must lie in"):
        Variation(severity=1.5)


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
    for name, spec in SYNTHETIC_SPECS.items():
        classnames = DATASETS[name].classnames
        tokenizer([spec.template.format(c) for c in classnames])
        longest = max(classnames, key=lambda c: len(c.split()))
        tokenizer("x " * 16 + f"{longest}.")  # a 16-token soft prompt, the class, ".", SOT, EOT


# --- class layouts, through the protocol's own rules ------------------------------------------------


@pytest.mark.parametrize("name", BASE_TO_NEW_DATASETS)
def test_base_and_new_share_no_word_and_nor_do_pseudo_base_and_pseudo_new(name):
    splits = _splits_of(name)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    pseudo_base, pseudo_new = pseudo_split(base)
    assert (len(splits.classnames), len(base.classnames), len(new.classnames)) == (36, 18, 18)
    assert (len(pseudo_base.classnames), len(pseudo_new.classnames)) == (9, 9)
    assert not _words(base.classnames) & _words(new.classnames)
    assert not _words(pseudo_base.classnames) & _words(pseudo_new.classnames)
    # The swapped fold (pseudo-new trained, pseudo-base held out) is the same kind of split.
    swapped_base, swapped_new = pseudo_split(base, fold=1)
    assert swapped_base.classnames == pseudo_new.classnames and swapped_new.classnames == pseudo_base.classnames
    # Every colour and shape is used, each in exactly one block; base and new are made alike (two blocks).
    assert _words(base.classnames) | _words(new.classnames) == set(COLOURS) | set(SHAPE_SYNONYMS.values())
    assert len(_words(base.classnames)) == len(_words(new.classnames)) == 12


@pytest.mark.parametrize("name", BASE_TO_NEW_DATASETS)
def test_no_single_word_names_a_class_inside_a_part(name):
    splits = _splits_of(name)
    base = subsample_classes(splits, "base")
    for part in (*pseudo_split(base), subsample_classes(splits, "new")):
        for word in _words(part.classnames):
            assert sum(word in name.split() for name in part.classnames) >= 3, (name, word)
        assert len(set(part.classnames)) == len(part.classnames)


def test_each_dataset_draws_its_own_grouping_and_it_is_stable():
    groupings = {name: tuple(frozenset(block.words) for block in base_to_new_layout(name)) for name in
                 BASE_TO_NEW_DATASETS}
    assert len(set(groupings.values())) == len(BASE_TO_NEW_DATASETS)
    # Pinned: a pure function of the name (SHA-256), the same on every machine and Python version.
    a, b, c, d = base_to_new_layout("synthetic_blurry")
    assert (a.colours, a.shapes) == (("blue", "brown", "pink"), ("triangle", "ring", "moon"))
    assert (set(d.colours), set(d.shapes)) == ({"green", "black", "red"}, {"star", "hexagon", "cross"})


def test_a_changed_layout_rebuilds_the_materialised_copy(tmp_path, monkeypatch):
    from dualprompt.data import synthetic

    spec = SYNTHETIC_SPECS["synthetic_blurry"]
    folder = tmp_path / spec.folder
    folder.mkdir()
    (folder / str(spec.split_file)).write_text("{}")
    (folder / MARKER_FILE).write_text(json.dumps(synthetic._marker(spec)))
    assert is_materialised(spec, folder)
    dataset = DATASETS[spec.name]
    swapped = dataclasses.replace(dataset, classes=dataset.classes[::-1])
    monkeypatch.setitem(synthetic.DATASETS, spec.name, swapped)
    assert not is_materialised(spec, folder)


def test_pretraining_sees_every_class_in_every_style():
    from dualprompt.world.pretrain import caption_batch

    assert len(PRETRAIN_COMBOS) == len(COLOURS) * len(SHAPES)
    images, captions = caption_batch(np.random.default_rng(0), 1500)
    seen = {tuple(caption.removesuffix(".").split()[-2:]) for caption in captions}
    assert seen == set(PRETRAIN_COMBOS)  # without --synonym-prob every caption uses the common word
    for name in BASE_TO_NEW_DATASETS:  # every benchmark class, base and new, is a pretraining pair
        assert set(DATASETS[name].classes) <= set(PRETRAIN_COMBOS)


def test_class_names_are_rare_synonyms_that_pretraining_uses_at_the_requested_rate():
    from dualprompt.world.pretrain import caption_batch

    synonyms = set(SHAPE_SYNONYMS.values())
    assert len(synonyms) == len(SHAPES) and not synonyms & (set(SHAPES) | set(COLOURS))
    assert synonyms <= set(vocabulary())
    assert classname("red", "circle") == "red disc"
    for name in DATASETS:  # every dataset names its classes by colour and synonym
        assert {n.split()[1] for n in DATASETS[name].classnames} <= synonyms
    _, captions = caption_batch(np.random.default_rng(0), 4000, synonym_prob=0.1)
    rare = [c for c in captions if c.removesuffix(".").split()[-1] in synonyms]
    assert 300 <= len(rare) <= 500  # Binomial(4000, 0.1): mean 400, std 19
    # With probability 0 no extra draw is made: the random stream is the one before synonyms existed
    # (these captions are what generator version 2's caption_batch drew from this seed).
    assert caption_batch(np.random.default_rng(3), 3)[1] == [
        "a photo of a black moon.", "a pixelated picture of a yellow hexagon.",
        "x x x x x x x x a grainy photo of a cyan triangle."]


def test_protocol_miniatures_are_declared_as_data():
    from dualprompt.protocols import get_protocol

    xd, dg = get_protocol("cross_dataset"), get_protocol("domain_generalization")
    source = DATASETS[SOURCE_DATASET]
    assert xd.default_offline_datasets == dg.default_offline_datasets == (SOURCE_DATASET,)
    assert source.styles == ("photo",) and not source.test_only
    # Cross-dataset: every target has classes the source never trained on, in a style it never saw.
    for target in xd.default_offline_targets:
        assert set(DATASETS[target].classes) - set(source.classes)
        assert "photo" not in DATASETS[target].styles
    # Domain generalisation: the source's classes (or a subset) in other renderings, test only.
    for target in dg.default_offline_targets:
        spec, dataset = SYNTHETIC_SPECS[target], DATASETS[target]
        assert spec.test_only and dataset.test_only
        assert set(dataset.classes) <= set(source.classes)
        order = [source.classes.index(pair) for pair in dataset.classes]
        assert order == sorted(order)  # subsets keep the source's label order, as ImageNet-A/-R
    assert len(DATASETS["synthetic_source_a"].classes) == len(DATASETS["synthetic_source_r"].classes) == 12
    assert set(OFFLINE_TRAINING) == {"epochs", "batch_size", "shots", "crop_scale_min"}
    assert OFFLINE_TRAINING["shots"] <= DATASETS[BASE_TO_NEW_DATASETS[0]].images_per_class["train"]


# --- datasets: counts, determinism, materialisation ----------------------------------------------


def test_every_synthetic_dataset_is_declared_with_the_documented_counts():
    assert set(SYNTHETIC_SPECS) == set(DOCUMENTED_COUNTS)
    for name, (n_classes, n_train, n_val, n_test) in DOCUMENTED_COUNTS.items():
        spec = SYNTHETIC_SPECS[name]
        assert (spec.n_classes, *spec.expected_counts) == (n_classes, n_train, n_val, n_test), name
        assert spec.synthetic and spec.reader == "split_json" and spec.template == "a photo of a {}."


def _check_reads_with_documented_counts(name: str, root: Path) -> DatasetSplits:
    n_classes, n_train, n_val, n_test = DOCUMENTED_COUNTS[name]
    splits = load_dataset(name, root)  # materialises on first use, then the project's reader reads it
    assert len(splits.classnames) == n_classes and splits.classnames == DATASETS[name].classnames
    assert (len(splits.train), len(splits.val), len(splits.test)) == (n_train or 0, n_val or 0, n_test)
    for split in (splits.train, splits.val, splits.test):
        labels = [item.label for item in split]
        if labels:
            assert sorted(set(labels)) == list(range(n_classes))
            assert len(set(np.bincount(labels))) == 1  # the same number of images in every class
    return splits


@pytest.mark.parametrize("name", ["synthetic_faded", "synthetic_source_r"])
def test_materialised_datasets_read_with_the_documented_counts(isolated_dirs, name):
    splits = _check_reads_with_documented_counts(name, isolated_dirs / "data")
    if SYNTHETIC_SPECS[name].test_only:
        with pytest.raises(Exception, match="test-only"):
            sample_few_shot(splits, 16, 1)
    else:
        few = sample_few_shot(splits, OFFLINE_TRAINING["shots"], seed=1)
        assert len(few.train) == OFFLINE_TRAINING["shots"] * len(splits.classnames)
        assert len(few.val) == min(OFFLINE_TRAINING["shots"], 4) * len(splits.classnames)


@pytest.mark.slow
def test_every_materialised_dataset_reads_with_the_documented_counts(tmp_path):
    for name in DOCUMENTED_COUNTS:
        _check_reads_with_documented_counts(name, tmp_path)


def _read_split(root: Path, name: str) -> dict:
    spec = SYNTHETIC_SPECS[name]
    return json.loads((root / spec.folder / spec.split_file).read_text())


def test_materialise_is_idempotent(tmp_path):
    name = "synthetic_source_a"
    spec = SYNTHETIC_SPECS[name]
    materialise(name, tmp_path)
    marker = tmp_path / spec.folder / MARKER_FILE
    built_at = marker.stat().st_mtime_ns
    materialise(name, tmp_path)
    assert marker.stat().st_mtime_ns == built_at  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [spec.folder]  # no staging leftovers


@pytest.mark.parametrize("name", [pytest.param("synthetic_sketch", marks=pytest.mark.slow), "synthetic_source_r"])
def test_materialise_is_deterministic_across_roots(tmp_path, name):
    materialise(name, tmp_path / "a")
    materialise(name, tmp_path / "b")
    first, second = _read_split(tmp_path / "a", name), _read_split(tmp_path / "b", name)
    assert first == second
    image_dir = Path(SYNTHETIC_SPECS[name].folder) / SYNTHETIC_SPECS[name].image_dir
    for relpath in (first["test"][0][0], first["test"][-1][0]):
        a, b = (tmp_path / root / image_dir / relpath for root in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()


def test_materialise_rebuilds_an_outdated_copy(tmp_path):
    name = "synthetic_source_a"
    spec = SYNTHETIC_SPECS[name]
    materialise(name, tmp_path)
    marker = tmp_path / spec.folder / MARKER_FILE
    marker.write_text(json.dumps({"generator_version": 1}))
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
        worker.join(timeout=300)
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


def test_a_balanced_schedule_gives_every_name_as_many_captions_with_colours_and_styles_spread_evenly():
    from collections import Counter

    from dualprompt.world.pretrain import caption_batch, synonym_captions_per_shape, synonym_schedule

    steps, batch = 400, 128
    per_shape = synonym_captions_per_shape(0.004, steps, batch)
    assert per_shape == 17  # what the committed stage's coin flip gives on average (0.004 x 51,200 / 12)
    schedule = synonym_schedule(1, 0.004, steps, batch)
    assert schedule == synonym_schedule(1, 0.004, steps, batch) != synonym_schedule(3, 0.004, steps, batch)
    entries = [combo for step in schedule.values() for combo in step.values()]
    assert set(schedule) <= set(range(steps)) and all(set(s) <= set(range(batch)) for s in schedule.values())
    assert Counter(shape for _, shape, _ in entries) == dict.fromkeys(SHAPES, per_shape)
    for shape in SHAPES:  # 17 = 12 colours + 5 (each at most once more); 6 styles x 2 + 5 (at most 3)
        colours = Counter(c for c, s, _ in entries if s == shape)
        styles = Counter(t for _, s, t in entries if s == shape)
        assert set(colours) == set(COLOURS) and max(colours.values()) - min(colours.values()) <= 1
        assert set(styles) == set(STYLES) and max(styles.values()) - min(styles.values()) <= 1
    # A scheduled batch names by synonym exactly its scheduled captions, in their colour and style.
    step, slots = next((k, v) for k, v in schedule.items() if len(v) > 1)
    _, captions = caption_batch(np.random.default_rng(0), batch, scheduled=slots)
    synonyms = set(SHAPE_SYNONYMS.values())
    rare = {i for i, caption in enumerate(captions) if caption.removesuffix(".").split()[-1] in synonyms}
    assert rare == set(slots)
    for i, (colour, shape, style) in slots.items():
        assert captions[i].endswith(f"{classname(colour, shape)}.")
        assert any(captions[i].endswith(t.format(classname(colour, shape))) for t in CAPTION_TEMPLATES[style])


def test_weight_decay_on_matrices_leaves_gains_biases_and_the_logit_scale_undecayed(open_clip_tiny):
    from dualprompt.world.pretrain import optimizer_groups

    model = open_clip_tiny  # only its parameters' names and shapes are read
    names = {id(p): n for n, p in model.named_parameters()}
    (every,) = optimizer_groups(model, "all")
    assert len(every["params"]) == len(names) and "weight_decay" not in every  # AdamW's 0.1 for all
    decayed, undecayed = optimizer_groups(model, "matrices")
    assert undecayed["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert len(decayed["params"]) + len(undecayed["params"]) == len(names)
    assert all(p.ndim >= 2 and "bias" not in names[id(p)] for p in decayed["params"])  # matrices, the conv
    undecayed_names = {names[id(p)] for p in undecayed["params"]}
    assert {"logit_scale", "ln_final.weight", "ln_final.bias",
            "transformer.resblocks.0.mlp.c_fc.bias"} <= undecayed_names
    assert "token_embedding.weight" not in undecayed_names


def test_the_recorded_command_names_the_new_options_only_when_they_are_used():
    import argparse

    from dualprompt.world.pretrain import command_line

    args = argparse.Namespace(steps=400, batch_size=128, lr=0.0003, seed=1, plain_caption_prob=0.0,
                              synonym_prob=0.004, synonym_schedule="random", weight_decay_on="all", init=None)
    assert "--synonym-schedule" not in command_line(args) and "--weight-decay-on" not in command_line(args)
    args.synonym_schedule, args.weight_decay_on = "balanced", "matrices"
    assert command_line(args).endswith("--synonym-prob 0.004 --synonym-schedule balanced --weight-decay-on matrices")


def test_checkpoint_is_small_and_loads_with_open_clip_defaults(open_clip_tiny):
    assert world.CHECKPOINT_PATH.stat().st_size < 8 * 2**20
    assert tuple(open_clip_tiny.visual.image_mean) == pytest.approx(world.IMAGE_MEAN)
    assert tuple(open_clip_tiny.visual.image_std) == pytest.approx(world.IMAGE_STD)
    assert open_clip_tiny.visual.image_size == (IMAGE_SIZE, IMAGE_SIZE)


def test_provenance_belongs_to_this_world():
    from dualprompt.data.synthetic import GENERATOR_VERSION
    from dualprompt.world.pretrain import classes_digest

    record = json.loads(world.PROVENANCE_PATH.read_text())
    assert record["generator_version"] == GENERATOR_VERSION
    assert record["command"].startswith("python -m dualprompt.world.pretrain")
    assert set(BASE_TO_NEW_DATASETS) <= set(record["zero_shot_accuracy_percent"])
    # Its zero-shot accuracies were measured on these datasets' classes (else: pretrain --rescore).
    assert record["zero_shot_classes_digest"] == classes_digest()


def test_rescore_needs_a_checkpoint_with_its_record(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dualprompt.world.pretrain", "--rescore", "--out",
                             str(tmp_path / "missing.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"--rescore: {tmp_path / 'missing.safetensors'} does not exist" in result.stderr


def test_committed_checkpoint_records_both_pretraining_stages():
    record = json.loads(world.PROVENANCE_PATH.read_text())
    first = record["init"]["provenance"]
    assert record["synonym_prob"] > 0 and f"--init {record['init']['checkpoint']}" in record["command"]
    assert first["synonym_prob"] == 0 and first["init"] is None and "--init" not in first["command"]
    assert first["generator_version"] == record["generator_version"]


def test_pretrain_continues_from_a_first_stage_and_rejects_one_that_does_not_fit(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    from dualprompt.world.pretrain import load_init, provenance_path

    open_clip.add_model_config(world.CONFIG_PATH)
    first = open_clip.create_model(world.TINY_MODEL_NAME)
    path = tmp_path / "stage1.safetensors"
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(path))
    provenance_path(path).write_text(json.dumps({"command": "stage one"}))
    second = open_clip.create_model(world.TINY_MODEL_NAME)
    assert load_init(second, path) == {"command": "stage one"}
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    state = {k: v.contiguous() for k, v in first.state_dict().items()}
    state["token_embedding.weight"] = state["token_embedding.weight"][:51]  # a checkpoint of another vocabulary
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"--init .*stage1.safetensors does not fit the tiny CLIP of this world"):
        load_init(second, path)


@pytest.mark.parametrize(("args", "message"), [
    (["--synonym-prob", "1.5"], "--synonym-prob is a probability"),
    (["--init", "missing.safetensors"], "--init missing.safetensors: no such checkpoint file"),
    (["--synonym-schedule", "balanced"], "--synonym-schedule balanced: --synonym-prob 0.0 over 1000 steps of 128 "
                                         "gives no synonym caption per shape"),
])
def test_pretrain_rejects_bad_arguments_before_any_work(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "dualprompt.world.pretrain", *args, "--out",
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2 and message in result.stderr
    assert not list(tmp_path.iterdir())


def _recorded_and_measured(name: str) -> tuple[dict, dict]:
    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment

    recorded = json.loads(world.PROVENANCE_PATH.read_text())["zero_shot_accuracy_percent"][name]
    cfg = Config().replace(method="zeroshot", dataset=name)
    return recorded, Experiment(load_backbone(cfg.backbone)).run(cfg, "final").metrics


def test_checkpoint_reproduces_recorded_zero_shot_accuracy(isolated_dirs):
    """The project's zero-shot method on the loaded checkpoint gives the accuracy pretraining recorded."""
    recorded, measured = _recorded_and_measured("synthetic_blurry")
    assert measured["acc_test_base"] == pytest.approx(recorded["base"], abs=ACCURACY_TOLERANCE_POINTS)
    assert measured["acc_test_new"] == pytest.approx(recorded["new"], abs=ACCURACY_TOLERANCE_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BASE_TO_NEW_DATASETS if n != "synthetic_blurry"])
def test_checkpoint_reproduces_recorded_zero_shot_accuracy_everywhere(isolated_dirs, name):
    recorded, measured = _recorded_and_measured(name)
    assert measured["acc_test_base"] == pytest.approx(recorded["base"], abs=ACCURACY_TOLERANCE_POINTS)
    assert measured["acc_test_new"] == pytest.approx(recorded["new"], abs=ACCURACY_TOLERANCE_POINTS)


# --- the world check command ----------------------------------------------------------------------


@pytest.mark.parametrize(("draw", "kg_weight"), [("AB", None), ("CD", "12.75")])
def test_world_check_smoke_prints_every_criterion(isolated_dirs, draw, kg_weight):
    result = subprocess.run(
        [sys.executable, "-m", "dualprompt.world.check", "--smoke", "--data-root", str(isolated_dirs / "data"),
         "--cache-dir", str(isolated_dirs / "features"), "--draw", draw, "--json", str(isolated_dirs / "check.json")]
        + (["--set", f"kg_weight={kg_weight}"] if kg_weight else []),
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((isolated_dirs / "check.json").read_text())["rows"]  # every job, search folds included
    assert {(row["stage"], row["method"]) for row in rows} == {
        ("final", "zeroshot"), ("final", "coop"), ("final", "kgcoop"), ("search", "coop")}
    out = result.stdout
    for criterion in ("CoOp base - zero-shot base", "zero-shot new - CoOp new", "KgCoOp HM - CoOp HM",
                      "seed std of zero-shot CLIP Average HM", "seed std of CoOp Average HM",
                      f"seed std of KgCoOp (weight {kg_weight or 8}) Average HM", "SE of one search trial's objective"):
        line = next((line for line in out.splitlines() if criterion in line), None)
        assert line is not None, f"missing criterion {criterion!r} in:\n{out}"
        assert line.split()[0] in ("PASS", "FAIL", "n/a"), line
    assert "| synthetic_blurry" in out and "Average over 1 datasets" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| dataset"))
    table = lines[start:start + 5]  # header, rule, the three methods: their columns stay aligned
    assert table[-1].startswith("| synthetic_blurry") and len({len(line) for line in table}) == 1, table
    assert "steps/s" in out and "criteria pass" in out
    for effect in ("CoOp base - zero-shot base >= 10 on", "zero-shot new - CoOp new >= 3 on",
                   "KgCoOp HM - CoOp HM >= 2 on"):
        line = next((line for line in out.splitlines() if effect in line), "")
        assert " of 1: blurry " in line, f"missing the per-dataset count {effect!r} in:\n{out}"
    assert ("class draw CD (base = blocks C + D)" in out) == (draw == "CD")


def test_per_dataset_regime_counts_each_effect_on_each_dataset_alone():
    """Hand-made rows: CoOp gains 12 and 8 base points on two datasets (seeds 1 and 2 averaged) and loses
    new-class accuracy on the first only; KgCoOp's per-dataset HM is the HM of that dataset's own pair."""
    from dualprompt.world.check import per_dataset_regime

    accuracy = {  # (method, dataset): [(base, new) for seeds 1 and 2]
        ("zeroshot", "a"): [(50, 60), (50, 60)], ("coop", "a"): [(61, 50), (63, 54)], ("kgcoop", "a"): [(60, 60)] * 2,
        ("zeroshot", "b"): [(50, 60), (50, 60)], ("coop", "b"): [(58, 60), (58, 62)], ("kgcoop", "b"): [(58, 61)] * 2,
    }
    final = {(m, d, seed): {"acc_test_base": b, "acc_test_new": n, "hm_test": 2 * b * n / (b + n)}
             for (m, d), pairs in accuracy.items() for seed, (b, n) in zip((1, 2), pairs, strict=True)}
    effects = {name: (threshold, values) for name, threshold, values in per_dataset_regime(final, ("a", "b"), (1, 2))}
    assert effects["CoOp base - zero-shot base"] == (10.0, {"a": 12.0, "b": 8.0})
    assert effects["zero-shot new - CoOp new"] == (3.0, {"a": 8.0, "b": -1.0})
    threshold, kg = effects["KgCoOp HM - CoOp HM"]
    coop_b = sum(2 * 58 * n / (58 + n) for n in (60, 62)) / 2
    assert threshold == 2.0 and kg["b"] == pytest.approx(2 * 58 * 61 / 119 - coop_b)


def test_world_check_refuses_an_unknown_draw():
    result = subprocess.run([sys.executable, "-m", "dualprompt.world.check", "--draw", "AE"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "--draw: 'AE' is not a class draw; use one of AB, AC" in result.stderr
