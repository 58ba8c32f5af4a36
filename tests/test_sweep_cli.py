"""Bad input to `sweeps/base2new.py`: the real command, one sentence on stderr, exit code 2, Ray never imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "sweeps" / "base2new.py"
# Runs the script as `python sweeps/base2new.py ARGS` would, then reports whether Ray was ever imported.
WRAPPER = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("RAY_IMPORTED=" + str("ray" in sys.modules))
"""


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DUALPROMPT_DATA_ROOT": str(tmp_path / "data"), "DUALPROMPT_CACHE_DIR": str(tmp_path / "f")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", WRAPPER, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--datasets", "eurosatt"], "Unknown dataset 'eurosatt'; did you mean 'eurosat'"),
        (["--datasets", "dtd"], "Dataset dtd is not usable"),
        (["--datasets", "imagenet_a"], "test-only"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--num-samples", "many"], "invalid int value"),
        (["--set", "n_cxt=8"], "n_cxt: not a configuration field. Did you mean n_ctx?"),
        (["--set", "lr=fast"], "lr: 'fast' is not a valid float"),
        (["--set", "lr"], "lr: expected KEY=VALUE"),
        (["--set", "seed=3"], "--set seed is not allowed"),
        (["--bound", "n_ctx=0:8"], "out of range: n_ctx: 0 is outside 1..64"),
        (["--bound", "mi_temperature=0:0.5"], "out of range: mi_temperature"),
        (["--bound", "lr=0.1:1"], "not a searched parameter"),
        (["--seeds", "1,x"], "--seeds takes comma-separated integers"),
        (["--epochs", "0"], "epochs: 0 must be >= 1"),
        (["--storage-path", "{blocked}/sub"], "Cannot write results"),
        (["--gpus-per-trial", "1"], "has none"),
        (["--gpus-per-trial", "1", "--workers-per-trial", "2"], "fraction of a GPU"),
        (["--workers-per-trial", "0"], "--workers-per-trial must be at least 1"),
        (["--stage", "final"], "--stage final needs the search rows"),
        (["--folds", "3"], "--folds must be 1 or 2"),
        (["--shots", "4,8"], "--shots takes one value for base2new"),
        (["--validate-top", "-1"], "--validate-top must be at least 0"),
        (["--validate-spread", "-2"], "--validate-spread must be at least 0"),
        (["--datasets", "synthetic_source_a"], "test-only dataset and cannot be trained on"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_and_no_ray(args, words, tmp_path):
    if args[:2] == ["--gpus-per-trial", "1"] and len(args) == 2:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    (tmp_path / "blocked").write_text("a file, so nothing can be created below it")
    args = [a.replace("{blocked}", str(tmp_path / "blocked")) for a in args]
    default_storage = ["--storage-path", str(tmp_path / "results")] if "--storage-path" not in args else []
    result = run_cli([*args, *default_storage], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("base2new.py: error: ") and lines[0].endswith((".", "?", ")")), lines[0]
    assert words in lines[0]
    assert "RAY_IMPORTED=False" in result.stdout
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.parquet"))


XD_SCRIPT = SCRIPT.parent / "cross_dataset.py"


def test_target_datasets_are_checked_before_ray(tmp_path):
    env = {**os.environ, "DUALPROMPT_DATA_ROOT": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(XD_SCRIPT), "--targets", "dtd", "--storage-path",
                           str(tmp_path / "results")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Dataset dtd is not usable" in done.stderr, done.stderr
    assert "RAY_IMPORTED=False" in done.stdout


def test_help_explains_every_option_in_one_line(tmp_path):
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("--num-samples", "--datasets", "--seeds", "--data-root", "--backbone", "--pretrained", "--name",
                 "--storage-path", "--gpus-per-trial", "--workers-per-trial", "--max-concurrent", "--epochs",
                 "--set", "--stage", "--smoke", "--folds", "--validate-top", "--validate-spread", "--ablations",
                 "--search-seeds"):
        assert flag in result.stdout, flag
    assert "RAY_IMPORTED=False" in result.stdout


@pytest.mark.parametrize("where", ["_sweep.json", "_ray/sweep.json"])  # and where sweeps before it kept them
def test_resumed_sweep_must_keep_its_settings(tmp_path, where):
    saved = tmp_path / "results" / "fixed" / where
    saved.parent.mkdir(parents=True)
    # What an earlier run under this name recorded; the final stage's variants and seeds may grow, so those do
    # not count.
    saved.write_text('{"seeds": [7], "validate_top": 99, "validate_spread": 9, "ablations": true, '
                     '"config": {"epochs": 99, "ctx_init": "a sketch of a"}, "folds": 2}')
    result = run_cli(["--smoke", "--storage-path", str(tmp_path / "results"), "--name", "fixed"], tmp_path)
    assert result.returncode == 2
    # ctx_fill predates this sweep, which therefore trained with the random fill, not today's default.
    assert ("was started with different folds, ctx_fill (config), ctx_init (config), epochs (config); rerun it "
            "with its original settings (--set ctx_fill=random --set 'ctx_init=a sketch of a' --set epochs=99) "
            "to resume" in result.stderr)
    assert not any(f in result.stderr for f in ("validate_top", "validate_spread", "ablations", "seeds"))
    assert "RAY_IMPORTED=False" in result.stdout


def test_settings_an_earlier_sweep_kept_in_ray_move_next_to_its_rows(tmp_path):
    import json
    import runpy

    from dualprompt.sweep_cli import check_storage, plan

    sweep = runpy.run_path(str(SCRIPT), run_name="declaration")["SWEEP"]
    started = plan(sweep, ["--storage-path", str(tmp_path), "--name", "old"])
    legacy = tmp_path / "old" / "_ray" / "sweep.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(started.settings))
    assert check_storage(started) == started
    assert json.loads((tmp_path / "old" / "_sweep.json").read_text()) == json.loads(legacy.read_text())


def test_a_finished_sweeps_final_seeds_only_grow(tmp_path, capsys):
    import json
    import runpy

    from dualprompt.sweep_cli import _changed_settings, check_storage, plan

    sweep = runpy.run_path(str(SCRIPT), run_name="declaration")["SWEEP"]
    where = ["--storage-path", str(tmp_path), "--name", "grow"]
    three, five = plan(sweep, where), plan(sweep, [*where, "--seeds", "1,2,3,4,5"])
    assert _changed_settings(three.settings, five.settings) == _changed_settings(five.settings, three.settings) == []
    saved = tmp_path / "grow" / "_sweep.json"  # next to the rows, so a folder copied without _ray/ keeps it
    assert check_storage(three) == three
    started = json.loads(saved.read_text())
    assert check_storage(five) == five  # the saved settings follow, so a later run keeps seeds 4 and 5
    assert json.loads(saved.read_text()) == {**started, "seeds": [1, 2, 3, 4, 5]}
    assert [p.name for p in saved.parent.iterdir()] == ["_sweep.json"]  # written whole, no temporary left
    capsys.readouterr()
    again = check_storage(plan(sweep, [*where, "--seeds", "2,6"]))  # what it has, and seed 6
    assert again.scope.seeds == (1, 2, 3, 4, 5, 6) and again.settings["seeds"] == [1, 2, 3, 4, 5, 6]
    said = capsys.readouterr().out
    assert "already has final seeds 1,2,3,4,5; its final stage keeps them: seeds 1,2,3,4,5,6." in said
    assert json.loads(saved.read_text())["seeds"] == [1, 2, 3, 4, 5, 6]
    assert check_storage(three).scope.seeds == (1, 2, 3, 4, 5, 6)


EXAMPLE = SCRIPT.parent.parent / "results" / "base2new" / "example"


def test_evenly_spaced_ranks_span_best_to_worst():
    from dualprompt.tables import evenly_spaced_ranks

    assert evenly_spaced_ranks(64, 5) == [0, 16, 32, 47, 63]  # search ranks 1, 17, 33, 48, 64
    assert evenly_spaced_ranks(64, 1) == [0] and evenly_spaced_ranks(3, 5) == [0, 1, 2]
    assert evenly_spaced_ranks(0, 3) == [] and evenly_spaced_ranks(5, 0) == []


def test_final_stage_validates_the_next_ranks_and_a_spread_down_to_the_worst():
    from dualprompt.results import load_results
    from dualprompt.sweep_cli import final_variants
    from dualprompt.tables import best_search_trials, evenly_spaced_ranks, searched_params
    from dualprompt.validity import one_se_pick

    rows = load_results(str(EXAMPLE))
    ranked = best_search_trials(rows, k=len(rows))["trial_id"].tolist()  # the example's 64 complete trials
    defaults_trial = rows.loc[rows["variant"] == "defaults", "search_trial_id"].iloc[0]
    first = rows[rows["trial_id"] == defaults_trial].iloc[0]  # the sweep's first search point: its defaults
    defaults = {name: first[name] for name in searched_params(rows)}
    baselines = ("zeroshot", "coop", "kgcoop")
    # The example's top trials all have 16 context vectors, so its one-SE pick is its best; give rank 4 fewer
    # (in this copy of the rows) so that the rule picks a trial of its own.
    rows.loc[rows["trial_id"] == ranked[3], "n_ctx"] = 7
    one_se = one_se_pick(rows).trial_id
    assert ranked.index(one_se) == 3

    def searched(validate_top: int, validate_spread: int, with_one_se: bool = False) -> dict[str, str]:
        variants = final_variants(rows, list(defaults), defaults, baselines, validate_top, False, validate_spread,
                                  with_one_se)
        return {v["variant"]: v["search_trial_id"] for v in variants
                if v["variant"].startswith(("best", "top", "one_se"))}

    def named(ranks) -> dict[str, str]:  # with --one-se, the pick's trial is trained once, under that name
        return {"one_se" if ranked[r - 1] == one_se else f"top{r}": ranked[r - 1] for r in ranks}

    # Without a spread: best and the next ranks, as before the options existed.
    assert searched(4, 0) == {"best": ranked[0], **{f"top{r}": ranked[r - 1] for r in range(2, 6)}}
    # With one: ranks 17, 33, 48 and 64 too, the last the worst of the search.
    assert searched(4, 4) == {**searched(4, 0), **{f"top{r}": ranked[r - 1] for r in (17, 33, 48, 64)}}
    # A spread rank inside the top ranks is trained once.
    assert searched(20, 4) == {**searched(20, 0), **{f"top{r}": ranked[r - 1] for r in (33, 48, 64)}}
    # --one-se adds the pick, under that name also where its rank is validated anyway.
    assert searched(0, 0, True) == {"best": ranked[0], "one_se": one_se}
    assert searched(4, 4, True) == {"best": ranked[0], **named((2, 3, 4, 5, 17, 33, 48, 64))}
    # So is the defaults' trial, under the name "defaults": a spread whose ranks include it trains one fewer.
    defaults_rank = ranked.index(first["trial_id"]) + 1
    spread = next(k for k in range(2, len(ranked)) if defaults_rank - 1 in evenly_spaced_ranks(len(ranked), 1 + k))
    assert defaults_rank > 5 and f"top{defaults_rank}" not in searched(0, spread)
    assert len(searched(0, spread)) == spread  # best and spread - 1 more: the defaults rank is "defaults"


def test_the_spread_option_keeps_existing_sweep_names():
    import runpy

    from dualprompt.sweep_cli import _changed_settings, plan

    sweep = runpy.run_path(str(SCRIPT), run_name="declaration")["SWEEP"]
    names = [plan(sweep, args).name for args in ([], ["--validate-spread", "0"], ["--validate-spread", "4"])]
    assert names[0] == names[1] != names[2]
    # So does --one-se, a final-stage setting that a finished sweep may add later (like --ablations).
    with_one_se = plan(sweep, ["--one-se"])
    assert with_one_se.name != names[0] and with_one_se.settings["one_se"] is True
    assert "one_se" not in plan(sweep, []).settings
    assert _changed_settings(plan(sweep, []).settings, plan(sweep, ["--one-se", "--ablations"]).settings) == []
