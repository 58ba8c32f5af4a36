"""The sweep runner, and the only module that imports Ray and Optuna.

Three layers, as Ray's Train-in-Tune guide lays them out (Train V2, Ray 2.60):

1. `run_sweep` (the script's process) starts or joins Ray and runs one Tune experiment per stage:
   "search" (OptunaSearch, TPE) and "final" (a grid over the best configuration and the baselines).
2. `train_driver` (one Tune trial = one configuration) builds and fits a `TorchTrainer`, writes the
   trial's rows as one Parquet file and reports the trial's objective to Tune.
3. `train_loop_per_worker` (each Ray Train worker) loads the backbone once and runs the trial's
   (dataset, seed) jobs in turn, all workers together on each job (data-parallel, `dualprompt.parallel`),
   reporting after each job with a checkpoint that holds the finished rows, so a restarted worker
   group skips them.

Storage under `<storage>/<name>/`: the Parquet rows (`search-<trial>.parquet`, `final-<trial>.parquet`)
and, in `_ray/`, Tune's experiment state and Train's checkpoints (pandas and pyarrow skip `_` folders).
Ray touch points are marked "# Ray:".
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .cluster import (MARKER_PREFIX, SHARED_ENV, StorageError, node_label, one_line, probe_storage,
                      storage_verdict)
from .config import Config
from .results import (ResultRow, ResultsError, best_search_trials, final_table, format_final_table,
                      list_result_files, open_storage, read_results, rows_to_table, write_rows)

FAULT_ENV = "DUALPROMPT_FAULT_ONCE"  # path of a marker file: the first worker to create it crashes once
OBJECTIVE = {"search": "hm_val", "final": "hm_test"}
CHECKPOINT_STATE = "state.json"
CHECKPOINT_ROWS = "rows.parquet"


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs, already validated by the caller (`sweeps/base2new.py`)."""

    name: str
    storage: str  # local folder or URI; rows go to <storage>/<name>/
    stages: tuple[str, ...]  # ("search",), ("final",) or ("search", "final")
    base_config: dict[str, Any]  # flat Config overrides shared by every job
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]  # final stage
    search_seeds: tuple[int, ...]
    num_samples: int
    space: Callable[[optuna.Trial], None]  # define-by-run; only trial.suggest_* calls
    defaults: dict[str, Any]  # evaluated first; its keys are the searched parameters
    baselines: tuple[str, ...] = ("zeroshot", "coop", "kgcoop")
    sampler_seed: int = 0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    max_concurrent: int = 1
    address: str = "local"  # "local" starts a private Ray; anything else is passed to ray.init
    max_failures: int = 2  # Train worker-group restarts per trial
    verbose: int = 1

    @property
    def rows_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def ray_dir(self) -> str:
        return f"{self.rows_dir}/_ray"


def run_sweep(spec: SweepSpec) -> int:
    """Run (or resume) the stages of `spec`, print the final table; return a process exit code."""
    init_ray(spec)
    for stage in spec.stages:
        code = _run_stage(spec, stage)
        if code:
            return code
    rows = read_results(spec.rows_dir, strict=False)  # tolerate a Config change during the sweep
    if "final" in spec.stages:
        print("\nFinal base-to-new table (test accuracy %, seeds averaged; average = HM of mean base and new):")
        print(format_final_table(final_table(rows)))
    print(f"\n{_startup_share(rows)}")
    print(f"Rows: {len(rows)} in {spec.rows_dir} (pandas.read_parquet or dualprompt.results.read_results).")
    return 0


def init_ray(spec: SweepSpec) -> None:
    """Join the cluster at `spec.address`, or start a private local Ray sized for `spec`."""
    if ray.is_initialized():
        return
    if spec.address != "local":
        ray.init(address=spec.address)  # Ray: join a running cluster (token picked up if it has one)
        return
    # Ray: a private local instance. Token auth is Ray's default here (2.59+); the dashboard stays on,
    # bound to localhost, because Train's placement-group cleaner needs it when trials are stopped.
    ray.init(address="local", num_cpus=os.cpu_count(), resources={"TRAIN_DRIVER": spec.max_concurrent},
             object_store_memory=512 * 1024**2, include_dashboard=True, dashboard_host="127.0.0.1")


def _jobs(spec: SweepSpec, stage: str) -> list[list[Any]]:
    seeds = spec.search_seeds if stage == "search" else spec.seeds
    return [[dataset, seed] for dataset in spec.datasets for seed in seeds]


def _run_stage(spec: SweepSpec, stage: str) -> int:
    expected = spec.num_samples if stage == "search" else 1 + len(spec.baselines)
    if len(_stage_files(spec, stage)) >= expected:
        print(f"[{stage}] already complete: {expected} trials in {spec.rows_dir}")
        return 0
    run = {"stage": stage, "sweep": spec.name, "jobs": _jobs(spec, stage), "base_config": spec.base_config,
           "rows_dir": spec.rows_dir, "ray_dir": spec.ray_dir, "gpus": spec.gpus_per_trial,
           "workers": spec.workers_per_trial, "cpus": spec.cpus_per_worker, "max_failures": spec.max_failures}
    driver_resources = {"TRAIN_DRIVER": 1} if ray.cluster_resources().get("TRAIN_DRIVER") else {"CPU": 0.25}
    # Ray: the trainable is a function that drives Train; the run description rides along by reference.
    trainable = ray.tune.with_resources(ray.tune.with_parameters(train_driver, run=run), driver_resources)
    experiment = f"{spec.ray_dir}/{stage}"
    if ray.tune.Tuner.can_restore(experiment):
        print(f"[{stage}] resuming {experiment}")
        tuner = ray.tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
    else:
        tuner = _new_tuner(spec, stage, trainable)
    grid = tuner.fit()
    done = len(_stage_files(spec, stage))
    if done < expected:
        errors = "; ".join(str(e).splitlines()[0] for e in grid.errors)[:500]
        print(f"[{stage}] stopped with {done}/{expected} trials written{': ' + errors if errors else ''}. "
              "Rerun the same command to resume.")
        return 130 if not grid.errors else 1
    return 0


def _new_tuner(spec: SweepSpec, stage: str, trainable: Any) -> ray.tune.Tuner:
    if stage == "search":
        sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True,
                                             n_startup_trials=max(2, min(10, spec.num_samples // 4)))
        # Ray: OptunaSearch owns the space (define-by-run), so metric and mode go on it.
        searcher = OptunaSearch(spec.space, metric="objective", mode="max",
                                points_to_evaluate=[dict(spec.defaults)], sampler=sampler)
        param_space, num_samples = {}, spec.num_samples
    else:
        best = best_search_params(read_results(spec.rows_dir, strict=False), list(spec.defaults))
        variants = [{"method": "dualprompt", **best}] + [{"method": m} for m in spec.baselines]
        print(f"[final] best searched configuration: {best}")
        searcher, param_space, num_samples = None, {"variant": ray.tune.grid_search(variants)}, 1
    return ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, metric="objective", mode="max",
                                        num_samples=num_samples, max_concurrent_trials=spec.max_concurrent),
        run_config=ray.tune.RunConfig(name=stage, storage_path=spec.ray_dir, verbose=spec.verbose,
                                      failure_config=ray.tune.FailureConfig(max_failures=1),
                                      callbacks=[TrialLine(stage)]),
    )


def _stage_files(spec: SweepSpec, stage: str) -> list[str]:
    return [p for p in list_result_files(spec.rows_dir) if os.path.basename(p).startswith(f"{stage}-")]


def best_search_params(rows: Any, names: list[str]) -> dict[str, Any]:
    """The searched parameters of the best complete search trial (`results.best_search_trials`)."""
    best = best_search_trials(rows, k=1)
    if best.empty:
        raise ResultsError("No search trial finished all its jobs; fix the failures shown in the search rows "
                           "(column 'error') and rerun.")
    row = rows[rows["trial_id"] == best["trial_id"].iloc[0]].iloc[0]
    return {name: row[name].item() if hasattr(row[name], "item") else row[name] for name in names}


class TrialLine(ray.tune.Callback):
    """One line per finished trial with its objective (Tune's own status table shows the rest)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        params = trial.config.get("variant", trial.config)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        print(f"[{self.stage}] trial {trial.trial_id} finished: objective {result.get('objective', float('nan')):.2f}"
              f" ({result.get('jobs_ok', '?')}/{result.get('jobs', '?')} jobs ok) {shown}", flush=True)


def train_driver(params: dict[str, Any], run: dict[str, Any]) -> None:
    """One Tune trial: fit a TorchTrainer over the trial's jobs, write its rows, report its objective."""
    started = time.time()
    trial_id = ray.tune.get_context().get_trial_id()  # Ray: stable across restores
    overrides = {**run["base_config"], **params.get("variant", params)}
    run_name = f"{run['stage']}/train/{trial_id}"  # stable name: a rerun resumes the Train run
    loop_config = {"overrides": overrides, "jobs": run["jobs"], "stage": run["stage"], "sweep": run["sweep"],
                   "trial_id": trial_id, "started_at": started, "cpus": run["cpus"]}
    use_gpu = run["gpus"] > 0
    per_worker = {"CPU": run["cpus"], **({"GPU": run["gpus"] / run["workers"]} if use_gpu else {})}
    trainer = ray.train.torch.TorchTrainer(  # Ray: Train V2 inside a Tune function trainable
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=run["workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=run["ray_dir"],
            failure_config=ray.train.FailureConfig(max_failures=run["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],  # Ray: worker reports become Tune progress
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    error = "the worker group ended without a row for this job"
    try:
        checkpoint = trainer.fit().checkpoint  # Ray: the latest checkpoint holds every finished row
    except Exception as exc:  # noqa: BLE001 - the trial still ends with a row per job
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        checkpoint = _last_checkpoint(f"{run['ray_dir']}/{run_name}")
    rows = _complete_rows(_load_checkpoint(checkpoint)[0], run, trial_id, overrides, error)
    trial_wall_s = time.time() - started
    for row in rows:
        row["trial_wall_s"] = trial_wall_s
    write_rows(rows, run["rows_dir"], f"{run['stage']}-{trial_id}.parquet")
    ok = [r for r in rows if r["status"] == "ok"]
    # A failed job counts as 0: a configuration that crashes is worse than one that works.
    objective = sum(r[OBJECTIVE[run["stage"]]] or 0.0 for r in ok) / len(rows)
    ray.tune.report({"objective": objective, "jobs": len(rows), "jobs_ok": len(ok)})  # Ray: to the searcher


def _last_checkpoint(run_path: str) -> Any:
    """The latest checkpoint a Train run registered, or None (used when `fit` itself failed)."""
    try:
        return ray.train.Result.from_path(run_path).checkpoint
    except Exception:  # noqa: BLE001 - no run folder or no snapshot: nothing was checkpointed
        return None


def _complete_rows(rows: list[dict], run: dict, trial_id: str, overrides: dict, error: str) -> list[dict]:
    """`rows` plus a failed row for every job of the trial that has none, in job order."""
    by_key = {(r["dataset"], r["seed"]): r for r in rows}
    out = []
    for dataset, seed in run["jobs"]:
        if (dataset, seed) not in by_key:
            cfg = _job_config(overrides, dataset, seed)
            by_key[(dataset, seed)] = ResultRow(run["sweep"], run["stage"], trial_id, cfg, status="failed",
                                                error=error).to_dict()
        out.append(by_key[(dataset, seed)])
    return out


def _job_config(overrides: dict, dataset: str, seed: int) -> Config:
    return Config.from_flat({**overrides, "dataset": dataset, "seed": seed})


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else repr(exc))[:300]


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """A Train worker: load the backbone once, run the trial's remaining jobs one after another, report after each.

    With N workers every job runs data-parallel on all of them (`dualprompt.parallel`: each worker encodes
    a block of the classes over the process group Train set up, and the context gradient is summed), so
    every worker computes the same row; rank 0 keeps it. Each report carries a checkpoint with rank 0's
    finished rows, so a restarted worker group skips them.
    """
    entered = time.time()
    import torch

    for name in ("", "ray.train"):  # open_clip's INFO lines and Train's per-report line, in every worker
        logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.train.get_context()  # Ray: rank and world size
    rank, world = context.get_world_rank(), context.get_world_size()
    rows, starts = _load_checkpoint(ray.train.get_checkpoint())  # Ray: resume state
    restarts, starts = starts, starts + 1  # restarts = earlier starts that reached a checkpoint
    torch.set_num_threads(max(1, int(loop["cpus"])))
    device = ray.train.torch.get_device()
    timing = {"ray_startup_s": entered - loop["started_at"]}
    experiment, load_error = None, None
    load_start = time.perf_counter()
    try:
        from .backbone import load_backbone
        from .experiment import Experiment

        experiment = Experiment(load_backbone(_job_config(loop["overrides"], *loop["jobs"][0]).backbone, device))
    except Exception as exc:  # noqa: BLE001 - every job of this trial becomes a failed row
        load_error = f"{type(exc).__name__}: {_first_line(exc)}"
    timing["backbone_load_s"] = time.perf_counter() - load_start

    finished = {(r["dataset"], r["seed"]) for r in rows}
    for index, job in enumerate(j for j in loop["jobs"] if tuple(j) not in finished):
        rows.append(_run_job(experiment, load_error, loop, *job, restarts, world, device, timing))
        timing = {}
        _report(rows, starts, rank, loop["stage"])
        _maybe_inject_fault(rank, index, len(loop["jobs"]))


def _run_job(experiment: Any, load_error: str | None, loop: dict, dataset: str, seed: int, restarts: int,
             world: int, device: Any, timing: dict) -> dict:
    import torch

    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    common = dict(sweep=loop["sweep"], stage=loop["stage"], trial_id=loop["trial_id"], restarts=restarts,
                  world_size=world, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  ray_startup_s=timing.get("ray_startup_s", 0.0), backbone_load_s=timing.get("backbone_load_s", 0.0))
    try:
        cfg = _job_config(loop["overrides"], dataset, seed)
    except Exception as exc:  # noqa: BLE001
        cfg, load_error = Config().replace(dataset=dataset, seed=seed), f"{type(exc).__name__}: {_first_line(exc)}"
    if load_error:
        row = ResultRow(config=cfg, status="failed", error=load_error, **common)
    else:
        try:
            result = experiment.run(cfg, loop["stage"])
            terms = getattr(result, "loss_terms_by_epoch", None) or [{}]
            row = ResultRow(config=cfg, metrics=result.metrics, n_train_classes=result.n_train_classes,
                            n_train_images=result.n_train_images, steps=result.steps, final_loss=result.final_loss,
                            loss_terms=terms[-1], feature_s=result.feature_s, train_s=result.train_s,
                            eval_s=result.eval_s, **common)
        except Exception as exc:  # noqa: BLE001 - a failed job is a row, never a gap
            traceback.print_exc()
            if world > 1:
                # The other ranks may be inside this job's collectives; going on would pair them with the
                # next job's. Let Train restart the group (finished rows are checkpointed); if the job keeps
                # failing, the trial driver writes its row as failed.
                raise
            row = ResultRow(config=cfg, status="failed", error=f"{type(exc).__name__}: {_first_line(exc)}", **common)
    row.wall_s = time.perf_counter() - start
    row.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row.peak_cuda_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return row.to_dict()


def _load_checkpoint(checkpoint: Any) -> tuple[list[dict], int]:
    """(finished rows, worker-loop starts so far) from a checkpoint; ([], 0) for None."""
    if checkpoint is None:
        return [], 0
    with checkpoint.as_directory() as directory:
        rows = pq.read_table(os.path.join(directory, CHECKPOINT_ROWS)).to_pylist()
        with open(os.path.join(directory, CHECKPOINT_STATE)) as handle:
            starts = json.load(handle)["starts"]
    return rows, starts


def _report(rows: list[dict], starts: int, rank: int, stage: str) -> None:
    ok = [r[OBJECTIVE[stage]] for r in rows if r["status"] == "ok"]
    metrics = {"jobs_done": len(rows), "objective": sum(ok) / len(rows)}
    if rank != 0:  # Ray: every worker reports (a barrier); rank 0's checkpoint holds the rows
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        pq.write_table(rows_to_table(rows), os.path.join(directory, CHECKPOINT_ROWS))
        with open(os.path.join(directory, CHECKPOINT_STATE), "w") as handle:
            json.dump({"starts": starts}, handle)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"jobs-{len(rows):04d}-start-{starts}")


def _maybe_inject_fault(rank: int, job_index: int, n_jobs: int) -> None:
    """Test hook: with $DUALPROMPT_FAULT_ONCE=<marker path>, the first rank-0 worker of a multi-job trial to
    create the marker after its first report dies (once: the marker exists from then on)."""
    marker = os.environ.get(FAULT_ENV)
    if not marker or rank != 0 or job_index != 0 or n_jobs < 2:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    time.sleep(3.0)  # let the controller register the checkpoint first (it polls every 2 s)
    os._exit(1)


def _startup_share(rows: Any) -> str:
    """Ray's share of trial time: trial start -> first worker loop line, first start only (ranks start together)."""
    first = rows[(rows["restarts"] == 0) & (rows["ray_startup_s"] > 0)].groupby(["stage", "trial_id"])["ray_startup_s"]
    startup = first.min().sum()
    wall = rows.groupby(["stage", "trial_id"])["trial_wall_s"].first().sum()
    share = 100 * startup / wall if wall else 0.0
    return (f"Ray start-up (trial start -> worker loop) took {startup:.0f} s of {wall:.0f} s of trial time "
            f"({share:.0f}%) over {rows.groupby(['stage', 'trial_id']).ngroups} trials.")


def check_storage_reachable(storage: str, address: str, timeout_s: float = 120.0) -> int:
    """Raise StorageError unless every alive node of the connected Ray cluster can read what the driver writes
    under `storage` and write there itself; return the number of nodes checked.

    Call after `ray.init` and before any trial; the pure parts (the probe, the verdict) are in
    `dualprompt.cluster`. With address "local" (a private single-node Ray) nothing
    needs checking and nothing is probed.
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
