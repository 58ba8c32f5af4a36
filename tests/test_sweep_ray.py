"""The sweep on a real local Ray (2 CPUs is enough), on its cluster path: each job data-parallel on a Ray Train
worker group of 2, an injected worker crash, SIGINT and resume.

Each test runs the real entry point, `python sweeps/base2new.py --smoke ...`, as a subprocess with a private
data root, feature cache and storage folder. Random backbone weights keep the test independent of the
offline world's checkpoint: the sweep machinery, not accuracy, is under test. About 5 minutes on 2 CPUs.
The single-process path and the other protocols are tested in test_sweep_protocols.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from dualprompt.config import Config
from dualprompt.protocols import get_protocol
from dualprompt.results import KEY_COLUMNS, read_results
from dualprompt.search_space import DUAL_VIEW
from dualprompt.sweep_cli import offline_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parent.parent / "sweeps" / "base2new.py"
SMOKE = ["--smoke", "--pretrained", "random"]
SEARCH_METRICS = get_protocol("base2new").search.metric_columns
FINAL_METRICS = get_protocol("base2new").final.metric_columns


def sweep_env(root: Path, **extra: str) -> dict[str, str]:
    # A private Ray temp dir: other local Ray instances on the host (shared /tmp/ray) are never contacted.
    # Kept short because Ray's unix socket paths live under it.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "DUALPROMPT_DATA_ROOT": str(root / "data"), "DUALPROMPT_CACHE_DIR": str(root / "features"),
           "RAY_AUTH_MODE": "disabled",  # no token file written into the user's home by a test
           "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def sweep(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "AuthenticationError" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One shared sweep: 2 search trials x 1 job, 5 final trials (best, defaults, 3 baselines) x 3 seeds, each job
    data-parallel on 2 Train workers, and one worker crash injected after a trial's first job."""
    root = tmp_path_factory.mktemp("smoke")
    marker = root / "fault-marker"
    args = [*SMOKE, "--seeds", "1,2,3", "--workers-per-trial", "2", "--validate-top", "0", "--storage-path",
            str(root / "results"), "--name", "smoke"]
    started = time.monotonic()
    result = sweep(args, sweep_env(root, DUALPROMPT_FAULT_ONCE=str(marker)), timeout=500)
    return {"root": root, "args": args, "result": result, "rows": read_results(root / "results" / "smoke"),
            "marker": marker, "wall_s": time.monotonic() - started}


@pytest.mark.timeout(540)
def test_both_stages_write_complete_rows_in_range(smoke):
    rows = smoke["rows"]
    search, final = rows[rows["stage"] == "search"], rows[rows["stage"] == "final"]
    assert len(search) == 2 and search["trial_id"].nunique() == 2  # 2 trials x 1 dataset x 1 search seed
    assert len(final) == 15  # (best + defaults + 3 baselines) x 1 dataset x 3 seeds
    assert sorted(final["variant"].unique()) == ["best", "coop", "defaults", "kgcoop", "zeroshot"]
    assert set(search["method"]) == {"dualprompt"} and sorted(final["seed"].unique()) == [1, 2, 3]
    assert (rows["world_size"] == 2).all()
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()
    assert not rows.duplicated(list(KEY_COLUMNS)).any()
    assert search[list(SEARCH_METRICS)].notna().all().all() and search[list(FINAL_METRICS)].isna().all().all()
    assert final[list(FINAL_METRICS)].notna().all().all() and final[list(SEARCH_METRICS)].isna().all().all()
    for metric in SEARCH_METRICS + FINAL_METRICS:
        assert rows[metric].dropna().between(0, 100).all(), metric
    for column in ("ray_startup_s", "backbone_load_s", "train_s", "eval_s", "wall_s", "trial_wall_s"):
        assert (rows[column] >= 0).all(), column
    assert (rows["trial_wall_s"] >= rows["wall_s"]).all() and (rows["peak_rss_bytes"] > 0).all()
    assert rows["git_commit"].str.len().gt(0).all() and rows["ray_version"].str.startswith("2.").all()
    assert (rows["sweep"] == "smoke").all() and (rows["shots"] == 4).all() and (rows["epochs"] == 2).all()
    assert len(pd.read_parquet(smoke["root"] / "results" / "smoke")) == len(rows)


@pytest.mark.timeout(60)
def test_defaults_first_and_best_configuration_in_final(smoke):
    rows = smoke["rows"]
    searched = DUAL_VIEW.names()
    defaults = Config().replace(**offline_training()).to_flat()
    search = rows[rows["stage"] == "search"]
    assert any(all(row[k] == defaults[k] for k in searched) for _, row in search.iterrows())
    objective = search.groupby("trial_id")["hm_val"].mean()
    # With a random backbone two trials can tie; the final stage may take any trial at the maximum.
    best = search[search["trial_id"].isin(objective[objective == objective.max()].index)]
    chosen = rows[(rows["stage"] == "final") & (rows["variant"] == "best")]
    assert chosen[searched].drop_duplicates().shape[0] == 1
    chosen_config = chosen[searched].iloc[0].tolist()
    assert any(row[searched].tolist() == chosen_config for _, row in best.iterrows()), chosen_config


@pytest.mark.timeout(60)
def test_crashed_worker_resumes_from_its_checkpoint(smoke):
    rows = smoke["rows"]
    assert smoke["marker"].exists(), "the injected fault never fired"
    restarted = rows[rows["restarts"] >= 1]
    assert len(restarted) >= 1, "no row recorded the restart"
    trial = rows[rows["trial_id"] == restarted["trial_id"].iloc[0]]
    assert sorted(trial["seed"]) == [1, 2, 3] and (trial["status"] == "ok").all()
    # The first job came back from the checkpoint; the two jobs after it ran on the restarted worker group.
    assert sorted(trial["restarts"].tolist()) == [0, 1, 1]


@pytest.mark.timeout(60)
def test_output_has_progress_table_and_where_the_files_are(smoke):
    out = smoke["result"].stdout
    assert "Trial status:" in out  # Tune's status table
    assert out.count("[search] trial ") == 2 and out.count("[final] trial ") == 5
    assert "Final base-to-new table" in out and "average" in out and "Dual-view, searched" in out
    assert str(smoke["root"] / "results" / "smoke") in out and "Ray start-up" in out and "doing work" in out


@pytest.mark.timeout(120)
def test_rerunning_a_finished_sweep_changes_nothing(smoke):
    before = sorted(p.name for p in (smoke["root"] / "results" / "smoke").glob("*.parquet"))
    result = sweep(smoke["args"], sweep_env(smoke["root"]), timeout=110)
    assert "[search] already complete" in result.stdout and "[final] already complete" in result.stdout
    rows = read_results(smoke["root"] / "results" / "smoke")
    assert len(rows) == len(smoke["rows"]) and before == sorted(
        p.name for p in (smoke["root"] / "results" / "smoke").glob("*.parquet"))


def copy_of_smoke(smoke: dict, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A copy of the finished sweep (also a moved sweep folder): its rows folder and its row files' bytes."""
    shutil.copytree(smoke["root"] / "results", tmp_path / "results")
    rows_dir = tmp_path / "results" / "smoke"
    return rows_dir, {p.name: p.read_bytes() for p in rows_dir.glob("*.parquet")}


@pytest.mark.timeout(300)
def test_a_finished_sweep_trains_only_the_final_variants_a_later_run_adds(smoke, tmp_path):
    # A copy of the finished sweep (also a moved sweep folder): more validated configurations and the ablations
    # asked for afterwards. Single-process trials: the worker-group path is the fixture's.
    rows_dir, before = copy_of_smoke(smoke, tmp_path)
    args = [*SMOKE, "--seeds", "1,2,3", "--storage-path", str(tmp_path / "results"), "--name", "smoke",
            "--stage", "final", "--validate-top", "1", "--ablations"]
    result = sweep(args, sweep_env(smoke["root"]), timeout=280)
    rows = read_results(rows_dir)
    final = rows[rows["stage"] == "final"]
    old = smoke["rows"]
    best_is_defaults = (old.loc[old["variant"] == "best", "search_trial_id"].iloc[0]
                        == old.loc[old["variant"] == "defaults", "search_trial_id"].iloc[0])
    added = {"mi_only", "aug_only"} | ({"top2"} if best_is_defaults else set())  # else rank 2 is the defaults
    assert set(final["variant"]) == set(old["variant"]) - {"search"} | added
    assert "[final] adding" in result.stdout and (final.groupby("variant").size() == 3).all()
    assert all(rows_dir.joinpath(name).read_bytes() == data for name, data in before.items())  # untouched
    assert not rows.duplicated(list(KEY_COLUMNS)).any() and (rows["status"] == "ok").all()
    again = sweep(args, sweep_env(smoke["root"]), timeout=110)
    assert "[final] already complete" in again.stdout and len(read_results(rows_dir)) == len(rows)


@pytest.mark.timeout(300)
def test_a_finished_sweep_adds_final_seeds_to_every_variant(smoke, tmp_path):
    # The fixture's final stage ran seeds 1-3; a later run asks for 1-4: each variant trains seed 4 alone.
    rows_dir, before = copy_of_smoke(smoke, tmp_path)
    args = [*SMOKE, "--seeds", "1,2,3,4", "--storage-path", str(tmp_path / "results"), "--name", "smoke",
            "--stage", "final", "--validate-top", "0"]
    result = sweep(args, sweep_env(smoke["root"]), timeout=280)
    assert "[final] adding seed(s) 4" in result.stdout
    rows = read_results(rows_dir)
    final, old = rows[rows["stage"] == "final"], smoke["rows"][smoke["rows"]["stage"] == "final"]
    assert set(final["variant"]) == set(old["variant"])
    assert all(seeds == {1, 2, 3, 4} for seeds in final.groupby("variant")["seed"].agg(set))
    assert all(rows_dir.joinpath(name).read_bytes() == data for name, data in before.items())  # untouched
    assert not rows.duplicated(list(KEY_COLUMNS)).any() and (rows["status"] == "ok").all()
    new = final[final["seed"] == 4]
    assert new["trial_id"].nunique() == final["variant"].nunique() and not set(new["trial_id"]) & set(old["trial_id"])
    # Seeds only grow: a later run with the default seeds keeps seed 4, also for the variants it adds.
    later = sweep([*[a if a != "1,2,3,4" else "1,2,3" for a in args], "--ablations"], sweep_env(smoke["root"]),
                  timeout=200)
    assert "its final stage keeps them: seeds 1,2,3,4." in later.stdout and "adding seed(s)" not in later.stdout
    final = read_results(rows_dir).query("stage == 'final'")
    assert {"mi_only", "aug_only"} < set(final["variant"])
    assert all(seeds == {1, 2, 3, 4} for seeds in final.groupby("variant")["seed"].agg(set))


@pytest.mark.timeout(420)
def test_interrupted_sweep_resumes_without_lost_or_duplicate_rows(tmp_path):
    # Single-process trials take a fraction of a second at the smoke budget; 100 epochs and 8 trials keep the
    # sweep running for seconds after its first row, so the interrupt lands mid-sweep.
    samples = 8
    args = [*SMOKE, "--stage", "search", "--num-samples", str(samples), "--epochs", "100", "--storage-path",
            str(tmp_path / "results"), "--name", "resume"]
    rows_dir = tmp_path / "results" / "resume"
    env = sweep_env(tmp_path)
    driver = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list(rows_dir.glob("search-*.parquet")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.5)
        assert list(rows_dir.glob("search-*.parquet")), "no trial finished within the deadline"
        driver.send_signal(signal.SIGINT)  # Ctrl-C to the driver only
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0, output[-2000:]
    interrupted = len(list(rows_dir.glob("search-*.parquet")))
    assert 1 <= interrupted < samples, output[-2000:]

    result = sweep(args, env, timeout=300)
    assert "[search] resuming" in result.stdout
    rows = read_results(rows_dir)
    assert len(rows) == samples  # what an uninterrupted run writes: num_samples trials x 1 job
    assert rows["trial_id"].nunique() == samples and not rows.duplicated(list(KEY_COLUMNS)).any()
    assert (rows["status"] == "ok").all()


@pytest.mark.timeout(60)
def test_rays_unactionable_error_lines_stay_off_the_terminal(smoke):
    out = smoke["result"].stdout + smoke["result"].stderr
    assert "has constructor arguments in the object store" not in out  # Train's preemption-watcher line


def test_the_quiet_stream_drops_only_the_noise():
    import io

    from dualprompt.sweep import QuietRayStream

    sink = io.StringIO()
    stream = QuietRayStream(sink)
    print("(TrainController pid=1) E core_worker.cc: Actor PreemptionWatcher has constructor arguments in the "
          "object store and max_restarts > 0.", file=stream)
    print("(train_driver pid=2) Traceback (most recent call last): RuntimeError: a real error", file=stream)
    print("", file=stream)
    assert sink.getvalue() == "(train_driver pid=2) Traceback (most recent call last): RuntimeError: a real error\n\n"
