"""A search's class folds, as the world is and with a base of four quarters (`python -m dualprompt.world.folds`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dualprompt.data.sampling import pseudo_split, subsample_classes
from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS, DATASETS
from dualprompt.data.types import DatasetSplits
from dualprompt.errors import DualpromptError
from dualprompt.validity import cell_agreements, spearman_brown
from dualprompt.world import draws, folds

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "results" / "base2new" / "example"


def _words(classnames) -> set[str]:
    return {word for name in classnames for word in name.split()}


@pytest.mark.parametrize("pairing", folds.PAIRINGS)
@pytest.mark.parametrize("name", BASE_TO_NEW_DATASETS)
def test_every_pairing_makes_base_four_word_disjoint_quarters_and_folds_hold_out_two(name, pairing):
    committed = DATASETS[name].classnames
    splits = folds.relabel_to(folds.quarters_order(pairing))(DatasetSplits(name, committed, (), (), ()))
    base = subsample_classes(splits, "base")
    quarters = {letter: [committed[label] for label in draws.block_labels(letter, folds.QUARTER)]
                for letter in draws.LETTERS}
    assert len(splits.classnames) == 32 and sorted(base.classnames) == sorted(sum(quarters.values(), []))
    for letter, classes in quarters.items():  # 2 colours x 2 shapes, sharing no word with another quarter
        assert len({c.split()[0] for c in classes}) == 2 and len({c.split()[1] for c in classes}) == 2
        others = [c for other, cs in quarters.items() if other != letter for c in cs]
        assert not _words(classes) & _words(others)
    for fold in range(draws.N_FOLDS):
        pseudo_base, pseudo_new = pseudo_split(base, fold)
        held = folds.held_out(pairing, fold)
        assert sorted(pseudo_new.classnames) == sorted(c for letter in held for c in quarters[letter])
        assert not _words(pseudo_base.classnames) & _words(pseudo_new.classnames)
    # The two folds of a pairing hold out complementary quarters; the three pairings, every pair of them.
    assert sorted(folds.held_out(pairing, 0) + folds.held_out(pairing, 1)) == list(draws.LETTERS)
    assert sorted(folds.held_out(p, f) for p in folds.PAIRINGS for f in (0, 1)) == ["AB", "AC", "AD", "BC", "BD", "CD"]


def test_class_reliability_by_hand():
    # Two complementary folds: the Spearman-Brown value of their agreement, whatever folds sharing a block do.
    assert folds.class_reliability(0.2, 0.9, 2) == pytest.approx(spearman_brown(0.2, 2))
    # No block effect (folds sharing a block agree no more than disjoint ones): Spearman-Brown over k folds.
    assert folds.class_reliability(0.2, 0.2, 6) == pytest.approx(spearman_brown(0.2, 6))
    # A block effect stays at weight 1/4 however many folds: 0.2 / (0.4 + (1 - 0.8 + 0.2) / 6).
    assert folds.class_reliability(0.2, 0.4, 6) == pytest.approx(0.2 / (0.4 + 0.4 / 6))
    assert folds.class_reliability(-0.1, 0.3, 4) == 0.0 and math.isnan(folds.class_reliability(math.nan, 0.3, 4))


def test_split_agreements_separate_disjoint_from_shared_held_out_blocks():
    table = pd.DataFrame({"CD": [1, 2, 3, 4], "AB": [1, 2, 3, 4], "BD": [4, 3, 2, 1], "AC": [4, 3, 2, 1]})
    disjoint, shared = folds.split_agreements(table)
    assert disjoint == pytest.approx(1.0)  # CD-AB and BD-AC
    assert shared == pytest.approx(-1.0)  # CD-BD, CD-AC, AB-BD, AB-AC


def test_the_sweeps_own_folds_are_its_trials_jobs_named_by_the_block_each_holds_out():
    configs, jobs, seeds = folds.sweep_trials(str(EXAMPLE), (2, 2))
    _, trials = draws.ranked_complete_trials(str(EXAMPLE))
    assert list(configs) == list(trials["trial_id"])[1::2] and seeds == (1, 2)
    frame = pd.DataFrame(jobs)
    assert set(frame["trial_id"]) == set(configs) and set(frame["split"]) == {"A", "B"}
    assert frame.groupby("trial_id").size().eq(len(BASE_TO_NEW_DATASETS) * 2 * len(seeds)).all()
    assert all(fields["method"] == "dualprompt" and "seed" not in fields for fields in configs.values())


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2", "--smoke"], "--shard: '3/2' is not I/N with 1 <= I <= N"),
    (["--shard", "half", "--smoke"], "--shard: 'half' is not I/N"),
    ([], "--sweep: name a finished base-to-new sweep's folder"),
    (["--smoke", "--from-json", "x.json"], "--from-json: it re-reads finished runs; drop --sweep and --smoke."),
    (["--from-json", "missing.json"], "--from-json: missing.json is not a file"),
])
def test_bad_arguments_are_one_sentence_before_any_work(capsys, args, message):
    with pytest.raises(SystemExit):
        folds.parse_args(args)
    assert message in capsys.readouterr().err


def test_files_of_another_shape_or_other_seeds_are_one_sentence(tmp_path):
    other = tmp_path / "draws.json"
    other.write_text(json.dumps({"configs": {}, "datasets": [], "seeds": [1], "rows": []}))  # a world.draws file
    with pytest.raises(DualpromptError, match=f"{other} is not a file that `world.folds --json` wrote"):
        folds.read_records([str(other)])
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps({"seeds": [1], "configs": {}, "jobs": []}))
    two.write_text(json.dumps({"seeds": [1, 2], "configs": {}, "jobs": []}))
    with pytest.raises(DualpromptError, match="the files ran different search seeds"):
        folds.read_records([str(one), str(two)])


def test_a_layouts_cells_are_its_dataset_split_and_seed_jobs_by_hand():
    rank = {"a": [1, 2, 3, 4], "b": [4, 3, 2, 1]}
    # Seed 2 repeats seed 1 in every cell; split B of dataset x ranks as split A; dataset y ranks the other way.
    cells = {("x", "A"): "a", ("x", "B"): "a", ("y", "A"): "b", ("y", "B"): "b"}
    jobs = pd.DataFrame([{"trial_id": f"t{i}", "dataset": d, "split": split, "seed": seed, "objective": rank[r][i]}
                         for (d, split), r in cells.items() for seed in (1, 2) for i in range(4)])
    table = folds.cells_of(jobs)
    assert table.shape == (4, 8) and list(table.columns[0]) == ["x", "A", 1]
    assert cell_agreements(table) == pytest.approx({"another seed": 1.0, "another fold": 1.0, "another dataset": -1.0})


def test_model_check_sets_the_folds_measured_agreement_beside_the_cell_studys_prediction():
    # Dataset x: fold 0 (holds out B) ranks 1..5, fold 1 ranks 2 1 3 4 5 (Spearman 0.9); dataset y 1 2 3 5 4 on
    # both (1.0): over one dataset the folds agree at 0.95 on average. Shares: another seed 1, another fold 0.95,
    # another dataset 0.85, so g = 0.85, d = 0.10, c = 0.05, n = 0 and r(1) = 0.95 / (0.95 + 0.05) = 0.95.
    ranks = {("x", "B"): [1, 2, 3, 4, 5], ("x", "A"): [2, 1, 3, 4, 5], ("y", "B"): [1, 2, 3, 5, 4],
             ("y", "A"): [1, 2, 3, 5, 4]}
    jobs = pd.DataFrame([{"trial_id": f"t{i}", "layout": folds.COMMITTED, "dataset": d, "split": split, "seed": seed,
                          "objective": 50.0 + 2 * rank[i]}
                         for (d, split), rank in ranks.items() for seed in (1, 2) for i in range(5)])
    shares = cell_agreements(folds.cells_of(jobs))
    assert shares == pytest.approx({"another seed": 1.0, "another fold": 0.95, "another dataset": 0.85})
    line = folds.model_check(jobs, shares, 2)
    assert "1: 0.95 (0.95), 2: " in line


def test_folds_smoke_trains_every_layouts_folds_and_rereads_its_json(isolated_dirs):
    out_file = isolated_dirs / "folds.json"
    result = subprocess.run(
        [sys.executable, "-m", "dualprompt.world.folds", "--smoke", "--data-root", str(isolated_dirs / "data"),
         "--cache-dir", str(isolated_dirs / "features"), "--json", str(out_file)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("4 trials, 1 dataset,"):]
    for design in ("committed: 2 folds x 2 seeds", "quarters: 2 folds x 2 seeds", "quarters: 4 folds x 1 seed",
                   "quarters: 6 folds x 1 seed", "quarters: 6 folds x 2 seeds"):
        assert f"| {design} |" in summary
    assert "The reliability of a committed search of 1 dataset x 2 folds x 2 seeds needs cells of two" in summary
    jobs = pd.DataFrame(json.loads(out_file.read_text())["jobs"])
    # 4 configurations x 2 seeds x 1 dataset x (3 pairings + the committed layout) x 2 folds.
    assert len(jobs) == 64 and jobs["objective"].between(0, 100).all()
    assert sorted(jobs.loc[jobs["layout"] == folds.COMMITTED, "split"].unique()) == ["A", "B"]
    assert sorted(jobs.loc[jobs["layout"] != folds.COMMITTED, "split"].unique()) == ["AB", "AC", "AD", "BC", "BD", "CD"]
    again = subprocess.run([sys.executable, "-m", "dualprompt.world.folds", "--from-json", str(out_file)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == summary.strip(), again.stderr[-2000:]
