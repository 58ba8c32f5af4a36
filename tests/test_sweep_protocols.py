"""Every protocol's sweep script through its real command on a local Ray, single-process trials (local mode).

Each runs `python sweeps/<protocol>.py --smoke --pretrained random` as a subprocess (private data root, cache,
storage and Ray temp dir), then checks the rows of both stages, the prompts, and that the report renders.
Random weights: the machinery is under test, not accuracy. About 6 minutes on 2 CPUs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep_ray import sweep_env

from dualprompt import load_prompt
from dualprompt.data.synthetic import DOMAIN_GENERALISATION_TARGETS, SOURCE_DATASET
from dualprompt.protocols import get_protocol
from dualprompt.results import KEY_COLUMNS, read_results
from dualprompt.tables import best_search_trials
from dualprompt.validity import one_se_pick

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
SMOKE = ["--smoke", "--pretrained", "random"]


def sweep(script: str, args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SWEEPS / script), *SMOKE, *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def report(folder: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "dualprompt.report", str(folder)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return (folder / "_report" / "REPORT.md").read_text()


def check_stage_rows(rows, protocol_name: str) -> None:
    protocol = get_protocol(protocol_name)
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()
    assert not rows.duplicated(list(KEY_COLUMNS)).any() and set(rows["protocol"]) == {protocol_name}
    search, final = rows[rows["stage"] == "search"], rows[rows["stage"] == "final"]
    assert search[list(protocol.search.metric_columns)].notna().all().all()
    assert search[f"{protocol.search.objective}_se"].notna().all()
    for evaluation in protocol.search.evaluations:
        assert (search[evaluation.count_column] > 0).all()
    assert final[list(protocol.final.metric_columns)].notna().all().all()
    for evaluation in protocol.final.evaluations:
        assert (final[evaluation.count_column] > 0).all()
    trained = final[final["method"] != "zeroshot"]
    assert trained["prompt_file"].notna().all() and final.loc[final["method"] == "zeroshot", "prompt_file"].isna().all()


@pytest.fixture(scope="module")
def base2new(tmp_path_factory):
    """3 search trials, then best, defaults, the next rank and the worst (a spread of 1 down to rank 3) unless
    one of them is the defaults' trial (trained once, as "defaults"), three baselines and both ablations; a
    crash injected into a single-process trial after its first group of jobs, one seed's (the final stage
    has two seeds, so two groups a trial)."""
    root = tmp_path_factory.mktemp("b2n")
    marker = root / "fault-marker"
    result = sweep("base2new.py", ["--num-samples", "3", "--seeds", "1,2", "--validate-top", "1",
                                   "--validate-spread", "1", "--ablations", "--one-se",
                                   "--storage-path", str(root / "results"), "--name", "b2n"],
                   sweep_env(root, DUALPROMPT_FAULT_ONCE=str(marker)), timeout=600)
    return {"root": root, "rows": read_results(root / "results" / "b2n"), "marker": marker, "result": result}


def expected_final_variants(rows) -> list[str]:
    """best, defaults, the one-SE pick where it is neither, ranks 2 and 3 (those that are not the defaults' or
    the one-SE pick's trial), baselines, ablations."""
    ranked = best_search_trials(rows, k=3)["trial_id"].tolist()
    defaults_trial = rows.loc[rows["variant"] == "defaults", "search_trial_id"].iloc[0]
    pick = one_se_pick(rows).trial_id
    one_se = ["one_se"] if pick not in (ranked[0], defaults_trial) else []
    ranks = [f"top{r}" for r in (2, 3) if ranked[r - 1] not in (defaults_trial, pick)]
    return ["best", "defaults", *one_se, *ranks, "zeroshot", "coop", "kgcoop", "mi_only", "aug_only"]


@pytest.mark.timeout(700)
def test_base_to_new_final_stage_validates_the_search(base2new):
    rows = base2new["rows"]
    check_stage_rows(rows, "base2new")
    final = rows[rows["stage"] == "final"]
    expected = expected_final_variants(rows)
    assert sorted(set(final["variant"])) == sorted(expected) and len(expected) >= 8
    assert len(final) == len(expected) * 2  # one dataset, two seeds
    # The new classes' two halves split the new-class test images between them, and their accuracies with them.
    halves = final[["n_test_new_first_half", "n_test_new_second_half"]].astype(float)
    assert (halves.sum(axis=1) == final["n_test_new"]).all()
    weighted = (final["acc_test_new_first_half"] * halves.iloc[:, 0] + final["acc_test_new_second_half"]
                * halves.iloc[:, 1]) / final["n_test_new"].astype(float)
    assert weighted.to_numpy() == pytest.approx(final["acc_test_new"].to_numpy())
    variants = final.groupby("variant").first()
    assert variants.loc["mi_only", "aug_strength"] == 0.0 and variants.loc["aug_only", "mi_weight"] == 0.0
    for name in ("mi_only", "aug_only", "best", *(v for v in expected if v.startswith("top"))):
        assert variants.loc[name, "search_trial_id"] in set(rows.loc[rows["stage"] == "search", "trial_id"])
    text = report(base2new["root"] / "results" / "b2n")
    assert "Did the objective predict the final result?" in text and "Spearman" in text
    assert "What the search bought" in text and "Dual-view, searched, MI only" in text
    assert (base2new["root"] / "results" / "b2n" / "_report" / "objective_validity.png").is_file()


@pytest.mark.timeout(60)
def test_a_crashed_single_process_trial_resumes_from_its_checkpoint(base2new):
    rows = base2new["rows"]
    assert base2new["marker"].exists(), "the injected fault never fired"
    restarted = rows[rows["restarts"] >= 1]
    assert len(restarted) >= 1, "no row recorded the restart"
    trial = rows[rows["trial_id"] == restarted["trial_id"].iloc[0]]
    assert sorted(trial["restarts"].tolist()) == [0, 1] and (trial["status"] == "ok").all()


@pytest.mark.timeout(60)
def test_single_process_trials_reuse_their_process_and_backbone(base2new):
    rows = base2new["rows"]
    loads = rows[rows["backbone_load_s"] > 0].groupby("stage").size()
    crashed = rows[rows["restarts"] >= 1].groupby("stage")["trial_id"].nunique().reindex(loads.index, fill_value=0)
    # Each stage's Tuner starts one process per concurrent trial (2 on 2 CPUs); each loads the backbone once. The
    # injected crash kills one process, and whether Tune starts a replacement (which loads it again) depends on
    # what else is still pending then; without reuse the final stage alone would load it once per trial (8 or more).
    assert (loads <= 2 + crashed).all(), (loads.to_dict(), crashed.to_dict())
    assert rows.groupby(["stage", "trial_id"]).ngroups == 3 + len(expected_final_variants(rows))
    assert "% doing work" in base2new["result"].stdout


@pytest.mark.timeout(500)
def test_cross_dataset_evaluates_the_source_prompt_on_targets_without_training(tmp_path):
    sweep("cross_dataset.py", ["--storage-path", str(tmp_path / "results"), "--name", "xd", "--targets",
                               "synthetic_blurry,synthetic_sketch", "--validate-top", "0"], sweep_env(tmp_path))
    rows = read_results(tmp_path / "results" / "xd")
    check_stage_rows(rows, "cross_dataset")
    final = rows[rows["stage"] == "final"]
    source, targets = final[final["dataset"] == SOURCE_DATASET], final[final["dataset"] != SOURCE_DATASET]
    assert set(targets["dataset"]) == {"synthetic_blurry", "synthetic_sketch"} and len(targets) == 2 * len(source)
    assert (targets["steps"] == 0).all() and (targets["source_dataset"] == SOURCE_DATASET).all()
    assert targets["n_train_images"].isna().all() and (source.loc[source["method"] != "zeroshot", "steps"] > 0).all()
    search = rows[rows["stage"] == "search"]
    assert set(search["dataset"]) == {SOURCE_DATASET}  # the search never touches a target
    coop = final[final["variant"] == "coop"]
    assert coop["prompt_file"].nunique() == 1  # the targets were evaluated with the source's saved prompt
    prompt = load_prompt(tmp_path / "results" / "xd" / coop["prompt_file"].iloc[0])
    assert prompt.trained_on["dataset"] == SOURCE_DATASET and prompt.config.method.method == "coop"
    text = report(tmp_path / "results" / "xd")
    assert "target average" in text and "synthetic_sketch" in text


@pytest.mark.timeout(500)
def test_domain_generalization_and_few_shot_sweeps_write_their_tables(tmp_path):
    sweep("domain_generalization.py", ["--storage-path", str(tmp_path / "results"), "--name", "dg",
                                       "--validate-top", "0"], sweep_env(tmp_path))
    rows = read_results(tmp_path / "results" / "dg")
    check_stage_rows(rows, "domain_generalization")
    final = rows[rows["stage"] == "final"]
    assert set(final["dataset"]) == {SOURCE_DATASET, DOMAIN_GENERALISATION_TARGETS[0]}
    assert "target average" in report(tmp_path / "results" / "dg")

    sweep("few_shot.py", ["--storage-path", str(tmp_path / "results"), "--name", "fs", "--validate-top", "0"],
          sweep_env(tmp_path))
    rows = read_results(tmp_path / "results" / "fs")
    check_stage_rows(rows, "few_shot")
    final = rows[rows["stage"] == "final"]
    assert sorted(set(final["shots"])) == [1, 2] and set(rows.loc[rows["stage"] == "search", "shots"]) == {2}
    epochs = final.groupby("shots")["epochs"].first()
    assert epochs[1] == 1 and epochs[2] == 1  # CoOp's ratios of the smoke budget (2 epochs): 0.25, 0.5 -> 1
    text = report(tmp_path / "results" / "fs")
    assert "accuracy_vs_shots.png" in text
    assert (tmp_path / "results" / "fs" / "_report" / "accuracy_vs_shots.png").is_file()


@pytest.mark.timeout(500)
def test_a_folder_of_class_folders_is_a_dataset_of_the_sweep(tmp_path):
    from image_folders import world_image_folder

    folder = world_image_folder(tmp_path / "my photos", n_classes=8, per_class=20)
    name = f"folder:{folder}"
    sweep("base2new.py", ["--datasets", name, "--num-samples", "2", "--seeds", "1", "--validate-top", "0",
                          "--storage-path", str(tmp_path / "results"), "--name", "mine"], sweep_env(tmp_path))
    rows = read_results(tmp_path / "results" / "mine")
    check_stage_rows(rows, "base2new")
    assert set(rows["dataset"]) == {name}
    assert (folder / "split.json").is_file()  # the split made for the folder is recorded in it
