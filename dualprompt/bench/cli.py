"""`python -m dualprompt.bench`: time one trial of our training loop against the field's straightforward loop.

Each measurement runs in a fresh child process (`--child`) so that its timings and peak memory are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from .. import shared_prefix
from ..backbone import load_backbone, text_dtype
from ..config import PRECISIONS, BackboneConfig
from ..prompt_learner import PromptLearner
from .loops import LOOPS, memory_step
from .measure import (
    GIB,
    dense_pass_flops,
    matmul_flops_per_s,
    proc_status_kib,
    prompt_length,
    shared_prefix_flops,
    text_encoder_flops,
)
from .output import print_comparison, print_memory
from .problem import Problem, build_problem

RESULT_TAG = "BENCH_RESULT "  # a child process's last stdout line: this tag, then its result as JSON


def _rss_watchdog(cap_bytes: int, payload: dict) -> None:
    """Stop this process, reporting the cap, once its resident set exceeds `cap_bytes` (protects the machine)."""

    def watch() -> None:
        while True:
            if (proc_status_kib("VmRSS") or 0) * 1024 > cap_bytes:
                print(RESULT_TAG + json.dumps({**payload, "exceeded_cap_bytes": cap_bytes}), flush=True)
                os._exit(0)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _run_child(argv: list[str], child: str) -> dict:
    """Run one measurement in a fresh `python -m dualprompt.bench` process and return its result."""
    command = [sys.executable, "-m", "dualprompt.bench", *argv, "--child", child]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"bench child {child!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def _machine() -> str:
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__} ({threads} threads)"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


DEFAULTS = {  # per backbone: shots, views, batch, steps, test images
    "tiny-synthetic": {"shots": 16, "views": 8, "batch_size": 32, "steps": 250, "test_images": 0},
    "other": {"shots": 4, "views": 1, "batch_size": 8, "steps": 10, "test_images": 50},
}
SMOKE = {"shots": 2, "views": 1, "batch_size": 8, "steps": 6, "test_images": 20, "repeats": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tiny-synthetic", help="open_clip model name, e.g. ViT-B-16")
    parser.add_argument("--pretrained", default="", help="tag or checkpoint; default: the tiny CLIP's own "
                        "weights when shipped, else random (only the cost is measured)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="amp = bf16 autocast of the text "
                        "tower on CUDA, as training's precision=amp (float32 on a CPU)")
    parser.add_argument("--dataset", default="synthetic_blurry")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--method", default="coop", help="coop, kgcoop or dualprompt (the same in both loops)")
    parser.add_argument("--shots", type=int)
    parser.add_argument("--classes", type=int, default=0, help="class prompts per step (base classes plus "
                        "distractor names); 0 = the dataset's base classes")
    parser.add_argument("--views", type=int, help="augmented views per training image")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="training steps (rounded up to whole epochs)")
    parser.add_argument("--test-images", type=int, help="0 = the whole base test split")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default "
                        "(on a loaded machine, more threads than free cores makes small ops ~100x slower)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each loop (median and min-max shown)")
    parser.add_argument("--in-process", action="store_true", help="run both loops in this process "
                        "(faster to start; peak memory of the second loop is then less exact)")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run of everything (tests)")
    parser.add_argument("--memory-check", action="store_true", help="one 1000-class ViT-B-16 step per mechanism")
    parser.add_argument("--memory-classes", type=int, default=1000)
    parser.add_argument("--memory-full", action="store_true", help="also run the variants without a "
                        "mechanism at --memory-classes (slow; stopped at --memory-cap-gib)")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0, help="the accelerator budget to check")
    parser.add_argument("--memory-cap-gib", type=float, default=12.0, help="CPU safety cap: a variant whose RSS "
                        "exceeds it is stopped and reported as above it")
    parser.add_argument("--jobs-together", action="store_true", help="time a search trial's jobs (the offline "
                        "datasets x 2 folds x --trial-seeds) trained one after another and together")
    parser.add_argument("--trial-seeds", type=int, default=1, help="few-shot seeds of --jobs-together's trial")
    parser.add_argument("--n-ctx", type=int, default=4, help="context length of --jobs-together's jobs")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = DEFAULTS["tiny-synthetic" if args.backbone == "tiny-synthetic" else "other"]
    if args.smoke:
        defaults = SMOKE
        args.repeats, args.in_process = SMOKE["repeats"], True
        args.pretrained = args.pretrained or "random"
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not args.pretrained:
        args.pretrained = _default_pretrained(args.backbone)
    if args.memory_check and args.backbone == "tiny-synthetic":
        args.backbone, args.pretrained = "ViT-B-16", "random"
    return args


def _default_pretrained(backbone: str) -> str:
    from .. import world

    if backbone == world.TINY_MODEL_NAME and world.CHECKPOINT_PATH.is_file():
        return world.TINY_PRETRAINED_TAG
    return "random"


def _problem(args: argparse.Namespace) -> Problem:
    torch.manual_seed(args.seed)
    cfg = BackboneConfig(backbone=args.backbone, pretrained=args.pretrained, precision=args.precision)
    backbone = load_backbone(cfg, args.device)
    return build_problem(backbone, args.dataset, args.data_root, args.shots, args.classes, args.views,
                         args.batch_size, args.steps, args.test_images, args.method, args.lr, args.seed)


def problem_meta(problem: Problem) -> dict:
    """Sizes of the problem and the text-encoder work per step in each loop: (a) full context; (b) as run
    (the shared prefix once, when the backbone's tower allows it); (b) unshared, each prompt whole up to
    the longest EOT (the pass before the shared prefix, the work the earlier share was counted in)."""
    backbone, learner = problem.backbone, problem.learner(PromptLearner)
    ours, full = prompt_length(learner, problem.classnames), backbone.context_length
    n, prefix = len(problem.classnames), 1 + learner.n_ctx
    unshared = text_encoder_flops(backbone, n, ours)
    lengths = (learner._frozen_tokens(problem.classnames)[1] + 1).tolist()
    suffixes = learner._frozen_suffixes(problem.classnames)
    with backbone.text_autocast():  # as in training: dense_pass.py runs float32 passes without autocast
        dense = suffixes is not None and shared_prefix.runs_dense(suffixes, learner.ctx, backbone.cfg.checkpoint_text)
    as_run = dense_pass_flops if dense else shared_prefix_flops
    flops_b = as_run(backbone, prefix, lengths) if backbone.shares_prefix else unshared
    return {"classes": n, "train_images": len(problem.train_items),
            "test_images": [len(s.items) for s in problem.eval_sets], "epochs": problem.optim.epochs,
            "batch_size": problem.optim.batch_size, "views": problem.n_views, "full_length": full,
            "our_length": ours, "prefix_length": prefix if backbone.shares_prefix else 0,
            "suffix_rows": sum(lengths) - n * prefix, "dense": dense,
            "flops_a": text_encoder_flops(backbone, n, full), "flops_b": flops_b, "flops_b_unshared": unshared}


def _child(args: argparse.Namespace, argv: list[str]) -> int:
    if args.child.startswith("memory:"):
        _, variant, classes = args.child.split(":")
        payload = {"variant": variant, "classes": int(classes)}
        if args.device == "cpu":
            _rss_watchdog(int(args.memory_cap_gib * GIB), payload)
        result = memory_step(variant, int(classes), args.backbone, args.pretrained, args.device, args.precision)
    else:
        problem = _problem(args)
        result = {**LOOPS[args.child](problem), **problem_meta(problem)}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def run_memory_check(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Small class counts for the variants that grow with classes (their slope extrapolates to 1000),
    the full count for the mechanisms; `--memory-full` also runs the unprotected variants at full size."""
    small, full = [100, 250], args.memory_classes
    plan = [("field", small[0]), *(("none", c) for c in small)]
    if args.memory_full:
        plan += [("none", full)]
    plan += [(variant, full) for variant in ("chunk", "checkpoint")]
    results = []
    for variant, classes in plan:
        results.append(_run_child(argv, f"memory:{variant}:{classes}"))
        print(f"  done: {variant} at {classes} classes (load {_loadavg()})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return _child(args, argv)
    print(f"dualprompt.bench: {args.backbone} ({args.pretrained}) on {args.device}, {args.precision}; "
          f"machine: {_machine()}")
    print(f"load average (1, 5, 15 min) at start: {_loadavg()}")
    if args.jobs_together:
        from .joint import print_jobs_together, run_jobs_together

        print_jobs_together(run_jobs_together(args), args)
        print(f"load average at end: {_loadavg()}")
        return 0
    if args.memory_check:
        results = run_memory_check(args, argv)
        print_memory(results, args.memory_limit_gib)
        print(f"load average at end: {_loadavg()}")
        return 0
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for _ in range(args.repeats):
        for loop in ("a", "b"):  # alternated, so a load change on a shared machine hits both loops alike
            if args.in_process:
                problem = _problem(args)
                runs[loop].append({**LOOPS[loop](problem), **problem_meta(problem)})
            else:
                runs[loop].append(_run_child(argv, loop))
    meta = runs["b"][0]
    print(f"problem: {args.dataset} base classes, {meta['classes']} class prompts, {meta['train_images']} training "
          f"images x {meta['views']} views, batch {meta['batch_size']}, {runs['b'][0]['steps']} steps "
          f"({meta['epochs']} epochs), {' + '.join(map(str, meta['test_images']))} base + new test images, "
          f"method {args.method}; "
          f"{args.repeats} run(s) of each loop, {'in this process' if args.in_process else 'each in a fresh process'}")
    device = torch.device(args.device)
    size = 256 if args.smoke else 8192 if device.type == "cuda" else 2048  # a GPU needs a large one to be busy
    dtype = text_dtype(args.precision, device)  # the probe runs in the dtype the text step runs in
    probe = f"{size}x{size} {str(dtype).removeprefix('torch.')} matmul probe"
    probe_cpu = matmul_flops_per_s(device, n=size, clock=time.process_time) if device.type == "cpu" else None
    print_comparison(runs, meta, (matmul_flops_per_s(device, n=size, dtype=dtype), probe_cpu), probe)
    print(f"load average at end: {_loadavg()}")
    return 0
