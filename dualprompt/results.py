"""Result rows: one Parquet schema, typed rows with provenance, atomic writes, reading back, final tables.

One row = one (stage, trial, method, dataset, seed) job. Rows are written as one Parquet file per trial
(temporary name, then rename) through `pyarrow.fs`, so a local folder and an `s3://` prefix behave
alike, and `pandas.read_parquet(folder)` reads a sweep back. Files and folders whose names start with
"." or "_" are skipped by pyarrow and pandas, which keeps temporary files and run state out of a read.
This module does not import Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import FIELD_TYPE, Config

# Bump whenever a column is added, removed, renamed or changes type (including Config fields).
SCHEMA_VERSION = 1
STAGES = ("search", "final")
STATUSES = ("ok", "failed")
KEY_COLUMNS = ("stage", "trial_id", "method", "dataset", "seed")
SEARCH_METRICS = ("acc_val_pseudobase", "acc_val_pseudonew", "hm_val")
FINAL_METRICS = ("acc_test_base", "acc_test_new", "hm_test")
PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "ray": "ray", "optuna": "optuna",
            "dualprompt": "dualprompt"}


class ResultsError(ValueError):
    """Result rows or files are unusable; the message is one sentence saying what and how to fix it."""


_ARROW_OF = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}


def _config_fields() -> list[pa.Field]:
    return [pa.field(name, _ARROW_OF[kind], nullable=False) for name, kind in FIELD_TYPE.items()]


_IDENTITY = [
    pa.field("schema_version", pa.int16(), nullable=False),
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("error", pa.string()),  # null when ok
]
_MEASURED = [
    *(pa.field(name, pa.float64()) for name in SEARCH_METRICS + FINAL_METRICS),  # percent; null if n/a
    pa.field("n_train_classes", pa.int64()),
    pa.field("n_train_images", pa.int64()),
    pa.field("steps", pa.int64()),
    pa.field("final_loss", pa.float64()),
    pa.field("loss_terms_json", pa.string()),  # last epoch's mean of each named loss term
    # Cost. ray_startup_s and backbone_load_s are charged to the first job of each worker start.
    pa.field("ray_startup_s", pa.float64()),  # trial driver start -> first line of the worker loop
    pa.field("backbone_load_s", pa.float64()),
    pa.field("feature_s", pa.float64()),
    pa.field("train_s", pa.float64()),
    pa.field("eval_s", pa.float64()),
    pa.field("wall_s", pa.float64()),  # this job, in the worker
    pa.field("trial_wall_s", pa.float64()),  # the whole trial (driver start -> all jobs back)
    pa.field("peak_rss_bytes", pa.int64()),  # worker process high-water mark so far
    pa.field("peak_cuda_bytes", pa.int64()),  # this job; null without CUDA
    pa.field("device", pa.string()),
    pa.field("world_size", pa.int64()),
    pa.field("restarts", pa.int64()),  # worker-loop restarts from a checkpoint before this job ran
    pa.field("config_json", pa.string()),  # the full resolved Config, flat
]
_PROVENANCE = [
    pa.field("git_commit", pa.string(), nullable=False),
    pa.field("git_dirty", pa.bool_()),
    *(pa.field(f"{name}_version", pa.string(), nullable=False) for name in PACKAGES),
    pa.field("python_version", pa.string(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
    pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
]


def _build_schema() -> pa.Schema:
    config = {f.name: f for f in _config_fields()}
    leading = ["method", "dataset", "seed", "shots", "backbone", "pretrained"]  # identity, after trial_id
    fields = _IDENTITY[:4] + [config.pop(name) for name in leading] + _IDENTITY[4:]
    return pa.schema(fields + list(config.values()) + _MEASURED + _PROVENANCE,
                     metadata={"dualprompt_schema_version": str(SCHEMA_VERSION)})


SCHEMA = _build_schema()


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Where and with what a row was made: git commit of the package checkout, package versions, host."""
    out: dict[str, Any] = {"git_commit": "unknown", "git_dirty": None}
    checkout = Path(__file__).resolve().parent.parent
    try:
        run = functools.partial(subprocess.run, cwd=checkout, capture_output=True, text=True, timeout=10,
                                check=True)
        out["git_commit"] = run(["git", "rev-parse", "HEAD"]).stdout.strip() or "unknown"
        # --no-optional-locks: never rewrite the index of the checkout we only inspect.
        out["git_dirty"] = bool(run(["git", "--no-optional-locks", "status", "--porcelain"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for name, distribution in PACKAGES.items():
        try:
            out[f"{name}_version"] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            out[f"{name}_version"] = "not installed"
    out["python_version"] = platform.python_version()
    out["host"] = socket.gethostname()
    return out


@dataclass
class ResultRow:
    """One job's row. `config` is the job's full resolved Config; `metrics` uses the metric column names."""

    sweep: str
    stage: str
    trial_id: str
    config: Config
    status: str = "ok"
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    n_train_classes: int | None = None
    n_train_images: int | None = None
    steps: int | None = None
    final_loss: float | None = None
    loss_terms: dict[str, float] = field(default_factory=dict)
    ray_startup_s: float | None = None
    backbone_load_s: float | None = None
    feature_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    wall_s: float | None = None
    trial_wall_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    device: str | None = None
    world_size: int | None = None
    restarts: int = 0
    finished_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict with exactly the schema's columns (provenance of this process included)."""
        flat = self.config.to_flat()
        unknown = set(self.metrics) - set(SEARCH_METRICS + FINAL_METRICS)
        if unknown:
            raise ResultsError(f"Metric {sorted(unknown)[0]!r} is not a result column; "
                               f"use one of {', '.join(SEARCH_METRICS + FINAL_METRICS)}.")
        row: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "sweep": self.sweep, "stage": self.stage,
            "trial_id": self.trial_id, "status": self.status, "error": self.error, **flat,
            **{name: _finite_or_none(self.metrics.get(name)) for name in SEARCH_METRICS + FINAL_METRICS},
            "loss_terms_json": json.dumps(self.loss_terms, sort_keys=True),
            "config_json": json.dumps(flat, sort_keys=True),
            "final_loss": _finite_or_none(self.final_loss),
            **provenance(),
        }
        for f in dataclasses.fields(self):
            if f.name not in ("config", "metrics", "loss_terms", "final_loss") and f.name not in row:
                row[f.name] = getattr(self, f.name)
        return row


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def rows_to_table(rows: Iterable[ResultRow | Mapping[str, Any]]) -> pa.Table:
    """Validate rows against SCHEMA (columns, types, nulls, values) and return them as an Arrow table."""
    dicts = [row.to_dict() if isinstance(row, ResultRow) else dict(row) for row in rows]
    if not dicts:
        raise ResultsError("No result rows to write; a trial must produce at least one row (failed jobs too).")
    expected = set(SCHEMA.names)
    for row in dicts:
        missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
        if missing or extra:
            what = f"lacks column {missing[0]!r}" if missing else f"has unknown column {extra[0]!r}"
            raise ResultsError(f"A result row {what}; rows must match dualprompt.results.SCHEMA "
                               f"(version {SCHEMA_VERSION}).")
    try:
        table = pa.Table.from_pylist(dicts, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as error:
        raise ResultsError(f"Result rows do not fit the schema: {_one_line(error)}.") from None
    _check_values(table)
    return table


def _check_values(table: pa.Table) -> None:
    for f in table.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ResultsError(f"Result column {f.name!r} holds a null; it must always be set.")
    frame = table.select(["schema_version", "stage", "status", "error", *SEARCH_METRICS, *FINAL_METRICS])
    frame = frame.to_pandas()
    checks = [
        (frame["schema_version"] != SCHEMA_VERSION, f"schema_version must be {SCHEMA_VERSION}"),
        (~frame["stage"].isin(STAGES), f"stage must be one of {', '.join(STAGES)}"),
        (~frame["status"].isin(STATUSES), f"status must be one of {', '.join(STATUSES)}"),
        ((frame["status"] == "failed") & frame["error"].isna(), "a failed row must carry its error"),
    ]
    for name in SEARCH_METRICS + FINAL_METRICS:
        checks.append((frame[name].notna() & ~frame[name].between(0, 100), f"{name} must be a percentage"))
    for bad, message in checks:
        if bad.any():
            raise ResultsError(f"Result row {int(bad.values.argmax())} is invalid: {message}.")
    keys = table.select(list(KEY_COLUMNS)).to_pandas()
    if keys.duplicated().any():
        raise ResultsError(f"Result rows repeat a key {tuple(KEY_COLUMNS)}; each job must appear once.")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()).rstrip(".")


def open_storage(path_or_uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (relative allowed) or a URI such as s3://bucket/x."""
    text = os.fspath(path_or_uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise ResultsError(f"Cannot open storage {text!r}: {_one_line(error)}.") from None


def write_rows(rows: Iterable[ResultRow | Mapping[str, Any]], directory_or_uri: str | os.PathLike,
               filename: str) -> str:
    """Validate `rows` and write them as `<directory>/<filename>` atomically; return the file's path.

    The table is written under a hidden temporary name in the same folder and then renamed, so a reader
    never sees half a file and a rewrite of the same trial replaces its file whole.
    """
    if not filename.endswith(".parquet") or "/" in filename or filename.startswith((".", "_")):
        raise ResultsError(f"Result file name {filename!r} must be a plain name ending in .parquet.")
    table = rows_to_table(rows)
    fs, root = open_storage(directory_or_uri)
    fs.create_dir(root, recursive=True)
    final = f"{root.rstrip('/')}/{filename}"
    temporary = f"{root.rstrip('/')}/.{filename}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary, filesystem=fs)
        fs.move(temporary, final)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except OSError:
            pass
        raise
    return final


def check_writable(directory_or_uri: str | os.PathLike) -> None:
    """Raise ResultsError unless a file can be created (and removed) under `directory_or_uri`."""
    text = os.fspath(directory_or_uri)
    fs, root = open_storage(text)
    probe = f"{root.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ok")
        fs.delete_file(probe)
    except Exception as error:  # noqa: BLE001 - any storage failure means the same thing to the user
        raise ResultsError(f"Cannot write results to {text!r} ({_one_line(error)}); "
                           "pass a writable --storage-path.") from None


def list_result_files(path_or_uri: str | os.PathLike) -> list[str]:
    """The Parquet result files directly in a folder (hidden and temporary files skipped), sorted."""
    fs, root = open_storage(path_or_uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [root]
    if info.type != pafs.FileType.Directory:
        return []
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")
                  and not e.base_name.startswith((".", "_")))


def _read_table(path_or_uri: str | os.PathLike, strict: bool) -> pa.Table:
    text = os.fspath(path_or_uri)
    files = list_result_files(text)
    if not files:
        raise ResultsError(f"No Parquet result files in {text!r}; point at a sweep's results folder, "
                           "e.g. results/base2new/<name>.")
    fs, _ = open_storage(text)
    tables = []
    for path in files:
        table = pq.read_table(path, filesystem=fs)
        version = table.schema.metadata and table.schema.metadata.get(b"dualprompt_schema_version")
        found = int(version) if version else None
        if found != SCHEMA_VERSION:
            said = f"schema version {found}" if found is not None else "no dualprompt schema"
            raise ResultsError(f"{path} has {said} but this dualprompt reads version {SCHEMA_VERSION}; "
                               "read it with the dualprompt version that wrote it, or rerun the sweep.")
        missing = [n for n in SCHEMA.names if n not in table.schema.names]
        extra = [n for n in table.schema.names if n not in SCHEMA.names]
        if strict and (missing or extra or not table.schema.equals(SCHEMA, check_metadata=False)):
            drift = f"missing {', '.join(missing)}" if missing else f"extra {', '.join(extra)}" if extra else "types"
            raise ResultsError(f"{path} has columns that differ from this dualprompt's ({drift}): the Config "
                               "changed without a SCHEMA_VERSION bump; pass strict=False to read it anyway.")
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def read_results(path_or_uri: str | os.PathLike, strict: bool = True) -> pd.DataFrame:
    """All result rows of a Parquet file or of every Parquet file in a folder, schema-checked, as pandas.

    Every file must carry this package's SCHEMA_VERSION. With `strict`, its columns must also be exactly
    SCHEMA's; without, files whose columns drifted within the version (a Config field added or removed
    by a code update during a sweep) are read with the missing columns as nulls.
    """
    return _read_table(path_or_uri, strict).to_pandas()


# Nullable pandas dtypes, so an integer column with a null (a failed job's steps) stays an integer column.
_PANDAS_OF = {pa.int16(): pd.Int16Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(),
              pa.string(): pd.StringDtype()}


def load_results(paths: str | os.PathLike | list, strict: bool = False) -> pd.DataFrame:
    """The rows of one or many sweeps (folders, files or URIs such as s3://bucket/sweeps/x) as typed pandas.

    Integers, booleans and strings get pandas' nullable dtypes, floats stay float64 (NaN = not measured),
    `finished_at` is a UTC timestamp. Sweeps may differ in Config columns (filled with nulls) unless `strict`.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ResultsError("No results paths given; pass one or more sweep folders such as results/base2new/x.")
    table = pa.concat_tables([_read_table(p, strict) for p in items], promote_options="default")
    return table.to_pandas(types_mapper=_PANDAS_OF.get)


def check_comparable(rows: pd.DataFrame) -> None:
    """Raise ResultsError when rows come from more than one (backbone, pretrained) pair."""
    pairs = sorted({f"{b}/{p}" for b, p in zip(rows["backbone"], rows["pretrained"])})
    if len(pairs) > 1:
        raise ResultsError(f"These results mix backbones ({', '.join(pairs)}), and accuracies of different "
                           "backbones are not comparable, so they are not averaged; report each backbone's "
                           "sweeps separately.")


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2AB / (A + B) of two accuracies; 0 when both are 0."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


AVERAGE = "average"  # the dataset name of the benchmark's average row
METHOD_ORDER = ("zeroshot", "coop", "kgcoop", "dualprompt")
SUMMARY_COLUMNS = ["method", "dataset", "base", "base_std", "new", "new_std", "hm", "hm_std", "n_seeds",
                   "n_failed"]


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Final-stage accuracy per (method, dataset) over seeds, plus each method's benchmark average row.

    Columns: base, new, hm (percent) with their std over seeds (ddof=1, so NaN with one seed: a single seed
    has no spread, which is not the same as zero spread), n_seeds (ok seeds) and n_failed (failed jobs,
    left out of every mean). Per dataset, hm is the HM of the mean base and mean new and hm_std the std of
    the per-seed hm_test (the papers' convention). The `average` row of a method averages base and new
    over datasets and takes the HM of those two averages, not the mean of per-dataset HMs; its stds are
    NaN. Refuses (ResultsError) rows that mix backbones.
    """
    final = rows[rows["stage"] == "final"]
    if final.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    check_comparable(final)
    ok = final[final["status"] == "ok"].astype({m: "float64" for m in FINAL_METRICS})
    failed = final[final["status"] != "ok"].groupby(["method", "dataset"]).size()
    per = ok.groupby(["method", "dataset"]).agg(
        base=("acc_test_base", "mean"), base_std=("acc_test_base", "std"), new=("acc_test_new", "mean"),
        new_std=("acc_test_new", "std"), hm_std=("hm_test", "std"), n_seeds=("seed", "nunique"))
    keys = failed.index.union(per.index)  # a (method, dataset) whose every seed failed still gets a row
    per = per.reindex(keys).reset_index()
    per["n_seeds"] = per["n_seeds"].fillna(0).astype(int)
    per["hm"] = [harmonic_mean(b, n) if b == b and n == n else math.nan for b, n in zip(per["base"], per["new"])]
    per["n_failed"] = [int(failed.get((m, d), 0)) for m, d in zip(per["method"], per["dataset"])]
    average = per.groupby("method").agg(base=("base", "mean"), new=("new", "mean"), n_seeds=("n_seeds", "min"),
                                        n_failed=("n_failed", "sum")).reset_index()
    average["hm"] = [harmonic_mean(b, n) if b == b and n == n else math.nan
                     for b, n in zip(average["base"], average["new"])]
    average["dataset"] = AVERAGE
    table = pd.concat([per, average], ignore_index=True).reindex(columns=SUMMARY_COLUMNS)
    table["_d"] = table["dataset"].eq(AVERAGE)
    table["_m"] = table["method"].map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    table = table.sort_values(["_d", "dataset", "_m", "method"]).drop(columns=["_d", "_m"])
    return table.reset_index(drop=True)


def side_by_side(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with rows = datasets (average last) and columns = (method, metric): the papers' layout."""
    wide = summary.pivot(index="dataset", columns="method",
                         values=["base", "base_std", "new", "new_std", "hm", "hm_std", "n_failed"])
    wide = wide.swaplevel(0, 1, axis=1)
    methods = list(dict.fromkeys(summary["method"]))
    metrics = ["base", "base_std", "new", "new_std", "hm", "hm_std", "n_failed"]
    datasets = [d for d in dict.fromkeys(summary["dataset"]) if d != AVERAGE] + [AVERAGE]
    return wide.reindex(index=[d for d in datasets if d in wide.index],
                        columns=pd.MultiIndex.from_product([methods, metrics]))


def final_table(rows: pd.DataFrame) -> pd.DataFrame:
    """`summarise` in the sweep's short form: dataset, method, base, new, hm, seeds, failed."""
    table = summarise(rows).rename(columns={"n_seeds": "seeds", "n_failed": "failed"})
    return table[["dataset", "method", "base", "new", "hm", "seeds", "failed"]]


def searched_params(rows: pd.DataFrame) -> list[str]:
    """The Config fields that vary between search trials (what the search tuned)."""
    search = rows[rows["stage"] == "search"]
    fixed = {"method", "dataset", "seed", "data_root", "cache_dir"}
    return [n for n in FIELD_TYPE if n in search and n not in fixed and search[n].nunique(dropna=True) > 1]


def search_trials(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per search trial in finishing order: objective (mean hm_val over its jobs), its parts, jobs,
    failed jobs, `complete` (all jobs ok) and the searched parameters."""
    search = rows[rows["stage"] == "search"]
    params = searched_params(rows)
    if search.empty:
        return pd.DataFrame(columns=["trial_id", "hm_val", "acc_val_pseudobase", "acc_val_pseudonew", "jobs",
                                     "failed", "complete", "finished_at", *params])
    search = search.astype({m: "float64" for m in SEARCH_METRICS})
    ok = search["status"] == "ok"
    trials = search.assign(_ok=ok, _failed=~ok).groupby("trial_id").agg(
        hm_val=("hm_val", "mean"), acc_val_pseudobase=("acc_val_pseudobase", "mean"),
        acc_val_pseudonew=("acc_val_pseudonew", "mean"), jobs=("_ok", "size"), failed=("_failed", "sum"),
        finished_at=("finished_at", "max"), **{p: (p, "first") for p in params})
    trials["complete"] = trials["failed"] == 0
    trials = trials.sort_values("finished_at").reset_index()
    return trials[["trial_id", "hm_val", "acc_val_pseudobase", "acc_val_pseudonew", "jobs", "failed", "complete",
                   "finished_at", *params]]


def best_search_trials(rows: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The k complete search trials with the highest objective (mean hm_val), with their configurations."""
    trials = search_trials(rows)
    trials = trials[trials["complete"].astype(bool)]
    return trials.sort_values(["hm_val", "finished_at"], ascending=[False, True]).head(k).reset_index(drop=True)


def format_final_table(table: pd.DataFrame) -> str:
    """The final table as fixed-width text (accuracies in percent, one decimal)."""
    if table.empty:
        return "(no final rows)"
    width = max(12, *(len(d) for d in table["dataset"]))
    lines = [f"{'dataset':<{width}}  {'method':<10} {'base':>6} {'new':>6} {'HM':>6}  seeds"]
    previous = None
    for row in table.itertuples():
        if previous is not None and row.dataset != previous:
            lines.append("")
        previous = row.dataset
        note = f"  ({row.failed} failed)" if row.failed else ""
        lines.append(f"{row.dataset:<{width}}  {row.method:<10} {row.base:6.1f} {row.new:6.1f} {row.hm:6.1f}"
                     f"  {row.seeds}{note}")
    return "\n".join(lines)
