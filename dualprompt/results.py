"""Result rows: one Parquet schema, typed rows with provenance, atomic writes, reading back (old files too).

One row = one trained prompt evaluated on one dataset: a job's own dataset (its training statistics, its
evaluations) and, for protocols with targets, one row per target dataset it was evaluated on untouched
(`steps` 0, `source_dataset` the job's dataset). Rows are written as one Parquet file per trial through
`dualprompt.storage` (atomic; local folders and s3:// alike), so `pandas.read_parquet(folder)` reads a sweep.

The schema evolves without orphaning files: its configuration columns are the fields of `Config` (adding a
field needs no version bump), and reading a file written by an older dualprompt fills the columns it lacks
(configuration fields with their defaults or what their absence meant, measurements with nulls, and what a
migration can derive, e.g. version 1 rows are all base-to-new). Only files from a newer dualprompt are refused.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ABSENT_MEANS, FIELD_TYPE, Config
from .errors import DualpromptError
from .protocols import STAGES, all_protocols
from .storage import list_files, one_line, open_storage, write_atomically

# Bump when a non-configuration column is added, removed, renamed or changes type, and add the migration
# from the previous version to MIGRATIONS (configuration columns follow Config without a bump).
SCHEMA_VERSION = 3
STATUSES = ("ok", "failed")
KEY_COLUMNS = ("stage", "trial_id", "source_dataset", "dataset", "seed", "shots", "fold")
PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "ray": "ray", "optuna": "optuna",
            "dualprompt": "dualprompt"}


class ResultsError(DualpromptError):
    """Result rows or files are unusable; the message is one sentence saying what and how to fix it."""


def _metric_columns() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(accuracy and HM columns, image-count columns, standard-error columns) of every protocol's stages."""
    metrics, counts, errors = {}, {}, {}
    for protocol in all_protocols():
        for stage in (protocol.search, protocol.final):
            metrics.update(dict.fromkeys(stage.metric_columns))
            counts.update(dict.fromkeys(e.count_column for e in stage.evaluations))
            errors[f"{stage.objective}_se"] = None
    return tuple(metrics), tuple(counts), tuple(errors)


METRICS, COUNTS, STANDARD_ERRORS = _metric_columns()
_ARROW_OF = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}

_IDENTITY = [
    pa.field("schema_version", pa.int16(), nullable=False),
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),  # "search", or the final variant: best, defaults, coop, ...
]
_JOB = [
    pa.field("source_dataset", pa.string(), nullable=False),  # the dataset the prompt was trained on
    pa.field("fold", pa.int64(), nullable=False),  # pseudo-split fold of a search job; 0 otherwise
    pa.field("search_trial_id", pa.string()),  # final variants taken from the search: the trial they came from
]
_STATUS = [pa.field("status", pa.string(), nullable=False), pa.field("error", pa.string())]
_MEASURED = [
    *(pa.field(name, pa.float64()) for name in METRICS),  # percent; null where the stage has no such metric
    *(pa.field(name, pa.int64()) for name in COUNTS),  # images behind each accuracy
    *(pa.field(name, pa.float64()) for name in STANDARD_ERRORS),  # binomial SE of the stage objective, points
    pa.field("n_train_classes", pa.int64()),
    pa.field("n_train_images", pa.int64()),
    pa.field("steps", pa.int64()),  # 0 on a target row: the prompt was not trained there
    pa.field("final_loss", pa.float64()),
    pa.field("loss_terms_json", pa.string()),  # last epoch's mean of each named loss term
    pa.field("prompt_file", pa.string()),  # the trained prompt, relative to the sweep folder; null if none
    # Cost. ray_startup_s and backbone_load_s are charged to the first job of each worker start.
    pa.field("ray_startup_s", pa.float64()),  # trial driver start -> first line of the job loop
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
    pa.field("restarts", pa.int64()),  # job-loop restarts from a checkpoint before this job ran
    pa.field("config_json", pa.string()),  # the full resolved Config, flat (machine-local paths blanked)
]
_PROVENANCE = [
    pa.field("git_commit", pa.string(), nullable=False),
    pa.field("git_dirty", pa.bool_()),
    *(pa.field(f"{name}_version", pa.string(), nullable=False) for name in PACKAGES),
    pa.field("python_version", pa.string(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
    pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
LEADING_CONFIG = ("method", "dataset", "seed", "shots", "backbone", "pretrained")  # identity, after variant


def build_schema() -> pa.Schema:
    """The current schema: identity, job, status, every Config field, measurements, provenance."""
    config = {name: pa.field(name, _ARROW_OF[kind], nullable=False) for name, kind in FIELD_TYPE.items()}
    leading = [config.pop(name) for name in LEADING_CONFIG]
    fields = _IDENTITY + leading + _JOB + _STATUS + list(config.values()) + _MEASURED + _PROVENANCE
    return pa.schema(fields, metadata={"dualprompt_schema_version": str(SCHEMA_VERSION)})


SCHEMA = build_schema()


def git_state(checkout: Path) -> dict[str, Any]:
    """`git_commit` and `git_dirty` of a checkout (unknown / None outside git). Result folders are data, not
    code: rows a sweep writes under `results/` do not make the code that wrote them dirty."""
    out: dict[str, Any] = {"git_commit": "unknown", "git_dirty": None}
    try:
        run = functools.partial(subprocess.run, cwd=checkout, capture_output=True, text=True, timeout=10,
                                check=True)
        out["git_commit"] = run(["git", "rev-parse", "HEAD"]).stdout.strip() or "unknown"
        # --no-optional-locks: never rewrite the index of the checkout we only inspect.
        status = run(["git", "--no-optional-locks", "status", "--porcelain", "--", ".", ":(exclude)results"])
        out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


@functools.lru_cache(maxsize=1)  # once per process: the code a process runs is the code it imported
def provenance() -> dict[str, Any]:
    """Where and with what a row was made: git commit of the package checkout, package versions, host."""
    out = git_state(Path(__file__).resolve().parent.parent)
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
    """One row. `config` is the job's full resolved Config (its dataset is the row's dataset); `metrics` and
    `counts` use the metric and count column names."""

    sweep: str
    stage: str
    trial_id: str
    config: Config
    protocol: str = "base2new"
    variant: str = "search"
    source_dataset: str | None = None  # None: the row's own dataset (the prompt was trained on it)
    fold: int = 0
    search_trial_id: str | None = None
    status: str = "ok"
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    standard_errors: dict[str, float] = field(default_factory=dict)
    n_train_classes: int | None = None
    n_train_images: int | None = None
    steps: int | None = None
    final_loss: float | None = None
    loss_terms: dict[str, float] = field(default_factory=dict)
    prompt_file: str | None = None
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
        flat = self.config.portable_flat()
        for given, known, kind in ((self.metrics, METRICS, "Metric"), (self.counts, COUNTS, "Count"),
                                   (self.standard_errors, STANDARD_ERRORS, "Standard error")):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ResultsError(f"{kind} {unknown[0]!r} is not a result column; use one of {', '.join(known)}.")
        row: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "sweep": self.sweep, "protocol": self.protocol, "stage": self.stage,
            "trial_id": self.trial_id, "variant": self.variant,
            "source_dataset": self.source_dataset or flat["dataset"], "fold": self.fold,
            "status": self.status, "error": self.error, **flat,
            **{name: _finite_or_none(self.metrics.get(name)) for name in METRICS},
            **{name: self.counts.get(name) for name in COUNTS},
            **{name: _finite_or_none(self.standard_errors.get(name)) for name in STANDARD_ERRORS},
            "loss_terms_json": json.dumps(self.loss_terms, sort_keys=True),
            "config_json": json.dumps(flat, sort_keys=True),
            "final_loss": _finite_or_none(self.final_loss),
            **provenance(),
        }
        skip = {"config", "metrics", "counts", "standard_errors", "loss_terms", "final_loss"}
        for f in dataclasses.fields(self):
            if f.name not in skip and f.name not in row:
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
        raise ResultsError(f"Result rows do not fit the schema: {one_line(error)}.") from None
    _check_values(table)
    return table


def _check_values(table: pa.Table) -> None:
    for f in table.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ResultsError(f"Result column {f.name!r} holds a null; it must always be set.")
    frame = table.select(["schema_version", "stage", "status", "error", *METRICS]).to_pandas()
    checks = [
        (frame["schema_version"] != SCHEMA_VERSION, f"schema_version must be {SCHEMA_VERSION}"),
        (~frame["stage"].isin(STAGES), f"stage must be one of {', '.join(STAGES)}"),
        (~frame["status"].isin(STATUSES), f"status must be one of {', '.join(STATUSES)}"),
        ((frame["status"] == "failed") & frame["error"].isna(), "a failed row must carry its error"),
    ]
    for name in METRICS:
        checks.append((frame[name].notna() & ~frame[name].between(0, 100), f"{name} must be a percentage"))
    for bad, message in checks:
        if bad.any():
            raise ResultsError(f"Result row {int(bad.values.argmax())} is invalid: {message}.")
    if table.select(list(KEY_COLUMNS)).to_pandas().duplicated().any():
        raise ResultsError(f"Result rows repeat a key {tuple(KEY_COLUMNS)}; each evaluation must appear once.")


def write_rows(rows: Iterable[ResultRow | Mapping[str, Any]], directory_or_uri: str | os.PathLike,
               filename: str) -> str:
    """Validate `rows` and write them as `<directory>/<filename>` atomically; return the file's path."""
    if not filename.endswith(".parquet") or "/" in filename or filename.startswith((".", "_")):
        raise ResultsError(f"Result file name {filename!r} must be a plain name ending in .parquet.")
    table = rows_to_table(rows)
    destination = f"{os.fspath(directory_or_uri).rstrip('/')}/{filename}"
    write_atomically(lambda fs, temporary: pq.write_table(table, temporary, filesystem=fs), destination)
    return destination


def list_result_files(path_or_uri: str | os.PathLike) -> list[str]:
    """The Parquet result files directly in a folder (hidden, `_` and temporary files skipped), sorted."""
    return list_files(path_or_uri, ".parquet")


# ---- reading, with schema evolution ----------------------------------------------------------------


def _from_version_1(table: pa.Table) -> pa.Table:
    """Version 1 ran base-to-new only, with one dual-view variant (the best searched) in the final stage."""
    methods = table.column("method").to_pylist()
    stages = table.column("stage").to_pylist()
    variants = ["search" if s == "search" else ("best" if m == "dualprompt" else m)
                for s, m in zip(stages, methods, strict=True)]
    n = table.num_rows
    return (table.append_column("protocol", pa.array(["base2new"] * n))
            .append_column("variant", pa.array(variants))
            .append_column("source_dataset", table.column("dataset"))
            .append_column("fold", pa.array([0] * n, pa.int64())))


def _from_version_2(table: pa.Table) -> pa.Table:
    """Version 3 added base-to-new's new-class halves (acc_test_new_first_half, ..._second_half and their
    counts); older rows did not measure them, so `upgrade` fills them with nulls."""
    return table


MIGRATIONS = {1: _from_version_1, 2: _from_version_2}  # version -> the step to version + 1


def upgrade(table: pa.Table, version: int, path: str) -> pa.Table:
    """A table of `version` in the current schema: migrations, then missing columns filled, columns ordered.

    Missing Config fields get their default (or what their absence meant, `ABSENT_MEANS`); other missing
    columns get nulls. Columns this version does not know (a Config field that was removed) are kept at the
    end, so no data is dropped.
    """
    if version > SCHEMA_VERSION:
        raise ResultsError(f"{path} was written with result schema version {version}, newer than this dualprompt "
                           f"reads ({SCHEMA_VERSION}); upgrade dualprompt to read it.")
    for step in range(version, SCHEMA_VERSION):
        table = MIGRATIONS[step](table)
    defaults = {**Config().to_flat(), **ABSENT_MEANS}
    columns, names = [], []
    for f in SCHEMA:
        if f.name in table.schema.names:
            column = table.column(f.name)
            columns.append(column.cast(f.type) if column.type != f.type else column)
        elif f.name in defaults:
            columns.append(pa.array([defaults[f.name]] * table.num_rows, f.type))
        elif f.name == "schema_version":
            columns.append(pa.array([SCHEMA_VERSION] * table.num_rows, f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
        names.append(f.name)
    for name in table.schema.names:
        if name not in SCHEMA.names:
            columns.append(table.column(name))
            names.append(name)
    return pa.table(columns, names=names)


def _read_table(path_or_uri: str | os.PathLike) -> pa.Table:
    text = os.fspath(path_or_uri)
    files = list_result_files(text)
    if not files:
        raise ResultsError(f"No Parquet result files in {text!r}; point at a sweep's results folder, "
                           "e.g. results/base2new/<name>.")
    fs, _ = open_storage(text)
    tables = []
    for path in files:
        table = pq.read_table(path, filesystem=fs)
        version = (table.schema.metadata or {}).get(b"dualprompt_schema_version")
        if not version or not version.isdigit() or int(version) < 1:
            raise ResultsError(f"{path} has no dualprompt schema (version {version!r}); it was not written by "
                               "dualprompt: move it out of the results folder.")
        tables.append(upgrade(table, int(version), path))
    return pa.concat_tables(tables, promote_options="default")


def read_results(path_or_uri: str | os.PathLike) -> pd.DataFrame:
    """All result rows of a Parquet file or of every Parquet file in a folder, in the current schema."""
    return _read_table(path_or_uri).to_pandas()


# Nullable pandas dtypes, so an integer column with a null (a failed job's steps) stays an integer column.
_PANDAS_OF = {pa.int16(): pd.Int16Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(),
              pa.string(): pd.StringDtype()}


def load_results(paths: str | os.PathLike | list) -> pd.DataFrame:
    """The rows of one or many sweeps (folders, files or URIs such as s3://bucket/sweeps/x) as typed pandas.

    Integers, booleans and strings get pandas' nullable dtypes, floats stay float64 (NaN = not measured),
    `finished_at` is a UTC timestamp. Older files are upgraded to the current schema.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ResultsError("No results paths given; pass one or more sweep folders such as results/base2new/x.")
    table = pa.concat_tables([_read_table(p) for p in items], promote_options="default")
    return table.to_pandas(types_mapper=_PANDAS_OF.get)
