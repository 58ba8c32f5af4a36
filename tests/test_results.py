"""Result rows: schema, typed rows, atomic Parquet writes, reading back, the final table."""

from __future__ import annotations

import json
import math
import platform
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import dualprompt.results as results_module
from dualprompt.config import Config
from dualprompt.protocols import get_protocol
from dualprompt.results import (
    KEY_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    ResultRow,
    ResultsError,
    read_results,
    rows_to_table,
    write_rows,
)
from dualprompt.storage import StorageError, check_writable

SEARCH_METRICS = get_protocol("base2new").search.metric_columns
FINAL_METRICS = get_protocol("base2new").final.metric_columns

REQUIRED = (
    "schema_version", "sweep", "stage", "trial_id", "method", "dataset", "seed", "shots", "backbone", "pretrained",
    "status", "error", *SEARCH_METRICS, *FINAL_METRICS, "train_s", "wall_s", "ray_startup_s", "backbone_load_s",
    "feature_s", "eval_s", "trial_wall_s", "peak_rss_bytes", "peak_cuda_bytes", "restarts", "git_commit",
    "torch_version", "open_clip_version", "ray_version", "optuna_version", "dualprompt_version", "host",
    "python_version", "finished_at",
)


# The non-configuration columns of each schema version (configuration columns follow Config and need no bump).
# When this test fails, bump SCHEMA_VERSION in dualprompt/results.py, add the migration from the previous
# version to MIGRATIONS, and pin the new list here.
COLUMNS_OF_VERSION = {
    2: (
        "schema_version", "sweep", "protocol", "stage", "trial_id", "variant", "method", "dataset", "seed", "shots",
        "backbone", "pretrained", "source_dataset", "fold", "search_trial_id", "status", "error",
        "acc_val_pseudobase", "acc_val_pseudonew", "hm_val", "acc_test_base", "acc_test_new", "hm_test", "acc_test",
        "acc_val", "n_val_pseudobase", "n_val_pseudonew", "n_test_base", "n_test_new", "n_test", "n_val",
        "hm_val_se", "hm_test_se", "acc_test_se", "acc_val_se", "n_train_classes", "n_train_images", "steps",
        "final_loss", "loss_terms_json", "prompt_file", "ray_startup_s", "backbone_load_s", "feature_s", "train_s",
        "eval_s", "wall_s", "trial_wall_s", "peak_rss_bytes", "peak_cuda_bytes", "device", "world_size",
        "restarts", "config_json", "git_commit", "git_dirty", "torch_version", "open_clip_version", "ray_version",
        "optuna_version", "dualprompt_version", "python_version", "host", "finished_at",
    ),
    3: (
        "schema_version", "sweep", "protocol", "stage", "trial_id", "variant", "method", "dataset", "seed", "shots",
        "backbone", "pretrained", "source_dataset", "fold", "search_trial_id", "status", "error",
        "acc_val_pseudobase", "acc_val_pseudonew", "hm_val", "acc_test_base", "acc_test_new",
        "acc_test_new_first_half", "acc_test_new_second_half", "hm_test", "acc_test", "acc_val", "n_val_pseudobase",
        "n_val_pseudonew", "n_test_base", "n_test_new", "n_test_new_first_half", "n_test_new_second_half", "n_test",
        "n_val",
        "hm_val_se", "hm_test_se", "acc_test_se", "acc_val_se", "n_train_classes", "n_train_images", "steps",
        "final_loss", "loss_terms_json", "prompt_file", "ray_startup_s", "backbone_load_s", "feature_s", "train_s",
        "eval_s", "wall_s", "trial_wall_s", "peak_rss_bytes", "peak_cuda_bytes", "device", "world_size",
        "restarts", "config_json", "git_commit", "git_dirty", "torch_version", "open_clip_version", "ray_version",
        "optuna_version", "dualprompt_version", "python_version", "host", "finished_at",
    ),
}


def test_schema_version_is_bumped_when_the_columns_change():
    from dualprompt.config import FIELD_TYPE
    from dualprompt.results import LEADING_CONFIG, MIGRATIONS

    pinned = COLUMNS_OF_VERSION.get(SCHEMA_VERSION, ())
    names = tuple(n for n in SCHEMA.names if n not in FIELD_TYPE or n in LEADING_CONFIG)
    added, removed = [n for n in names if n not in pinned], [n for n in pinned if n not in names]
    assert names == pinned, (
        f"Result columns changed (added {added}, removed {removed}) under SCHEMA_VERSION {SCHEMA_VERSION}: "
        "bump it in dualprompt/results.py, add a migration and pin the new list in COLUMNS_OF_VERSION."
    )
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))  # every older version can be read


def search_row(trial: str = "t1", seed: int = 1, **kw) -> ResultRow:
    metrics = {"acc_val_pseudobase": 80.0, "acc_val_pseudonew": 60.0, "hm_val": 68.57}
    return ResultRow("demo", "search", trial, Config().replace(seed=seed), metrics=metrics, train_s=1.5, eval_s=0.5,
                     **kw)




def test_schema_has_required_columns_and_every_config_field():
    for name in (*REQUIRED, *Config().to_flat()):
        assert name in SCHEMA.names, name
    assert len(set(SCHEMA.names)) == len(SCHEMA.names)
    assert SCHEMA.field("schema_version").type == pa.int16()
    assert SCHEMA.field("n_ctx").type == pa.int64() and SCHEMA.field("mi_weight").type == pa.float64()


def test_row_to_dict_matches_schema_and_carries_provenance():
    row = search_row().to_dict()
    assert set(row) == set(SCHEMA.names)
    assert row["schema_version"] == SCHEMA_VERSION and row["status"] == "ok" and row["error"] is None
    assert row["acc_test_base"] is None  # a search row has no test metrics
    checkout = Path(results_module.__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    assert row["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert torch.__version__.startswith(row["torch_version"])  # the distribution's version, e.g. 2.3.1 of 2.3.1+cpu
    assert row["host"] == socket.gethostname() and row["python_version"] == platform.python_version()


def test_rows_record_no_path_of_the_machine_that_wrote_them():
    """Where a machine keeps its datasets and feature cache is a place, not data: rows record "" for both."""
    local = Config().replace(data_root="/machine/data", cache_dir="/machine/cache", n_ctx=8)
    row = ResultRow("demo", "search", "t1", local, metrics={"hm_val": 50.0}).to_dict()
    recorded = json.loads(row["config_json"])
    assert row["data_root"] == row["cache_dir"] == recorded["data_root"] == recorded["cache_dir"] == ""
    assert row["n_ctx"] == recorded["n_ctx"] == 8  # everything else as configured


def test_git_dirty_means_code_changed_not_results_written(tmp_path):
    from dualprompt.results import git_state

    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    (tmp_path / "results" / "base2new" / "example").mkdir(parents=True)
    (tmp_path / "results" / "base2new" / "example" / "search-1.parquet").write_bytes(b"rows")
    state = git_state(tmp_path)
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False  # a sweep's own rows
    (tmp_path / "code.py").write_text("x = 2  # edited\n")
    assert git_state(tmp_path)["git_dirty"] is True  # an edit to the code


def test_write_then_read_round_trips(tmp_path):
    failed = ResultRow("demo", "search", "t1", Config().replace(seed=2), status="failed", error="RuntimeError: boom",
                       final_loss=math.nan)
    path = write_rows([search_row(), failed], tmp_path / "sweep", "search-t1.parquet")
    assert path.endswith("search-t1.parquet")
    frame = read_results(tmp_path / "sweep")
    assert len(frame) == 2 and list(frame.columns) == SCHEMA.names
    bad = frame[frame["status"] == "failed"].iloc[0]
    assert bad["error"] == "RuntimeError: boom"
    assert pd.isna(bad["hm_val"]) and pd.isna(bad["final_loss"])  # failed rows carry nulls, never NaN junk
    assert frame["finished_at"].dt.tz is not None
    assert len(pd.read_parquet(tmp_path / "sweep")) == 2  # plain pandas reads the folder too


def test_write_is_atomic_and_replaces_the_trial_file(tmp_path):
    write_rows([search_row()], tmp_path, "search-t1.parquet")
    write_rows([search_row(), search_row(seed=2)], tmp_path, "search-t1.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search-t1.parquet"]  # no temporary left behind
    assert len(read_results(tmp_path)) == 2


def test_invalid_rows_write_nothing(tmp_path):
    with pytest.raises(ResultsError):
        write_rows([search_row(status="done")], tmp_path, "search-t1.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda r: r.update(status="done"), "status"),
        (lambda r: r.update(stage="tuning"), "stage"),
        (lambda r: r.update(status="failed", error=None), "error"),
        (lambda r: r.update(hm_val=140.0), "percentage"),
        (lambda r: r.update(n_ctx="four"), "schema"),
        (lambda r: r.update(sweep=None), "sweep"),
        (lambda r: r.pop("host"), "host"),
        (lambda r: r.update(colour="red"), "colour"),
    ],
)
def test_rows_are_validated_against_the_schema(change, words):
    row = search_row().to_dict()
    change(row)
    with pytest.raises(ResultsError, match=words):
        rows_to_table([row])


def test_duplicate_keys_and_empty_rows_are_rejected():
    with pytest.raises(ResultsError, match="key"):
        rows_to_table([search_row(), search_row()])
    with pytest.raises(ResultsError, match="No result rows"):
        rows_to_table([])
    assert KEY_COLUMNS == ("stage", "trial_id", "source_dataset", "dataset", "seed", "shots", "fold")
    rows_to_table([search_row(), search_row(fold=1)])  # the two folds of one search job are two rows


def test_unknown_metric_is_rejected():
    with pytest.raises(ResultsError, match="acc_test_all"):
        ResultRow("demo", "final", "t", Config(), metrics={"acc_test_all": 3.0}).to_dict()
    with pytest.raises(ResultsError, match="n_test_all"):
        ResultRow("demo", "final", "t", Config(), counts={"n_test_all": 3}).to_dict()


def test_read_ignores_hidden_files_and_ray_state(tmp_path):
    write_rows([search_row()], tmp_path, "search-t1.parquet")
    (tmp_path / "_ray").mkdir()
    (tmp_path / "_ray" / "experiment_state.json").write_text("{}")
    (tmp_path / ".search-t2.parquet.tmp").write_bytes(b"half a file")
    assert len(read_results(tmp_path)) == 1
    assert len(pd.read_parquet(tmp_path)) == 1


def test_read_errors_are_one_clear_sentence(tmp_path):
    with pytest.raises(ResultsError, match="No Parquet result files"):
        read_results(tmp_path)
    with pytest.raises(ResultsError, match="No Parquet result files"):
        read_results(tmp_path / "missing")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ResultsError, match="no dualprompt schema"):
        read_results(tmp_path)


def test_a_file_missing_columns_of_its_version_reads_with_defaults_and_nulls(tmp_path):
    table = rows_to_table([search_row()])
    pq.write_table(table.drop_columns(["template", "eval_s"]), tmp_path / "search-old.parquet")
    write_rows([search_row(trial="t2")], tmp_path, "search-t2.parquet")
    frame = read_results(tmp_path)
    assert len(frame) == 2 and list(frame.columns) == SCHEMA.names
    assert (frame["template"] == Config().prompt.template).all()  # a Config field: its default
    assert frame["eval_s"].isna().sum() == 1  # a measurement: unknown, so null


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deeper")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="Cannot write results"):
        check_writable(blocker / "sub")
