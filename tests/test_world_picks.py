"""Selection rules on held-out class draws (`python -m dualprompt.world.picks`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dualprompt.world import picks

REPO = Path(__file__).resolve().parents[1]


def _search_jobs(objectives: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One job a seed per configuration, with the given (seed 1, seed 2) objectives and a binomial SE of 4."""
    return pd.DataFrame([{"variant": name, "seed": seed, "stage": "search", "hm_val": value, "hm_val_se": 4.0}
                         for name, pair in objectives.items() for seed, value in zip((1, 2), pair, strict=True)])


def test_each_rule_picks_from_a_draws_search_jobs_as_a_sweep_ranks_trials():
    configs = {"defaults": {"n_ctx": 4}, "rank 1": {"n_ctx": 16}, "rank 2": {"n_ctx": 8}, "rank 3": {"n_ctx": 2}}
    # Objectives 61, 70, 69, 67; every configuration's seeds differ by 2, so a two-seed mean has SE 1.
    jobs = _search_jobs({"defaults": (60, 62), "rank 1": (69, 71), "rank 2": (68, 70), "rank 3": (66, 68)})
    chosen = picks.pick(jobs, configs)
    assert (chosen["highest"], chosen["one_se"], chosen["window"]) == ("rank 1", "rank 2", 2)
    assert chosen["se"] == pytest.approx(1.0) and chosen["objective"]["rank 3"] == pytest.approx(67.0)
    # One search seed: the best configuration's binomial SE (4): the window reaches down to 66 and holds rank 3.
    one_seed = picks.pick(jobs[jobs["seed"] == 1], configs)
    assert (one_seed["one_se"], one_seed["se"], one_seed["window"]) == ("rank 3", pytest.approx(4.0), 3)
    # Equal objectives: the earlier configuration ranks first, as a sweep's earlier trial does.
    tie = picks.pick(_search_jobs({"defaults": (70, 70), "rank 1": (70, 70)}), configs)
    assert tie["highest"] == "defaults"


@pytest.mark.parametrize("args, message", [
    ([], "--sweep: name a finished base-to-new sweep's folder"),
    (["--smoke", "--draws", "AC,XY"], "--draws: 'XY' is not a draw"),
    (["--smoke", "--search-seeds", "1,x"], "--search-seeds: '1,x' is not comma-separated integers"),
    (["--smoke", "--seeds", "0"], "must be at least 1"),
    (["--from-json", "no/such.json"], "--from-json: no/such.json is not a file"),
])
def test_bad_arguments_are_one_sentence_before_any_work(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        picks.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_picks_smoke_runs_every_draw_and_rereads_its_json(isolated_dirs):
    out_file = isolated_dirs / "picks.json"
    result = subprocess.run(
        [sys.executable, "-m", "dualprompt.world.picks", "--smoke", "--data-root", str(isolated_dirs / "data"),
         "--cache-dir", str(isolated_dirs / "features"), "--json", str(out_file)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("draw AC: SE"):]
    for key in ("one_se_minus_highest", "highest_minus_defaults", "one_se_minus_defaults"):
        assert key in summary
    record = json.loads(out_file.read_text())
    assert set(record["draws"]) == {"AC", "BD"}
    for rows in record["draws"].values():
        frame = pd.DataFrame([r for r in rows if r["stage"] != "picks"])
        # 3 configurations x 2 search seeds x 2 folds; the finals of the defaults and the (distinct) picks.
        search = frame[frame["stage"] == "search"]
        assert len(search) == 12 and search["hm_val_se"].gt(0).all()
        chosen = next(r for r in rows if r["stage"] == "picks")
        assert set(frame.loc[frame["stage"] == "final", "variant"]) == {"defaults", chosen["highest"], chosen["one_se"]}
    again = subprocess.run([sys.executable, "-m", "dualprompt.world.picks", "--from-json", str(out_file)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 0 and again.stdout == summary, again.stderr[-2000:]


def test_a_file_of_another_shape_is_one_sentence(tmp_path, capsys):
    other = tmp_path / "draws.json"
    other.write_text(json.dumps({"configs": {}, "datasets": [], "seeds": [1], "rows": []}))  # a world.draws file
    assert picks.main(["--from-json", str(other)]) == 2
    assert f"--from-json: {other} is not a file that `world.picks --json` wrote" in capsys.readouterr().err
