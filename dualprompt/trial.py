"""What one trial does, without Ray: its jobs' configurations, rows, prompts and objective.

`dualprompt.sweep` (the only Ray module) calls these from a trial's process or from each Ray Train worker;
a trial is one configuration (the search's draw or a final variant), its jobs are the protocol's
(`Protocol.jobs`), and every job ends as rows: measured, or failed with its error, never a gap.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from .config import Config
from .protocols import Job, get_protocol
from .results import ResultRow
from .storage import join

FAULT_ENV = "DUALPROMPT_FAULT_ONCE"  # path of a marker file: the first trial process to create it crashes once
PROMPTS_DIR = "_prompts"

_BACKBONES: dict[tuple[Any, str], Any] = {}  # loaded once per process: a reused trial process keeps it


def cached_backbone(cfg: Config, device: Any) -> tuple[Any, float]:
    """The (cached) backbone of `cfg` on `device`, and the seconds it took to load here (0 when cached)."""
    key = (cfg.backbone, str(device))
    if key in _BACKBONES:
        return _BACKBONES[key], 0.0
    from .backbone import load_backbone  # torch and open_clip: only in processes that run jobs

    start = time.perf_counter()
    _BACKBONES.clear()  # one backbone at a time: a sweep uses one
    _BACKBONES[key] = load_backbone(cfg.backbone, device)
    return _BACKBONES[key], time.perf_counter() - start


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc); covers Ray's worker start and the imports."""
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def row_job_key(row: dict) -> tuple:
    return row["source_dataset"], row["seed"], row["shots"], row["fold"]


def job_config(loop: dict[str, Any], job: Job) -> Config:
    """The job's Config: the trial's overrides, the job's dataset, seed and shots, the protocol's epochs."""
    cfg = Config.from_flat({**loop["overrides"], "dataset": job.dataset, "seed": job.seed, "shots": job.shots})
    epochs = get_protocol(loop["protocol"]).epochs_for(cfg.optim.epochs, job.shots)
    return cfg if epochs == cfg.optim.epochs else cfg.replace(epochs=epochs,
                                                               warmup_epochs=min(cfg.optim.warmup_epochs, epochs - 1))


def prompt_file(loop: dict[str, Any], job: Job) -> str:
    """Where a final job's prompt goes, relative to the sweep folder."""
    return (f"{PROMPTS_DIR}/{loop['stage']}-{loop['trial_id']}/"
            f"{job.dataset.replace('/', '_').replace(':', '_')}-seed{job.seed}-shots{job.shots}.safetensors")


def job_groups(jobs: tuple[Job, ...] | list[Job], world: int) -> list[list[Job]]:
    """The trial's jobs in the groups that run together and report once: in one process, the jobs of one
    seed and shot count (a final trial's datasets; a search trial's datasets and folds), so a crash loses
    at most one group and a resumed trial forms the same groups; data-parallel ranks, one job each."""
    if world > 1:
        return [[job] for job in jobs]
    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.seed, job.shots), []).append(job)
    return list(groups.values())


def run_jobs_together(experiment: Any, load_error: str | None, loop: dict, jobs: list[Job], restarts: int,
                      rank: int, world: int, device: Any, timing: dict) -> list[dict]:
    """Each job's own row and one per target: measured, or failed with the error (never a gap).

    In one process the jobs train together (`Experiment.run_jointly`: one text pass per step for all of
    them); each job's `wall_s` and `train_s` are then its equal share of the group's. Data-parallel ranks
    run the jobs one at a time.
    """
    import torch

    from .experiment import JobRequest  # torch: only in processes that run jobs

    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stage = get_protocol(loop["protocol"]).stage(loop["stage"])
    configs, errors, requests = [], [], []
    for job in jobs:
        try:
            cfg, error = job_config(loop, job), load_error
        except Exception as exc:  # noqa: BLE001
            cfg = Config().replace(dataset=job.dataset, seed=job.seed, shots=job.shots)
            error = load_error or f"{type(exc).__name__}: {first_line(exc)}"
        relative = prompt_file(loop, job) if stage.saves_prompt and cfg.method.method != "zeroshot" else None
        destination = join(loop["rows_dir"], relative) if relative and rank == 0 else None
        configs.append((cfg, relative))
        errors.append(error)
        requests.append(JobRequest(cfg, loop["stage"], loop["protocol"], job.fold, job.targets, destination))
    runnable = [i for i, error in enumerate(errors) if error is None]
    results: dict[int, Any] = {}
    if world > 1:
        # The other ranks may be inside a job's collectives; going on after a failure would pair them with
        # the next job's. Let Train restart the group (finished rows are checkpointed); if the job keeps
        # failing, the trial driver writes its rows as failed.
        results = {i: experiment.run(**vars(requests[i])) for i in runnable}
    elif runnable:
        results = dict(zip(runnable, experiment.run_jointly([requests[i] for i in runnable]), strict=True))
    rows: list[dict] = []
    share_s = (time.perf_counter() - start) / max(1, len(jobs))
    for i, job in enumerate(jobs):
        result = results.get(i)
        error = errors[i] or (f"{type(result).__name__}: {first_line(result)}" if isinstance(result, Exception)
                              else None)
        job_rows = _result_rows(loop, job, *configs[i], result, error, restarts, world, device)
        job_rows[0].wall_s = share_s
        job_rows[0].peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        job_rows[0].peak_cuda_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        if job_rows[0].status == "ok":  # the process's fixed costs, on the first job it ran
            job_rows[0].ray_startup_s = timing.get("ray_startup_s", 0.0) if i == 0 else 0.0
            job_rows[0].backbone_load_s = timing.get("backbone_load_s", 0.0) if i == 0 else 0.0
        rows.extend(row.to_dict() for row in job_rows)
    return rows


def _result_rows(loop: dict, job: Job, cfg: Config, relative: str | None, result: Any, error: str | None,
                 restarts: int, world: int, device: Any) -> list[ResultRow]:
    """A job's own row and one per target from its `JobResult`, or failed rows with `error`."""
    import torch

    common = dict(sweep=loop["sweep"], protocol=loop["protocol"], stage=loop["stage"], trial_id=loop["trial_id"],
                  variant=loop["variant"], search_trial_id=loop["search_trial_id"], fold=job.fold,
                  restarts=restarts, world_size=world,
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if error is not None:
        return [ResultRow(config=cfg.replace(dataset=name), source_dataset=job.dataset, status="failed",
                          error=error, **common) for name in (job.dataset, *job.targets)]
    terms = result.loss_terms_by_epoch or [{}]
    rows = [ResultRow(config=cfg, metrics=result.metrics, counts=result.counts,
                      standard_errors=result.standard_errors, n_train_classes=result.n_train_classes,
                      n_train_images=result.n_train_images, steps=result.steps, final_loss=result.final_loss,
                      loss_terms=terms[-1], feature_s=result.feature_s, train_s=result.train_s,
                      eval_s=result.eval_s, prompt_file=relative, **common)]
    for target, evaluated in result.targets.items():
        rows.append(ResultRow(config=cfg.replace(dataset=target), source_dataset=job.dataset,
                              metrics=evaluated.metrics, counts=evaluated.counts,
                              standard_errors=evaluated.standard_errors, steps=0, eval_s=evaluated.eval_s,
                              prompt_file=relative, **common))
    return rows


def complete_rows(rows: list[dict], loop: dict, error: str) -> list[dict]:
    """`rows` plus failed rows for every job of the trial that has none, in job order."""
    by_job: dict[tuple, list[dict]] = {}
    for row in rows:
        by_job.setdefault(row_job_key(row), []).append(row)
    out = []
    for job in loop["jobs"]:
        if job.key not in by_job:
            cfg = job_config(loop, job)
            by_job[job.key] = [ResultRow(loop["sweep"], loop["stage"], loop["trial_id"], cfg.replace(dataset=name),
                                         protocol=loop["protocol"], variant=loop["variant"], fold=job.fold,
                                         search_trial_id=loop["search_trial_id"], source_dataset=job.dataset,
                                         status="failed", error=error).to_dict()
                               for name in (job.dataset, *job.targets)]
        out.extend(by_job[job.key])
    return out


def progress(rows: list[dict], loop: dict) -> dict[str, Any]:
    """The trial's objective so far: the mean over its jobs of the stage objective, a failed job counting 0
    (a configuration that crashes is worse than one that works)."""
    objective = get_protocol(loop["protocol"]).stage(loop["stage"]).objective
    own = [r for r in rows if r["dataset"] == r["source_dataset"]]
    ok = [r for r in own if r["status"] == "ok"]
    return {"objective": sum(r[objective] or 0.0 for r in ok) / max(1, len(own)), "jobs": len(own),
            "jobs_ok": len(ok)}


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else repr(exc))[:300]


def maybe_inject_fault(rank: int, group_index: int, n_groups: int) -> None:
    """Test hook: with $DUALPROMPT_FAULT_ONCE=<marker path>, the first rank-0 process of a trial of several job
    groups to create the marker after its first report dies (once: the marker exists from then on)."""
    marker = os.environ.get(FAULT_ENV)
    if not marker or rank != 0 or group_index != 0 or n_groups < 2:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    time.sleep(3.0)  # let Train's controller register the checkpoint first (it polls every 2 s)
    os._exit(1)
