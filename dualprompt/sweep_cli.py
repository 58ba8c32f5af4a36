"""The sweep command-line engine shared by every `sweeps/*.py`: parse, validate, plan, then run on Ray.

A sweep script only declares its experiment (`SweepDeclaration`: the protocol, the search space, the
baselines) and calls `main(declaration)`. Everything else is here, and none of it imports Ray: bad input
(an unknown dataset, an unready data root, a bad --set value, a search bound out of range, storage that
cannot be written, GPUs this machine does not have) is one sentence and exit code 2 before Ray starts.

Stages: "search" (leak-free: the protocol's search stage, one trial per configuration drawn by
multivariate TPE, the defaults first) and "final" (`final_variants`: the best searched configuration, the
dual-view defaults, the next `--validate-top` searched configurations, `--validate-spread` more at evenly
spaced ranks down to the worst, the baselines, with `--ablations` the best configuration without its
augmentation or without its MI term, and with `--one-se` the one-standard-error rule's pick).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .config import ABSENT_MEANS, MACHINE_LOCAL_FIELDS, Config, parse_assignment, parse_value
from .data.catalogue import default_data_root, get_spec
from .data.check import check_dataset
from .errors import DualpromptError, UsageError
from .protocols import Protocol, Scope, get_protocol
from .search_space import DUAL_VIEW, SearchSpace
from .storage import SETTINGS_FILE, check_writable, join, list_files, open_storage, saved_settings

REPO = Path(__file__).resolve().parent.parent
OFFLINE_BACKBONE = "tiny-synthetic"
# Few-shot seeds of a search trial (the final stage uses --seeds). Offline, a seed's objective rests on 9
# pseudo-base classes x 4 val images per job: SE 1.17 HM points with one seed, 0.83 with two (docs/offline-world.md).
SEARCH_SEEDS_OFFLINE = (1, 2)
SEARCH_SEEDS_REAL = (1,)
FINAL_SEEDS = (1, 2, 3)
SWEEP_KEYS = ("dataset", "seed", "method")  # set by the sweep itself, never by --set
LOCAL_KEYS = (*SWEEP_KEYS, *MACHINE_LOCAL_FIELDS)  # may differ between machines resuming one sweep
SMOKE_CONFIG = {"epochs": 2, "warmup_epochs": 0, "shots": 4, "n_views": 2}
SMOKE_SAMPLES = 2


@dataclass(frozen=True)
class SweepDeclaration:
    """What a `sweeps/*.py` script declares: its protocol, search space and baselines."""

    protocol: str
    description: str
    space: SearchSpace = DUAL_VIEW
    baselines: tuple[str, ...] = ("zeroshot", "coop", "kgcoop")
    validate_top_offline: int = 4  # next-best searched configurations the final stage re-trains
    validate_top_real: int = 1


def define_space(trial: Any, bounds: dict[str, tuple[float, float, str]], choices: dict[str, tuple]) -> None:
    """Optuna define-by-run space: only suggest_* calls (Ray's OptunaSearch calls it on the driver)."""
    for name, (low, high, scale) in bounds.items():
        if scale == "int":
            trial.suggest_int(name, int(low), int(high))
        else:
            trial.suggest_float(name, low, high, log=scale == "log")
    for name, options in choices.items():
        trial.suggest_categorical(name, list(options))


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(f"{message[0].upper()}{message[1:]} (see --help).")


def build_parser(declaration: SweepDeclaration, prog: str) -> argparse.ArgumentParser:
    protocol = get_protocol(declaration.protocol)
    p = Parser(prog=prog, description=declaration.description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--num-samples", type=int, help="number of search trials (configurations); default 64")
    add("--datasets", help="comma-separated training datasets (catalogue names or folder:PATH); default: "
        f"{', '.join(protocol.default_real_datasets)} when ready under --data-root, else the offline world's")
    if protocol.uses_targets:
        add("--targets", help="comma-separated datasets the trained prompt is evaluated on untouched; default: "
            f"{', '.join(protocol.default_real_targets)} (those ready), else the offline world's")
    add("--shots", help="shots per class; few-shot: comma-separated curve, default 1,2,4,8,16; else one value, "
        "default the config's (16)")
    add("--search-shots", help="shots per class of a search trial; default: the largest of --shots")
    add("--seeds", help="comma-separated few-shot seeds of the final stage; default 1,2,3 (they add to those a "
        "finished sweep has: its variants train only the seeds they lack)")
    add("--search-seeds", help="comma-separated few-shot seeds of each search trial; default 1,2 offline, "
        "1 on real data and with --smoke")
    add("--folds", type=int, help="pseudo-split folds per search job (1: the rule; 2: also its swap, so every "
        "class is held out once); default 2 for split-based protocols")
    add("--validate-top", type=int, help="the final stage also re-trains the next K searched configurations, "
        f"to measure how well the objective ranked them; default {declaration.validate_top_offline} offline, "
        f"{declaration.validate_top_real} on real data (0 allowed)")
    add("--validate-spread", type=int, default=0, help="the final stage also re-trains K searched configurations "
        "at evenly spaced ranks of the objective, down to the worst, so the objective's validity is measured over "
        "its whole range, not only its top; default 0")
    add("--ablations", action="store_true", help="the final stage also trains the best configuration with only "
        "its MI term and with only its augmentation")
    add("--one-se", action="store_true", help="the final stage also trains the one-standard-error rule's pick: of "
        "the search trials within one SE of the highest objective, the one with the fewest context vectors")
    add("--data-root", help="folder holding the datasets; default $DUALPROMPT_DATA_ROOT or ~/.cache/dualprompt/data")
    add("--backbone", help=f"open_clip model name; default {OFFLINE_BACKBONE} (the offline world's tiny CLIP)")
    add("--pretrained", help="open_clip pretrained tag or checkpoint file; default: the backbone's own weights")
    add("--name", help=f"sweep name (results/{protocol.name}/<name>/); default derived from the settings; "
        "the same name resumes")
    add("--storage-path", help=f"folder or URI (s3://...) for results and Ray state; default results/{protocol.name}")
    add("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial, fractions allowed; default 0 (CPU)")
    add("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial; each job runs "
        "data-parallel on all of them (classes split, context gradient summed)")
    add("--cpus-per-worker", type=float, help="CPUs per trial worker; default: the machine's CPUs shared out")
    add("--max-concurrent", type=int, help="trials running at once; default: what the CPUs or GPUs allow")
    add("--epochs", type=int, help="training epochs per job (overrides the defaults and --set epochs)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, "
        "e.g. --set lr=0.004 (repeatable; a searched field set here is fixed, no longer searched)")
    add("--bound", action="append", default=[], metavar="KEY=LOW:HIGH", help="change a search range, "
        f"e.g. --bound n_ctx=4:8 (searched: {', '.join(declaration.space.names())})")
    add("--stage", choices=("search", "final", "all"), default="all", help="which stage(s) to run; default all")
    add("--sampler-seed", type=int, default=0, help="seed of Optuna's TPE sampler; default 0")
    add("--address", default=os.environ.get("RAY_ADDRESS") or "local",
        help="Ray cluster to join (e.g. auto on a cluster head); default: start a private local Ray")
    add("--smoke", action="store_true", help="tiny budget (2 trials, 1 dataset, 1 seed, 2 epochs) to check "
        "the pipeline in a couple of minutes")
    return p


def _int_list(text: str, flag: str, minimum: int = 0) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, e.g. 1,2,3; got {text!r}.") from None
    if not values or len(set(values)) != len(values) or min(values) < minimum:
        raise UsageError(f"{flag} needs at least one value, no repeats, each >= {minimum}; got {text!r}.")
    return values


def offline_training() -> dict[str, Any]:
    """The offline world's training budget (chosen by measurement, see docs/offline-world.md)."""
    from .data.synthetic import OFFLINE_TRAINING

    return dict(OFFLINE_TRAINING)


def _overrides(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    flat: dict[str, Any] = offline_training() if backbone == OFFLINE_BACKBONE else {}
    if args.smoke:
        flat.update(SMOKE_CONFIG)
    for item in args.set:
        key, value = parse_assignment(item)
        if key in SWEEP_KEYS:
            raise UsageError(f"--set {key} is not allowed: the sweep sets {key} itself (use --datasets, "
                             "--seeds; the method is dualprompt in search, plus the baselines in final).")
        flat[key] = value
    if args.epochs is not None:
        flat["epochs"] = args.epochs
    flat["backbone"] = backbone
    if args.pretrained:
        flat["pretrained"] = args.pretrained
    elif backbone != OFFLINE_BACKBONE:
        raise UsageError(f"--pretrained is needed with --backbone {backbone}, e.g. --pretrained openai.")
    return flat


def _bounds(space: SearchSpace, items: list[str], fixed: dict[str, Any]) -> dict[str, tuple[float, float, str]]:
    bounds = dict(space.ranges)
    for item in items:
        key, sep, text = item.partition("=")
        low_text, colon, high_text = text.partition(":")
        if not sep or not colon:
            raise UsageError(f"--bound takes KEY=LOW:HIGH, e.g. --bound n_ctx=4:8; got {item!r}.")
        if key not in space.ranges:
            raise UsageError(f"--bound {key}: not a searched parameter; searched: {', '.join(space.ranges)}.")
        scale = space.ranges[key][2]
        try:
            low, high = (parse_value(key, t) for t in (low_text, high_text))
            Config().replace(**{key: low}), Config().replace(**{key: high})
        except DualpromptError as error:
            raise UsageError(f"--bound {key}={text} is out of range: {error}") from None
        if not low < high or (scale == "log" and low <= 0):
            positive = " and LOW > 0 (log scale)" if scale == "log" else ""
            raise UsageError(f"--bound {key}={text} needs LOW < HIGH{positive}.")
        bounds[key] = (low, high, scale)
    return {k: v for k, v in bounds.items() if k not in fixed}


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or len(set(names)) != len(names):
        raise UsageError(f"{flag} needs comma-separated names without repeats; got {text!r}.")
    return names


def _check_ready(names: tuple[str, ...], data_root: Path, flag: str, trains: bool) -> None:
    for name in names:
        spec = get_spec(name)
        if trains and spec.test_only:
            raise UsageError(f"{flag}: {name} is a test-only dataset and cannot be trained on; "
                             "use it as a target.")
        if not spec.synthetic:
            result = check_dataset(name, data_root)
            if not result.ok:
                raise UsageError(f"Dataset {name} is not usable under {data_root}: {result.status}, "
                                 f"{result.detail}; fix it or pass the right --data-root.")


def _pick(args_value: str | None, flag: str, real: tuple[str, ...], offline: tuple[str, ...], data_root: Path,
          explicit_root: bool, trains: bool, smoke: bool) -> tuple[str, ...]:
    """Named datasets (checked), else the real defaults that are ready, else the offline world's."""
    if args_value:
        names = _names(args_value, flag)
        _check_ready(names, data_root, flag, trains)
        return names
    if smoke:
        return offline[:1]
    present = [n for n in real if (data_root / get_spec(n).folder).is_dir()]
    ready = tuple(n for n in present if check_dataset(n, data_root).ok)
    if not ready and explicit_root:
        raise UsageError(f"--data-root {data_root} holds none of {', '.join(real)} ready (see python -m "
                         f"dualprompt.data check); fix it, or name datasets with {flag}.")
    return ready or offline


# Settings that only add final-stage variants: a later run may ask for more (the final stage then trains the
# variants it lacks and keeps every row already written), so they do not pin a sweep's identity.
# The final stage's seeds only grow: a later run's --seeds adds to those a sweep has (`check_storage`; every
# variant then trains the seeds it lacks, so all keep the same seeds, also variants added later).
FINAL_STAGE_SETTINGS = ("validate_top", "validate_spread", "ablations", "one_se", "seeds")


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs from the settings a sweep was started with. Config fields are compared where both have
    them, so a code update that adds a field (with a default) does not block resuming."""
    changed = [k for k, v in now.items()
               if k not in ("config", *FINAL_STAGE_SETTINGS) and k in saved and saved[k] != v]
    return changed + [f"{k} (config)" for k in _changed_config(saved, now)]


def _changed_config(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The config fields both settings have that differ, with the saved value; a field the saved sweep predates
    reads as what its absence meant (`ABSENT_MEANS`)."""
    old, new = {**ABSENT_MEANS, **saved.get("config", {})}, now["config"]
    return {k: old[k] for k in sorted(set(old) & set(new)) if old[k] != new[k]}


@dataclass(frozen=True)
class Plan:
    """A validated command line: what to run, where, and the settings a resumed sweep must keep."""

    args: argparse.Namespace
    declaration: SweepDeclaration
    protocol: Protocol
    name: str
    storage: str
    base: Config  # every job's configuration before the sweep sets method, dataset, seed and searched fields
    scope: Scope
    num_samples: int
    bounds: dict[str, tuple[float, float, str]]
    choices: dict[str, tuple[str, ...]]
    defaults: dict[str, Any]  # the first search point
    validate_top: int
    settings: dict[str, Any]

    @property
    def rows_dir(self) -> str:
        return join(self.storage, self.name)


def _scope(args: argparse.Namespace, protocol: Protocol, base: Config, data_root: Path) -> Scope:
    explicit_root = bool(args.data_root)
    datasets = _pick(args.datasets, "--datasets", protocol.default_real_datasets, protocol.default_offline_datasets,
                     data_root, explicit_root, trains=True, smoke=args.smoke)
    targets: tuple[str, ...] = ()
    if protocol.uses_targets:
        targets = _pick(args.targets, "--targets", protocol.default_real_targets,
                        protocol.default_offline_targets, data_root, explicit_root, trains=False, smoke=args.smoke)
    if protocol.sweeps_shots:
        from .protocols.few_shot import SHOTS

        default_shots = (1, 2) if args.smoke else SHOTS
        shots = _int_list(args.shots, "--shots", 1) if args.shots else default_shots
    else:
        shots = _int_list(args.shots, "--shots", 1) if args.shots else (base.data.shots,)
        if len(shots) != 1:
            raise UsageError(f"--shots takes one value for {protocol.name} (the few-shot sweep takes a list); "
                             f"got {args.shots!r}.")
    search_shots = _int_list(args.search_shots, "--search-shots", 1) if args.search_shots else (max(shots),)
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else ((1,) if args.smoke else FINAL_SEEDS)
    offline_default = base.backbone.backbone == OFFLINE_BACKBONE and not args.smoke
    search_seeds = _int_list(args.search_seeds, "--search-seeds") if args.search_seeds else (
        SEARCH_SEEDS_OFFLINE if offline_default else SEARCH_SEEDS_REAL)
    split_based = protocol.search.train_classes == "pseudobase"
    folds = args.folds if args.folds is not None else (2 if split_based and not args.smoke else 1)
    if folds not in (1, 2) or (folds == 2 and not split_based):
        raise UsageError(f"--folds must be 1 or 2 (2 only for protocols whose search holds out classes); "
                         f"got {args.folds}.")
    return Scope(datasets, seeds, search_seeds, shots, search_shots, folds, targets)


def plan(declaration: SweepDeclaration, argv: list[str], prog: str = "sweep") -> Plan:
    """Parse and validate the command line; raise a DualpromptError (one sentence) on bad input."""
    protocol = get_protocol(declaration.protocol)
    args = build_parser(declaration, prog).parse_args(argv)
    num_samples = args.num_samples if args.num_samples is not None else (SMOKE_SAMPLES if args.smoke else 64)
    minimums = (("--num-samples", num_samples, 1), ("--workers-per-trial", args.workers_per_trial, 1),
                ("--max-concurrent", args.max_concurrent, 1), ("--validate-top", args.validate_top, 0),
                ("--validate-spread", args.validate_spread, 0))
    for flag, value, minimum in minimums:
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be at least {minimum}; got {value}.")
    if args.gpus_per_trial < 0 or (args.cpus_per_worker is not None and args.cpus_per_worker <= 0):
        raise UsageError("--gpus-per-trial must be >= 0 and --cpus-per-worker > 0.")
    backbone = args.backbone or OFFLINE_BACKBONE
    offline = backbone == OFFLINE_BACKBONE
    overrides = _overrides(args, backbone)
    data_root = Path(args.data_root or overrides.get("data_root") or default_data_root()).expanduser().absolute()
    if args.data_root and not data_root.is_dir():
        raise UsageError(f"--data-root {data_root} is not a folder; create it or pass the folder holding the datasets.")
    overrides["data_root"] = str(data_root)
    if not overrides.get("cache_dir"):
        from .features import default_cache_dir

        overrides["cache_dir"] = str(default_cache_dir().expanduser().absolute())
    base = Config().replace(**overrides)  # validates every value and cross-field rule
    space = declaration.space
    fixed = {k: v for k, v in overrides.items() if k in space.ranges or k in space.choices}
    bounds = _bounds(space, args.bound, fixed)
    choices = {k: v for k, v in space.choices.items() if k not in fixed}
    flat = base.to_flat()
    defaults = {k: min(max(flat[k], low), high) for k, (low, high, _) in bounds.items()}
    defaults.update({k: flat[k] for k in choices})
    scope = _scope(args, protocol, base, data_root)
    validate_top = args.validate_top if args.validate_top is not None else (
        declaration.validate_top_offline if offline else declaration.validate_top_real)
    from .backbone import validate_backbone_name

    validate_backbone_name(base.backbone)
    settings = {"protocol": protocol.name, "datasets": list(scope.datasets), "targets": list(scope.targets),
                "seeds": list(scope.seeds), "search_seeds": list(scope.search_seeds), "shots": list(scope.shots),
                "search_shots": list(scope.search_shots), "folds": scope.folds, "num_samples": num_samples,
                "validate_top": validate_top, "ablations": args.ablations,
                "config": {k: v for k, v in flat.items() if k not in LOCAL_KEYS},
                "bounds": {k: list(v) for k, v in bounds.items()}, "choices": {k: list(v) for k, v in choices.items()},
                "sampler_seed": args.sampler_seed,
                # Only when asked for, so sweeps started before the option keep their names and settings.
                **({"validate_spread": args.validate_spread} if args.validate_spread else {}),
                **({"one_se": True} if args.one_se else {})}
    # Named from what was asked for (not from every Config default), so the same command keeps its name.
    asked = {**settings, "config": {k: v for k, v in overrides.items() if k not in LOCAL_KEYS}}
    digest = hashlib.sha1(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:8]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone)
    name = args.name or f"{'smoke-' if args.smoke else ''}{tag}-{len(scope.datasets)}ds-n{num_samples}-{digest}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--name {name!r} may hold only letters, digits, '-', '_' and '.'.")
    storage = args.storage_path or str(REPO / "results" / protocol.name)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
    return Plan(args, declaration, protocol, name, storage, base, scope, num_samples, bounds, choices, defaults,
                validate_top, settings)


def check_storage(p: Plan) -> Plan:
    """Writable storage; a resumed sweep keeps its settings; the final stage alone needs search rows. Returns
    the plan with the final stage's seeds those it asked for and those the sweep already has."""
    check_writable(p.rows_dir)
    fs, root = open_storage(p.rows_dir)
    if p.args.stage == "final" and not any(os.path.basename(f).startswith("search-")
                                          for f in list_files(p.rows_dir, ".parquet")):
        raise UsageError(f"--stage final needs the search rows of sweep {p.name!r} in {p.rows_dir}; "
                         "run --stage search (or all) first.")
    settings_path, found = join(root, SETTINGS_FILE), saved_settings(fs, root)
    if found:
        saved, found_at = found
        changed = _changed_settings(saved, p.settings)
        if changed:
            restore = " ".join(f"--set {shlex.quote(f'{k}={v}')}"
                               for k, v in _changed_config(saved, p.settings).items())
            raise UsageError(f"Sweep {p.name!r} in {p.rows_dir} was started with different {', '.join(changed)}; "
                             f"rerun it with its original settings{f' ({restore})' if restore else ''} to resume, "
                             "or pick a new --name.")
        seeds = sorted({*saved.get("seeds", ()), *p.scope.seeds})
        if seeds != list(p.scope.seeds):
            print(f"Sweep {p.name} already has final seeds {','.join(map(str, saved['seeds']))}; its final stage "
                  f"keeps them: seeds {','.join(map(str, seeds))}.")
            p = replace(p, scope=replace(p.scope, seeds=tuple(seeds)), settings={**p.settings, "seeds": seeds})
        if seeds != saved.get("seeds", seeds) or found_at != settings_path:  # the next run keeps what this one adds
            _write_settings(fs, settings_path, {**saved, "seeds": seeds})
    else:
        _write_settings(fs, settings_path, p.settings)
    return p


def _write_settings(fs: Any, path: str, settings: dict[str, Any]) -> None:
    """Write a sweep's settings whole or not at all (a temporary file, then a rename)."""
    with fs.open_output_stream(f"{path}.tmp") as stream:
        stream.write(json.dumps(settings, indent=1, sort_keys=True).encode())
    fs.move(f"{path}.tmp", path)


def resources(p: Plan) -> tuple[float, int]:
    """(CPUs per worker, concurrent trials); on a local machine also checks that asked-for GPUs exist."""
    args, cpus = p.args, os.cpu_count() or 1
    workers, gpus = args.workers_per_trial, args.gpus_per_trial
    if gpus > 0 and workers > 1 and gpus / workers < 1:
        raise UsageError(f"--gpus-per-trial {gpus:g} over {workers} workers gives each a fraction of a GPU, "
                         "which NCCL rejects; give each worker a whole GPU or use --workers-per-trial 1.")
    if args.address != "local":
        return args.cpus_per_worker or 1.0, args.max_concurrent or 4
    if gpus > 0:
        import torch

        available = torch.cuda.device_count()
        if available == 0:
            raise UsageError(f"--gpus-per-trial {gpus:g} asks for GPUs but this machine has none; "
                             "pass --gpus-per-trial 0 or --address of a cluster with GPUs.")
        if gpus > available:
            raise UsageError(f"--gpus-per-trial {gpus:g} is more than the {available} GPU(s) of this machine.")
        concurrent = args.max_concurrent or max(1, int(available // gpus))
    else:
        concurrent = args.max_concurrent or max(1, cpus // workers)
    per_worker = args.cpus_per_worker or max(1.0, float(cpus // (concurrent * workers)))
    if per_worker * workers > cpus:
        raise UsageError(f"A trial needs {per_worker * workers:g} CPUs but this machine has {cpus}; "
                         "lower --workers-per-trial or --cpus-per-worker.")
    return per_worker, concurrent


def check_cluster_gpus(address: str, gpus: float) -> None:
    """On a cluster, refuse GPU trials when it has no GPU at all (after joining it; nothing is started)."""
    import ray

    if gpus > 0 and address != "local" and not ray.cluster_resources().get("GPU"):
        from .cluster import autoscaler_can_add

        if autoscaler_can_add("GPU"):  # a `ray up` cluster whose GPU nodes scale up from zero
            print("No GPU node is up yet: the autoscaler adds GPU nodes as trials wait for them "
                  "(a few minutes).", flush=True)
            return
        raise UsageError(f"--gpus-per-trial {gpus:g} asks for GPUs but the Ray cluster at {address} has none "
                         "(GPU nodes must be up; set min_workers >= 1 for them), or pass --gpus-per-trial 0.")


def final_variants(rows: Any, searched: list[str], defaults: dict[str, Any], baselines: tuple[str, ...],
                   validate_top: int, ablations: bool, validate_spread: int = 0,
                   one_se: bool = False) -> list[dict[str, Any]]:
    """The final stage's trials, from the search rows: each {"variant", "search_trial_id", "overrides"}.

    best = the complete search trial with the highest objective (ties: the earlier); defaults = the dual-view
    defaults (the first search point); with `one_se`, one_se = the one-SE rule's pick (`validity.one_se_pick`)
    where it is neither best nor the defaults; top2.. = the next `validate_top` trials, then `validate_spread` more at
    evenly spaced ranks down to the worst (`tables.evenly_spaced_ranks`; "topR" is search rank R); then the
    baselines; with `ablations`, the best configuration with only its MI term (no augmentation: aug_strength 0)
    and with only its augmentation (mi_weight 0).
    """
    from .tables import best_search_trials, evenly_spaced_ranks
    from .validity import one_se_pick

    ranked = best_search_trials(rows, k=len(rows))
    top = range(min(1 + validate_top, len(ranked)))  # positions, the best first
    ranked = ranked.iloc[sorted({*top, *evenly_spaced_ranks(len(ranked), 1 + validate_spread)})]
    if ranked.empty:
        raise DualpromptError("No search trial finished all its jobs; fix the failures shown in the search rows "
                              "(column 'error') and rerun.")

    def params(trial_id: str) -> dict[str, Any]:
        row = rows[rows["trial_id"] == trial_id].iloc[0]
        return {n: row[n].item() if hasattr(row[n], "item") else row[n] for n in searched}

    best_id = ranked["trial_id"].iloc[0]
    best = params(best_id)
    search = rows[rows["stage"] == "search"]
    default_ids = [t for t in dict.fromkeys(search["trial_id"]) if params(t) == defaults]
    variants = [{"variant": "best", "search_trial_id": best_id, "overrides": {"method": "dualprompt", **best}},
                {"variant": "defaults", "search_trial_id": default_ids[0] if default_ids else None,
                 "overrides": {"method": "dualprompt", **defaults}}]
    pick = one_se_pick(rows).trial_id if one_se else best_id
    if pick != best_id and pick not in default_ids[:1]:
        variants.append({"variant": "one_se", "search_trial_id": pick,
                         "overrides": {"method": "dualprompt", **params(pick)}})
    trained = {v["search_trial_id"] for v in variants}
    for position, trial_id in zip(ranked.index[1:], ranked["trial_id"].iloc[1:], strict=True):
        if trial_id in trained:  # already trained as "defaults" or "one_se"
            continue
        variants.append({"variant": f"top{position + 1}", "search_trial_id": trial_id,
                         "overrides": {"method": "dualprompt", **params(trial_id)}})
    variants += [{"variant": m, "search_trial_id": None, "overrides": {"method": m}} for m in baselines]
    if ablations:
        variants += [{"variant": "mi_only", "search_trial_id": best_id,
                      "overrides": {"method": "dualprompt", **best, "aug_strength": 0.0}},
                     {"variant": "aug_only", "search_trial_id": best_id,
                      "overrides": {"method": "dualprompt", **best, "mi_weight": 0.0}}]
    return variants


def main(declaration: SweepDeclaration, argv: list[str] | None = None) -> int:
    """Validate, then run the sweep (`dualprompt.sweep`); a process exit code (2 = bad input)."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, also through a pipe
    prog = Path(sys.argv[0]).name if argv is None else "sweep"
    try:
        p = plan(declaration, sys.argv[1:] if argv is None else argv, prog)
        cpus_per_worker, concurrent = resources(p)
        p = check_storage(p)
    except DualpromptError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    from .sweep import SweepSpec, check_storage_reachable, init_ray, run_sweep

    args = p.args
    spec = SweepSpec(
        name=p.name, storage=p.storage, protocol=p.protocol.name,
        stages=("search", "final") if args.stage == "all" else (args.stage,),
        base_config={k: v for k, v in p.base.to_flat().items() if k not in ("dataset", "seed")},
        scope=p.scope, num_samples=p.num_samples,
        space=partial(define_space, bounds=p.bounds, choices=p.choices), defaults=p.defaults,
        baselines=p.declaration.baselines, validate_top=p.validate_top, validate_spread=args.validate_spread,
        ablations=args.ablations, one_se=args.one_se,
        sampler_seed=args.sampler_seed, gpus_per_trial=args.gpus_per_trial, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=cpus_per_worker, max_concurrent=concurrent, address=args.address,
    )
    search_jobs = len(p.protocol.jobs("search", p.scope))
    final_jobs = len(p.protocol.jobs("final", p.scope))
    print(f"Sweep {spec.name} ({p.protocol.title}): {spec.num_samples} search trials x {search_jobs} job(s), then "
          f"the final variants x {final_jobs} job(s); datasets {','.join(p.scope.datasets)}"
          f"{'; targets ' + ','.join(p.scope.targets) if p.scope.targets else ''}; "
          f"up to {concurrent} trial(s) at once; rows in {p.rows_dir}", flush=True)
    try:
        init_ray(spec)
        check_cluster_gpus(args.address, args.gpus_per_trial)
        check_storage_reachable(p.rows_dir, args.address)
    except DualpromptError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return run_sweep(spec)

