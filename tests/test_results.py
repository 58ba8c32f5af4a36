"""Result rows: schema, typed rows, atomic Parquet writes, reading back, the final table."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualprompt.config import Config
from dualprompt.results import (FINAL_METRICS, KEY_COLUMNS, SCHEMA, SCHEMA_VERSION, SEARCH_METRICS, ResultRow,
                                ResultsError, check_writable, final_table, format_final_table, provenance,
                                read_results, rows_to_table, write_rows)

REQUIRED = (
    "schema_version", "sweep", "stage", "trial_id", "method", "dataset", "seed", "shots", "backbone", "pretrained",
    "status", "error", *SEARCH_METRICS, *FINAL_METRICS, "train_s", "wall_s", "ray_startup_s", "backbone_load_s",
    "feature_s", "eval_s", "trial_wall_s", "peak_rss_bytes", "peak_cuda_bytes", "restarts", "git_commit",
    "torch_version", "open_clip_version", "ray_version", "optuna_version", "dualprompt_version", "host",
    "python_version", "finished_at",
)


# The columns of each schema version. When this test fails, the rows changed shape (usually a Config field
# was added, renamed or removed): bump SCHEMA_VERSION in dualprompt/results.py and pin the new list here.
COLUMNS_OF_VERSION = {
    1: (
        "schema_version", "sweep", "stage", "trial_id", "method", "dataset", "seed", "shots", "backbone", "pretrained",
        "status", "error", "precision", "text_chunk_size", "checkpoint_text", "n_ctx", "ctx_init", "template",
        "template_ensemble", "mi_weight", "mi_temperature", "kg_weight", "aug_weight", "aug_strength", "aug_variant",
        "data_root", "sampling", "n_views", "use_feature_cache", "cache_dir", "crop_scale_min", "epochs", "batch_size",
        "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "acc_val_pseudobase", "acc_val_pseudonew",
        "hm_val", "acc_test_base", "acc_test_new", "hm_test", "n_train_classes", "n_train_images", "steps",
        "final_loss", "loss_terms_json", "ray_startup_s", "backbone_load_s", "feature_s", "train_s", "eval_s",
        "wall_s", "trial_wall_s", "peak_rss_bytes", "peak_cuda_bytes", "device", "world_size", "restarts",
        "config_json", "git_commit", "git_dirty", "torch_version", "open_clip_version", "ray_version",
        "optuna_version", "dualprompt_version", "python_version", "host", "finished_at",
    ),
}


def test_schema_version_is_bumped_when_the_columns_change():
    pinned = COLUMNS_OF_VERSION.get(SCHEMA_VERSION, ())
    added = [n for n in SCHEMA.names if n not in pinned]
    removed = [n for n in pinned if n not in SCHEMA.names]
    assert tuple(SCHEMA.names) == pinned, (
        f"Result columns changed (added {added}, removed {removed}) under SCHEMA_VERSION {SCHEMA_VERSION}: "
        "bump it in dualprompt/results.py and pin the new list in COLUMNS_OF_VERSION."
    )


def search_row(trial: str = "t1", seed: int = 1, **kw) -> ResultRow:
    metrics = {"acc_val_pseudobase": 80.0, "acc_val_pseudonew": 60.0, "hm_val": 68.57}
    return ResultRow("demo", "search", trial, Config().replace(seed=seed), metrics=metrics, train_s=1.5, **kw)


def final_row(method: str, dataset: str, seed: int, base: float, new: float) -> ResultRow:
    cfg = Config().replace(method=method, dataset=dataset, seed=seed)
    metrics = {"acc_test_base": base, "acc_test_new": new, "hm_test": 2 * base * new / (base + new)}
    return ResultRow("demo", "final", f"f-{method}", cfg, metrics=metrics)


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
    assert row["git_commit"] and row["torch_version"] and row["host"] == provenance()["host"]


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
    assert KEY_COLUMNS == ("stage", "trial_id", "method", "dataset", "seed")


def test_unknown_metric_is_rejected():
    with pytest.raises(ResultsError, match="acc_test_all"):
        ResultRow("demo", "final", "t", Config(), metrics={"acc_test_all": 3.0}).to_dict()


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
    old = rows_to_table([search_row()]).replace_schema_metadata({"dualprompt_schema_version": "0"})
    pq.write_table(old, tmp_path / "search-old.parquet")
    with pytest.raises(ResultsError, match="schema version 0"):
        read_results(tmp_path)
    (tmp_path / "search-old.parquet").unlink()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ResultsError, match="no dualprompt schema"):
        read_results(tmp_path)


def test_column_drift_within_a_version_is_an_error_unless_lenient(tmp_path):
    table = rows_to_table([search_row()])
    pq.write_table(table.drop_columns(["template"]), tmp_path / "search-old.parquet")
    write_rows([search_row(trial="t2")], tmp_path, "search-t2.parquet")
    with pytest.raises(ResultsError, match="missing template"):
        read_results(tmp_path)
    frame = read_results(tmp_path, strict=False)
    assert len(frame) == 2 and frame["template"].isna().sum() == 1


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deeper")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResultsError, match="Cannot write results"):
        check_writable(blocker / "sub")


def test_final_table_average_is_hm_of_averaged_base_and_new():
    rows = [
        final_row("coop", "a", 1, 80.0, 40.0), final_row("coop", "a", 2, 90.0, 50.0),
        final_row("coop", "b", 1, 60.0, 70.0), final_row("coop", "b", 2, 60.0, 70.0),
        final_row("zeroshot", "a", 1, 70.0, 75.0), final_row("zeroshot", "b", 1, 65.0, 72.0),
    ]
    frame = rows_to_table(rows).to_pandas()
    table = final_table(frame).set_index(["dataset", "method"])
    assert table.loc[("a", "coop"), "base"] == pytest.approx(85.0)
    assert table.loc[("a", "coop"), "hm"] == pytest.approx(2 * 85 * 45 / 130)
    base, new = (85.0 + 60.0) / 2, (45.0 + 70.0) / 2
    assert table.loc[("average", "coop"), "hm"] == pytest.approx(2 * base * new / (base + new))
    assert list(final_table(frame)["dataset"])[-1] == "average"
    text = format_final_table(final_table(frame))
    assert "average" in text and "zeroshot" in text
