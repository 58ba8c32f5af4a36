"""The sweep runner, and the only module that imports Ray and Optuna.

Three layers, as Ray's Train-in-Tune guide lays them out (Train V2, Ray 2.60):

1. `run_sweep` (the script's process) starts or joins Ray and runs one Tune experiment per stage:
   "search" (OptunaSearch, TPE) and "final" (a grid over `sweep_cli.final_variants`); a later run that asks
   the final stage for more variants adds an experiment ("final-2", ...) that trains only those.
2. `train_driver` (one Tune trial = one configuration) runs the trial's jobs and writes its rows as one
   Parquet file, then reports the trial's objective to Tune. A single-worker CPU trial runs the jobs in its
   own process ("local mode": no Train controller or worker process to start, the backbone loaded once per
   reused trial process); multi-worker or GPU trials build a Ray Train `TorchTrainer` worker group.
3. `run_jobs` (the trial process, or each Train worker) runs the trial's jobs group by group (in one
   process a seed's jobs train together), reporting after each group with a checkpoint that holds the
   finished rows, so a restarted trial (Tune's retry) or worker group (Train's) skips them; with N Train
   workers every job runs data-parallel (`dualprompt.parallel`).

Storage under `<storage>/<name>/`: the Parquet rows (`search-<trial>.parquet`, `final-<trial>.parquet`), the
sweep's settings (`_sweep.json`), the trained prompts (`_prompts/`), and in `_ray/` Tune's experiment state and
Train's checkpoints (pandas and pyarrow skip names starting with `_`). Ray touch points are marked "# Ray:".
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .cluster import MARKER_PREFIX, SHARED_ENV, node_label, probe_storage, storage_verdict
from .protocols import Scope, get_protocol
from .results import list_result_files, load_results, read_results, rows_to_table, write_rows
from .storage import StorageError, join, one_line, open_storage
from .trial import (
    cached_backbone,
    complete_rows,
    first_line,
    job_config,
    job_groups,
    maybe_inject_fault,
    process_age_s,
    progress,
    row_job_key,
    run_jobs_together,
)

CHECKPOINT_STATE = "state.json"
CHECKPOINT_ROWS = "rows.parquet"


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs, already validated by `dualprompt.sweep_cli`."""

    name: str
    storage: str  # local folder or URI; rows go to <storage>/<name>/
    protocol: str
    stages: tuple[str, ...]  # ("search",), ("final",) or ("search", "final")
    base_config: dict[str, Any]  # flat Config overrides shared by every job
    scope: Scope
    num_samples: int
    space: Callable[[optuna.Trial], None]  # define-by-run; only trial.suggest_* calls
    defaults: dict[str, Any]  # evaluated first; its keys are the searched parameters
    baselines: tuple[str, ...] = ("zeroshot", "coop", "kgcoop")
    validate_top: int = 0
    validate_spread: int = 0
    ablations: bool = False
    one_se: bool = False
    sampler_seed: int = 0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    max_concurrent: int = 1
    address: str = "local"  # "local" starts a private Ray; anything else is passed to ray.init
    max_failures: int = 2  # restarts of a trial's job loop from its checkpoint
    verbose: int = 1

    @property
    def rows_dir(self) -> str:
        return join(self.storage, self.name)

    @property
    def ray_dir(self) -> str:
        return join(self.rows_dir, "_ray")

    @property
    def local_mode(self) -> bool:
        """Jobs run in the trial's own process: a private local Ray, one worker, no GPU. A joined cluster keeps
        Train's worker groups: trial drivers stay on the head (which trains nothing), workers on the workers."""
        return self.address == "local" and self.workers_per_trial == 1 and self.gpus_per_trial == 0


def run_sweep(spec: SweepSpec) -> int:
    """Run (or resume) the stages of `spec`, print the final table; return a process exit code."""
    init_ray(spec)
    for stage in spec.stages:
        code = _run_stage(spec, stage)
        if code:
            return code
    rows = read_results(spec.rows_dir)
    if "final" in spec.stages:
        from .report import console_table

        print(f"\n{console_table(rows)}")
    from .report import time_split_line

    print(f"\n{time_split_line(rows)}")
    print(f"Rows: {len(rows)} in {spec.rows_dir} (pandas.read_parquet or dualprompt.results.load_results); "
          f"report: python -m dualprompt.report {spec.rows_dir}")
    return 0


class QuietRayStream:
    """A terminal stream that drops Ray-internal lines a user cannot act on and passes everything else.

    Ray prints its processes' log lines on the driver with `print(line, file=sys.stderr)`; Train's controller
    logs, at error level, that its preemption watcher "has constructor arguments in the object store" for
    every trial (ray-project/ray#53727). Real errors, tracebacks and progress still reach the terminal.
    """

    NOISE = ("has constructor arguments in the object store",)

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._dropped_line = False

    def write(self, text: str) -> int:
        if any(noise in text for noise in self.NOISE):
            self._dropped_line = True  # print() writes the line, then its newline separately
            return len(text)
        if self._dropped_line and text == "\n":
            self._dropped_line = False
            return len(text)
        self._dropped_line = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def init_ray(spec: SweepSpec) -> None:
    """Join the cluster at `spec.address`, or start a private local Ray sized for `spec`."""
    if ray.is_initialized():
        return
    sys.stdout, sys.stderr = QuietRayStream(sys.stdout), QuietRayStream(sys.stderr)
    if spec.address != "local":
        ray.init(address=spec.address)  # Ray: join a running cluster (token picked up if it has one)
        return
    # Ray: a private local instance. Token auth is Ray's default here (2.59+); the dashboard stays on,
    # bound to localhost, because Train's placement-group cleaner needs it when trials are stopped.
    ray.init(address="local", num_cpus=os.cpu_count(), resources={"TRAIN_DRIVER": spec.max_concurrent},
             object_store_memory=512 * 1024**2, include_dashboard=True, dashboard_host="127.0.0.1")


def _run_stage(spec: SweepSpec, stage: str) -> int:
    """Run a stage's missing trials: resume its latest Tune experiment, then (final stage only) start one more
    for variants no earlier run asked for (a later `--validate-top`, `--validate-spread`, `--ablations` or
    `--one-se`)."""
    variants = _final_variants(spec) if stage == "final" else None
    missing = _missing(spec, stage, variants)
    if not missing:
        print(f"[{stage}] already complete: {_expected(spec, variants)} trials in {spec.rows_dir}")
        return 0
    trainable = _trainable(spec, stage)
    experiments = _experiments(spec, stage)
    errors: list = []
    added = missing
    if experiments:
        print(f"[{stage}] resuming {experiments[-1]}")
        grid = ray.tune.Tuner.restore(experiments[-1], trainable=trainable, resume_unfinished=True,
                                      resume_errored=True).fit()
        errors, missing = grid.errors, _missing(spec, stage, variants)
        # The search only resumes; the final stage adds the variants the resumed experiment never held (its
        # own were retried there, so a variant that keeps failing does not start an experiment per rerun).
        held = {_held((r.config or {}).get("variant", {})) for r in grid}
        added = [v for v in missing if _held(v) not in held] if variants else []
    if added:
        name = stage if not experiments else f"{stage}-{len(experiments) + 1}"
        if stage == "final":
            _say_what_is_added(added, variants, missing)
        errors = _new_tuner(spec, stage, name, trainable, added).fit().errors
        missing = _missing(spec, stage, variants)
    if missing:
        shown = "; ".join(str(e).splitlines()[0] for e in errors)[:500]
        print(f"[{stage}] stopped with {_expected(spec, variants) - len(missing)}/{_expected(spec, variants)} trials "
              f"written{': ' + shown if shown else ''}. Rerun the same command to resume.")
        return 130 if not errors else 1
    return 0


def _say_what_is_added(added: list[dict[str, Any]], variants: list[dict[str, Any]], missing: list) -> None:
    """A final stage that adds to a trained one: how many new variants, and which seeds the others gain."""
    new, untrained = [v for v in added if "seeds" not in v], sum("seeds" not in v for v in missing)
    if new and untrained < len(variants):
        print(f"[final] adding {len(new)} variant(s) to the {len(variants) - untrained} already trained")
    grown = sorted({seed for v in added for seed in v.get("seeds", ())})
    if grown:
        print(f"[final] adding seed(s) {','.join(map(str, grown))} to {len(added) - len(new)} variant(s) "
              "trained on fewer")


def _expected(spec: SweepSpec, variants: list[dict[str, Any]] | None) -> int:
    return spec.num_samples if variants is None else len(variants)


def _missing(spec: SweepSpec, stage: str, variants: list[dict[str, Any]] | None) -> list:
    """The search: one entry per trial still to write. The final stage: the variants that lack some of the
    scope's seeds (a trial's file is written when all its jobs are done, so a seed of a variant is either
    complete or missing); one trained on fewer seeds than asked for comes back with "seeds": those it lacks."""
    files = _stage_files(spec, stage)
    if variants is None:
        return [None] * max(0, spec.num_samples - len(files))
    rows = load_results(files)[["variant", "seed"]] if files else None  # the final stage's own files only
    missing = []
    for v in variants:
        trained = set(rows.loc[rows["variant"] == v["variant"], "seed"]) if rows is not None else set()
        lacking = [seed for seed in spec.scope.seeds if seed not in trained]
        if lacking:
            missing.append(v if not trained else {**v, "seeds": lacking})
    return missing


def _held(variant: dict[str, Any]) -> tuple:
    """What a final trial trains: its variant and, for one that adds seeds to a trained variant, those seeds."""
    return variant.get("variant"), tuple(variant.get("seeds", ()))


def _experiments(spec: SweepSpec, stage: str) -> list[str]:
    """The stage's restorable Tune experiments, oldest first: `<stage>`, then `<stage>-2`, `<stage>-3`, ..."""
    found: list[str] = []
    while ray.tune.Tuner.can_restore(path := join(spec.ray_dir, stage if not found else f"{stage}-{len(found) + 1}")):
        found.append(path)
    return found


def _trainable(spec: SweepSpec, stage: str) -> Any:
    protocol = get_protocol(spec.protocol)
    run = {"stage": stage, "sweep": spec.name, "protocol": spec.protocol, "jobs": protocol.jobs(stage, spec.scope),
           "base_config": spec.base_config, "rows_dir": spec.rows_dir, "ray_dir": spec.ray_dir,
           "gpus": spec.gpus_per_trial, "workers": spec.workers_per_trial, "cpus": spec.cpus_per_worker,
           "max_failures": spec.max_failures, "local": spec.local_mode}
    if spec.local_mode:  # Ray: the trial process itself trains, so it holds the CPUs
        driver_resources = {"CPU": spec.cpus_per_worker}
    else:
        driver_resources = {"TRAIN_DRIVER": 1} if ray.cluster_resources().get("TRAIN_DRIVER") else {"CPU": 0.25}
    # Ray: the trainable is a function; the run description rides along by reference.
    return ray.tune.with_resources(ray.tune.with_parameters(train_driver, run=run), driver_resources)


def _final_variants(spec: SweepSpec) -> list[dict[str, Any]]:
    from .sweep_cli import final_variants

    rows = read_results(spec.rows_dir)
    return final_variants(rows, list(spec.defaults), spec.defaults, spec.baselines, spec.validate_top,
                          spec.ablations, spec.validate_spread, spec.one_se)


def _new_tuner(spec: SweepSpec, stage: str, name: str, trainable: Any, variants: list) -> ray.tune.Tuner:
    if stage == "search":
        sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True,
                                             n_startup_trials=max(2, min(10, spec.num_samples // 4)))
        # Ray: OptunaSearch owns the space (define-by-run), so metric and mode go on it.
        searcher = OptunaSearch(spec.space, metric="objective", mode="max",
                                points_to_evaluate=[dict(spec.defaults)], sampler=sampler)
        param_space, num_samples = {}, spec.num_samples
    else:
        best = [{k: v for k, v in x["overrides"].items() if k != "method"} for x in variants if x["variant"] == "best"]
        print(f"[final] variants: {', '.join(v['variant'] for v in variants)}"
              f"{f'; best searched configuration: {best[0]}' if best else ''}")
        searcher, param_space, num_samples = None, {"variant": ray.tune.grid_search(variants)}, 1
    return ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, metric="objective", mode="max",
                                        num_samples=num_samples, max_concurrent_trials=spec.max_concurrent,
                                        reuse_actors=spec.local_mode),  # Ray: one process, many trials
        run_config=ray.tune.RunConfig(name=name, storage_path=spec.ray_dir, verbose=spec.verbose,
                                      failure_config=ray.tune.FailureConfig(
                                          max_failures=spec.max_failures if spec.local_mode else 1),
                                      callbacks=[TrialLine(stage)]),
    )


def _stage_files(spec: SweepSpec, stage: str) -> list[str]:
    return [p for p in list_result_files(spec.rows_dir) if os.path.basename(p).startswith(f"{stage}-")]


class TrialLine(ray.tune.Callback):
    """One line per finished trial with its objective (Tune's own status table shows the rest)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        params = trial.config.get("variant", trial.config)
        if "overrides" in params:
            params = {"variant": params["variant"], **params["overrides"],
                      **({"seeds": ",".join(map(str, params["seeds"]))} if "seeds" in params else {})}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        print(f"[{self.stage}] trial {trial.trial_id} finished: objective {result.get('objective', float('nan')):.2f}"
              f" ({result.get('jobs_ok', '?')}/{result.get('jobs', '?')} jobs ok) {shown}", flush=True)


def train_driver(params: dict[str, Any], run: dict[str, Any]) -> None:
    """One Tune trial: run the trial's jobs (in this process, or on a Train worker group), write its rows,
    report its objective."""
    global _TRIALS_IN_PROCESS
    started = time.time()
    if _TRIALS_IN_PROCESS == 0:  # a fresh trial process: its start and imports are this trial's Ray start-up
        started -= process_age_s()
    _TRIALS_IN_PROCESS += 1
    trial_id = ray.tune.get_context().get_trial_id()  # Ray: stable across restores and retries
    variant = params.get("variant", {"variant": "search", "search_trial_id": None, "overrides": params})
    loop = {**run, "overrides": {**run["base_config"], **variant["overrides"]}, "variant": variant["variant"],
            "search_trial_id": variant["search_trial_id"], "trial_id": trial_id, "started_at": started}
    if "seeds" in variant:  # seeds added to a variant trained on fewer: only those
        loop["jobs"] = tuple(job for job in run["jobs"] if job.seed in variant["seeds"])
    if run["local"]:
        rows, error = run_jobs(loop, TuneSession()), "the trial process ended without a row for this job"
    else:
        rows, error = _fit_train_workers(loop)
    rows = complete_rows(rows, loop, error)
    trial_wall_s = time.time() - started
    for row in rows:
        row["trial_wall_s"] = trial_wall_s
    write_rows(rows, run["rows_dir"], f"{run['stage']}-{trial_id}.parquet")
    ray.tune.report(progress(rows, loop))  # Ray: the trial's objective, to the searcher


def _fit_train_workers(loop: dict[str, Any]) -> tuple[list[dict], str]:
    """Run the jobs on a Ray Train worker group; (rows of the latest checkpoint, error if fit failed)."""
    use_gpu = loop["gpus"] > 0
    per_worker = {"CPU": loop["cpus"], **({"GPU": loop["gpus"] / loop["workers"]} if use_gpu else {})}
    run_name = f"{loop['stage']}/train/{loop['trial_id']}"  # stable name: a rerun resumes the Train run
    trainer = ray.train.torch.TorchTrainer(  # Ray: Train V2 inside a Tune function trainable
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=loop["workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=loop["ray_dir"],
            failure_config=ray.train.FailureConfig(max_failures=loop["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],  # Ray: worker reports become Tune progress
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        checkpoint = trainer.fit().checkpoint  # Ray: the latest checkpoint holds every finished row
        error = "the worker group ended without a row for this job"
    except Exception as exc:  # noqa: BLE001 - the trial still ends with a row per job
        error = f"{type(exc).__name__}: {first_line(exc)}"
        try:
            checkpoint = ray.train.Result.from_path(join(loop["ray_dir"], run_name)).checkpoint
        except Exception:  # noqa: BLE001 - no run folder or no snapshot: nothing was checkpointed
            checkpoint = None
    return _load_checkpoint(checkpoint)[0], error


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """A Ray Train worker: the job loop, with Train's context, checkpoints and reports."""
    run_jobs(loop, TrainSession())


class TrainSession:
    """The job loop's view of Ray Train (a worker of a TorchTrainer group)."""

    def __init__(self) -> None:
        context = ray.train.get_context()  # Ray: rank and world size
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def checkpoint(self) -> Any:
        return ray.train.get_checkpoint()  # Ray: resume state

    def device(self) -> Any:
        return ray.train.torch.get_device()

    def report(self, metrics: dict, directory: str | None, name: str) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if directory else None)


class TuneSession:
    """The job loop's view of a Tune function trial running jobs in its own process (local mode)."""

    rank, world = 0, 1

    def checkpoint(self) -> Any:
        return ray.tune.get_checkpoint()  # Ray: the last checkpoint of this trial, after a retry

    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def report(self, metrics: dict, directory: str | None, name: str) -> None:
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(directory) if directory else None)


_TRIALS_IN_PROCESS = 0  # trials this process has run (a reused Tune process runs many)


def run_jobs(loop: dict[str, Any], session: TrainSession | TuneSession) -> list[dict]:
    """Run the trial's unfinished jobs group after group (`job_groups`: one process trains a seed's jobs
    together), reporting (with the finished rows) after each group.

    With N Train workers every job runs data-parallel on all of them (`dualprompt.parallel`: each worker
    encodes a block of the classes over the process group Train set up, and the context gradient is summed),
    so every worker computes the same rows; rank 0 keeps them.
    """
    entered = time.time()
    import torch

    for name in ("", "ray.train"):  # open_clip's INFO lines and Train's per-report line
        logging.getLogger(name).setLevel(logging.WARNING)
    rows, starts, elapsed = _load_checkpoint(session.checkpoint())
    restarts, starts = starts, starts + 1  # restarts = earlier starts that reached a checkpoint
    loop["started_at"] -= elapsed  # a resumed trial's wall time includes its earlier attempts
    torch.set_num_threads(max(1, int(loop["cpus"])))
    device = session.device()
    # Ray start-up: from the trial's start (its process's, if fresh) to this line: process start, imports,
    # and on the Train path the controller and worker group.
    timing = {"ray_startup_s": max(0.0, entered - loop["started_at"])}
    experiment, load_error = None, None
    try:
        from .experiment import Experiment

        backbone, timing["backbone_load_s"] = cached_backbone(job_config(loop, loop["jobs"][0]), device)
        experiment = Experiment(backbone)
    except Exception as exc:  # noqa: BLE001 - every job of this trial becomes a failed row
        load_error, timing["backbone_load_s"] = f"{type(exc).__name__}: {first_line(exc)}", 0.0
    finished = {row_job_key(r) for r in rows if r["dataset"] == r["source_dataset"]}
    groups = job_groups(loop["jobs"], session.world)
    for index, group in enumerate([j for j in g if j.key not in finished] for g in groups):
        if group:
            rows.extend(run_jobs_together(experiment, load_error, loop, group, restarts, session.rank,
                                          session.world, device, timing))
            timing = {}
            _report(rows, starts, loop, session)
            maybe_inject_fault(session.rank, index, len(groups))
    return rows


def _load_checkpoint(checkpoint: Any) -> tuple[list[dict], int, float]:
    """(finished rows, job-loop starts so far, trial seconds so far) from a checkpoint; ([], 0, 0) for None."""
    if checkpoint is None:
        return [], 0, 0.0
    with checkpoint.as_directory() as directory:
        rows = pq.read_table(os.path.join(directory, CHECKPOINT_ROWS)).to_pylist()
        with open(os.path.join(directory, CHECKPOINT_STATE)) as handle:
            state = json.load(handle)
    return rows, state["starts"], state.get("elapsed_s", 0.0)


def _report(rows: list[dict], starts: int, loop: dict, session: Any) -> None:
    metrics = progress(rows, loop)
    if session.rank != 0:  # Ray: every worker reports (a barrier); rank 0's checkpoint holds the rows
        session.report(metrics, None, "")
        return
    with tempfile.TemporaryDirectory() as directory:
        pq.write_table(rows_to_table(rows), os.path.join(directory, CHECKPOINT_ROWS))
        with open(os.path.join(directory, CHECKPOINT_STATE), "w") as handle:
            json.dump({"starts": starts, "elapsed_s": time.time() - loop["started_at"]}, handle)
        session.report(metrics, directory, f"jobs-{len(rows):04d}-start-{starts}")


def check_storage_reachable(storage: str, address: str, timeout_s: float = 120.0) -> int:
    """Raise StorageError unless every alive node of the connected Ray cluster can read what the driver writes
    under `storage` and write there itself; return the number of nodes checked.

    Call after `ray.init` and before any trial; the pure parts (the probe, the verdict) are in
    `dualprompt.cluster`. With address "local" (a private single-node Ray) nothing needs checking.
    """
    if address == "local":
        return 0
    fs, root = open_storage(storage)
    marker, expected = f"{MARKER_PREFIX}{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root.rstrip('/')}/{marker}") as stream:
            stream.write(expected.encode())
    except Exception as error:  # noqa: BLE001
        raise StorageError(f"Storage {storage} is not writable from the driver ({one_line(error)}); "
                           "pass a writable --storage-path.") from None
    try:
        driver_node = ray.get_runtime_context().get_node_id()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0, max_retries=0)(probe_storage)
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(storage, marker, expected): node_label(n, driver_node) for n in nodes}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        answers: dict[str, str | None] = {}
        for ref, label in refs.items():
            if ref not in ready:
                answers[label] = f"did not answer a storage probe within {timeout_s:g} s"
                continue
            try:
                answers[label] = ray.get(ref)
            except Exception as error:  # noqa: BLE001 - e.g. the package is not installed on that node
                answers[label] = f"could not run the storage probe ({one_line(error)})"
        for ref in set(refs) - set(ready):
            ray.cancel(ref, force=True)  # a probe stuck on an unhealthy node must not linger
    finally:
        try:
            fs.delete_file(f"{root.rstrip('/')}/{marker}")
        except Exception:  # noqa: BLE001 - the marker is hidden; a leftover is harmless
            pass
    reason = storage_verdict(storage, address, answers, len(nodes), shared=os.environ.get(SHARED_ENV) == "1")
    if reason:
        raise StorageError(reason)
    return len(nodes)
