"""`python -m dualprompt.bench`: time one trial of our training loop against the field's straightforward loop.

    python -m dualprompt.bench                                  # tiny CLIP on synthetic_blurry (about a minute)
    python -m dualprompt.bench --backbone ViT-B-16 --pretrained random      # ViT-B-16, few steps (CPU: minutes)
    python -m dualprompt.bench --memory-check                   # one 1000-class ViT-B-16 training step
    python -m dualprompt.bench --smoke                          # seconds; what the tests run

(a) The field's loop (CoOp/KgCoOp; protocol.md §4 and §9): every step renders the batch's augmented images
    and encodes them through the frozen image tower, and encodes every class prompt over the model's full
    context (77 tokens for CLIP); evaluation re-encodes all prompts for every test batch of 100 images.
(b) Our loop (`train_prompt` on `CachedViews`): image features of every (image, view) are extracted once,
    prompts run only up to the longest prompt's EOT token with the shared `[SOS][ctx]` prefix computed once
    for all classes (`shared_prefix.py`), and evaluation encodes the prompts once.

Both loops run the same `train_prompt` (optimiser, schedule, random streams, `method_loss`), start from the
same context vectors, and (a) renders exactly the augmented views that (b) caches, so their losses agree
step by step up to float round-off: the speed difference comes from the three mechanisms alone. (a)'s
per-step cost is that of a fresh augmentation (decode, crop, flip, normalise, image forward).

Each loop runs in a fresh subprocess, so its timings and peak memory are its own. Peak memory is
`torch.cuda.max_memory_allocated` on CUDA; on a CPU it is the process's peak resident set (VmHWM, reset
after the model is loaded) minus the resident set at that moment: tensors plus allocator slack, which
is close to, and at most a little above, what the same tensors take on an accelerator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, load_backbone
from .config import BackboneConfig, MethodConfig, OptimConfig, PromptConfig
from .data.catalogue import default_data_root, get_spec
from .data.readers import load_dataset
from .data.sampling import sample_few_shot, subsample_classes
from .data.transforms import build_transforms
from .data.types import Item
from .evaluate import accuracy
from .experiment import Experiment
from .features import CachedViews, EncodedViews, FeatureStore, render_view
from .prompt_learner import PromptLearner
from .train import train_prompt

FIELD_TEST_BATCH = 100  # Dassl's TEST batch size: (a) re-encodes every prompt once per this many test images
RESULT_TAG = "BENCH_RESULT "  # a child process's last stdout line: this tag, then its result as JSON
GIB = 1024**3
MIB = 1024**2


# ==== (a) BASELINE: the field's loop, kept here on purpose; the package itself never encodes this way ====


def field_text_features(backbone: Backbone, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """BASELINE. CoOp's TextEncoder: every prompt over all `context_length` positions, pooled at its EOT.

    prompts [C, context_length, D] (soft context already spliced in), eot [C] -> L2-normalised [C, E].
    No truncation, no chunking, no checkpointing.
    """
    text = backbone.text
    x = prompts + text.positional_embedding.to(prompts.dtype)  # [C, context_length, D]
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask))
    pooled = x[torch.arange(x.shape[0], device=x.device), eot]  # [C, D]
    projection = text.text_projection
    pooled = projection(pooled) if isinstance(projection, nn.Module) else pooled @ projection
    return F.normalize(pooled, dim=-1)


class FieldPromptLearner(PromptLearner):
    """BASELINE. The same soft prompt (same `ctx`, same token layout), encoded the field's way."""

    def forward(self, classnames: tuple[str, ...] | list[str]) -> torch.Tensor:
        embeddings, eot = self._frozen_tokens(tuple(classnames))  # [C, context_length, D], [C]
        ctx = self.ctx.to(embeddings.dtype).unsqueeze(0).expand(embeddings.shape[0], -1, -1)  # [C, M, D]
        prompts = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + self.n_ctx :]], dim=1)
        return field_text_features(self.backbone, prompts, eot)


@torch.no_grad()
def field_evaluate(learner: FieldPromptLearner, items: Sequence[Item], transform, classnames: tuple[str, ...]) -> float:
    """BASELINE. CoOp's `model_inference`: per test batch, encode the images and re-encode every prompt."""
    correct = 0
    for start in range(0, len(items), FIELD_TEST_BATCH):
        batch = items[start : start + FIELD_TEST_BATCH]
        images = torch.stack([render_view(item.path, transform, None) for item in batch])
        logits = learner.backbone.encode_images(images) @ learner(classnames).T  # [b, C]
        labels = torch.tensor([item.label for item in batch])
        correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
    return 100.0 * correct / max(1, len(items))


# ==== the problem both loops solve ====


@dataclass(frozen=True)
class EvalSet:
    name: str  # "base" or "new"
    classnames: tuple[str, ...]
    items: tuple[Item, ...]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([item.label for item in self.items])


@dataclass
class Problem:
    """One base-class training job: its data, class prompts and training configuration."""

    backbone: Backbone
    classnames: tuple[str, ...]  # the dataset's base classes, then any distractor classes (--classes)
    train_items: tuple[Item, ...]
    eval_sets: tuple[EvalSet, ...]  # base test, then new test (a final-stage trial evaluates both)
    handcrafted: torch.Tensor  # [C, E]
    method: MethodConfig
    optim: OptimConfig
    n_views: int
    seed: int
    train_transform: object
    eval_transform: object

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([item.label for item in self.train_items])

    def learner(self, kind: type[PromptLearner]) -> PromptLearner:
        """A fresh soft prompt; both loops start from the same context vectors."""
        return kind(self.backbone, PromptConfig(), torch.Generator().manual_seed(self.seed))


def build_problem(
    backbone: Backbone, dataset: str = "synthetic_blurry", data_root: str = "", shots: int = 16,
    classes: int = 0, n_views: int = 8, batch_size: int = 32, steps: int = 250, test_images: int = 0,
    method: str = "coop", lr: float = 0.002, seed: int = 1,
) -> Problem:
    """Train on the base classes of `dataset` at `shots` shots, test on base and new (`test_images` each,
    0 = all); `steps` is rounded up to whole epochs."""
    root = Path(data_root) if data_root else default_data_root()
    few_shot = sample_few_shot(load_dataset(dataset, root), shots, seed)
    base, new = subsample_classes(few_shot, "base"), subsample_classes(few_shot, "new")
    classnames = with_distractors(base.classnames, classes, backbone, exclude=new.classnames)
    eval_sets = (EvalSet("base", classnames, _every_kth(base.test, test_images)),
                 EvalSet("new", new.classnames, _every_kth(new.test, test_images)))
    epochs = max(1, math.ceil(steps / math.ceil(len(base.train) / batch_size)))
    optim = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=min(1, epochs - 1))
    train_tf, eval_tf = build_transforms(backbone.image_size, backbone.image_mean, backbone.image_std)
    handcrafted = Experiment(backbone).handcrafted(classnames, get_spec(dataset).template, ensemble=False)
    return Problem(backbone, classnames, base.train, eval_sets, handcrafted, MethodConfig(method=method), optim,
                   n_views, seed, train_tf, eval_tf)


def _every_kth(items: tuple[Item, ...], n: int) -> tuple[Item, ...]:
    """About `n` of `items`, every k-th, so that every class keeps test images (n = 0: all)."""
    return items[:: math.ceil(len(items) / n)] if 0 < n < len(items) else items


def with_distractors(names: tuple[str, ...], total: int, backbone: Backbone,
                     exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`names` padded to `total` class prompts with other class names the tokenizer knows (not `exclude`).

    The extra classes have no images; they make every text pass as wide as a `total`-class dataset.
    """
    if total <= len(names):
        return names
    pool = distractor_pool(backbone)
    extra = [name for name in pool if name not in names and name not in exclude][: total - len(names)]
    if len(names) + len(extra) < total:
        raise SystemExit(f"--classes: {backbone.cfg.backbone} has only {len(names) + len(extra)} class names "
                         f"available here; ask for at most that many.")
    return names + tuple(extra)


def distractor_pool(backbone: Backbone) -> list[str]:
    """ImageNet's 1000 class names for BPE tokenizers; the world's colour x shape names for the tiny CLIP."""
    from .world.tokenizer import WorldTokenizer

    if isinstance(backbone.tokenizer, WorldTokenizer):
        from .world.vocab import COLOURS, SHAPES

        return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


# ==== measuring ====


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block above the level at its start, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = self.peak = 0
        self.how = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base, self.how = torch.cuda.memory_allocated(self.device), "torch.cuda.max_memory_allocated"
            return self
        self.base, self.how = (_proc_status_kib("VmRSS") or 0) * 1024, "peak RSS (VmHWM reset at start)"
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.how = "peak RSS of the process (ru_maxrss; VmHWM could not be reset)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        hwm = _proc_status_kib("VmHWM")
        if hwm is None or self.how.startswith("peak RSS of the process"):
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak = max(0, hwm * 1024 - self.base)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_encoder_flops(backbone: Backbone, n_prompts: int, length: int, recompute: bool = False) -> float:
    """Floating-point operations of one text-encoder forward and backward over `n_prompts` prompts.

    Per layer and token, the four weight matrices (qkv 3d^2, out d^2, MLP 2*d*h) cost 2 FLOPs per weight
    forward; attention costs 4*L*d per token forward (QK^T and AV over the full L x L square: the causal
    mask zeroes half of it but the kernels compute it). Backward: the weights are frozen, so only
    activation gradients exist: the linear layers cost as much as forward (dX only, no dW) and attention
    2.5x forward (flash-attention backward recomputes QK^T). The EOT projection adds 2*d*E per prompt
    each way. `recompute` adds one more forward (activation checkpointing). This is exactly what
    `torch.utils.flop_counter.FlopCounterMode` counts for the same pass (tests/test_bench.py checks it).
    """
    blocks = backbone.transformer.resblocks
    d = backbone.transformer.width
    hidden = blocks[0].mlp.c_fc.out_features
    tokens = n_prompts * length
    linear = 2 * tokens * len(blocks) * (4 * d * d + 2 * d * hidden)
    attention = 4 * n_prompts * length * length * d * len(blocks)
    projection = 2 * n_prompts * d * backbone.text.text_projection.shape[-1]
    forward = linear + attention + projection
    backward = linear + 2.5 * attention + projection
    return forward + backward + (forward if recompute else 0.0)


def shared_prefix_flops(backbone: Backbone, n_prefix: int, lengths: Sequence[int]) -> float:
    """Floating-point operations of one forward and backward of (b)'s text pass (`shared_prefix.py`, one
    pass, no checkpointing) over prompts of `lengths` positions (up to and with each one's EOT token)
    whose first `n_prefix` positions are shared.

    Per layer the weight matrices run on T = n_prefix + sum(length - n_prefix) token rows (the prefix
    once, no padding); at the last layer only the q/k/v projection runs on all T rows, and the output
    projection and MLP on the EOT rows. Attention runs one causal sequence of max(lengths) per prompt
    (the prefix's rows broadcast into each), counted over the full square as in `text_encoder_flops`;
    backward as there. Equal to `FlopCounterMode` (tests/test_bench.py).
    """
    blocks = backbone.transformer.resblocks
    d, layers = backbone.transformer.width, len(blocks)
    hidden = blocks[0].mlp.c_fc.out_features
    n_prompts, length = len(lengths), max(lengths)
    rows = n_prefix + sum(lengths) - n_prompts * n_prefix
    linear = 2 * ((layers - 1) * rows * (4 * d * d + 2 * d * hidden) + rows * 3 * d * d
                  + n_prompts * (d * d + 2 * d * hidden))
    attention = 4 * n_prompts * length * length * d * layers
    projection = 2 * n_prompts * d * backbone.text.text_projection.shape[-1]
    return (linear + attention + projection) + (linear + 2.5 * attention + projection)


def matmul_flops_per_s(device: torch.device, n: int = 2048, repeats: int = 5,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Best-of-`repeats` FLOP/s of an n x n fp32 matmul: the machine's practical dense-compute limit.
    `clock=time.process_time` times it in CPU seconds (CPU only), as the loops' CPU-time rows are."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = clock()
        torch.matmul(a, b)
        sync(device)
        best = min(best, clock() - start)
    return 2 * n**3 / best


def prompt_length(learner: PromptLearner, classnames: tuple[str, ...]) -> int:
    """Positions our loop runs: up to the longest prompt's EOT token."""
    _, eot = learner._frozen_tokens(classnames)
    return int(eot.max()) + 1


# ==== the two loops ====


class Phases:
    """Wall-clock and CPU (process) seconds of consecutive phases. With one thread, CPU seconds barely
    move when other jobs share the machine, where wall-clock seconds do."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu = device, {}, {}
        self._mark()

    def _mark(self) -> None:
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def end(self, name: str) -> None:
        sync(self.device)
        self.wall[name], self.cpu[name] = time.perf_counter() - self._wall, time.process_time() - self._cpu
        self._mark()

    def result(self, cold: tuple[str, ...], warm: tuple[str, ...]) -> dict:
        out = {f"{name}_s": value for name, value in self.wall.items()}
        out.update({f"{name}_cpu_s": value for name, value in self.cpu.items()})
        for label, names in (("trial_cold", cold), ("trial_warm", warm)):
            out[f"{label}_s"] = sum(self.wall.get(n, 0.0) for n in names)
            out[f"{label}_cpu_s"] = sum(self.cpu.get(n, 0.0) for n in names)
        return out


def run_field_loop(problem: Problem) -> dict:
    """(a): per-step image encoding, full-context prompts, prompts re-encoded per test batch."""
    device = problem.backbone.device
    learner = problem.learner(FieldPromptLearner)
    views = EncodedViews(problem.backbone, problem.train_items, problem.train_transform)
    with PeakMemory(device) as memory:
        phases = Phases(device)
        log = train_prompt(learner, views, problem.labels, problem.n_views, problem.classnames,
                           problem.handcrafted, problem.method, problem.optim, problem.seed)
        phases.end("train")
        acc = [field_evaluate(learner, s.items, problem.eval_transform, s.classnames) for s in problem.eval_sets]
        phases.end("eval")
    return {"steps": log.steps, **phases.result(cold=("train", "eval"), warm=("train", "eval")),
            "final_loss": log.epoch_terms[-1]["loss"], "accuracy": acc, "peak_bytes": memory.peak,
            "memory_how": memory.how, "model_rss_bytes": memory.base}


def run_our_loop(problem: Problem, cache_dir: Path | None = None) -> dict:
    """(b): features extracted once into an empty cache (cold), read back (warm, as every later trial of a
    sweep does), then `train_prompt` on cached views and one text pass per evaluation."""
    backbone, device = problem.backbone, problem.backbone.device
    learner = problem.learner(PromptLearner)
    train_key, eval_key = f"bench-train-{backbone.image_size}", f"bench-eval-{backbone.image_size}"
    with tempfile.TemporaryDirectory() as scratch, PeakMemory(device) as memory:
        root = cache_dir or Path(scratch)
        phases = Phases(device)
        store = FeatureStore(backbone, root)
        store.features(problem.train_items, problem.train_transform, train_key, views=problem.n_views)
        for eval_set in problem.eval_sets:
            store.features(eval_set.items, problem.eval_transform, eval_key, views=None)
        phases.end("feature")
        warm = FeatureStore(backbone, root)
        train_features = warm.features(problem.train_items, problem.train_transform, train_key, views=problem.n_views)
        test_features = [warm.features(s.items, problem.eval_transform, eval_key, views=None)
                         for s in problem.eval_sets]
        phases.end("load")
        log = train_prompt(learner, CachedViews(train_features), problem.labels, problem.n_views,
                           problem.classnames, problem.handcrafted, problem.method, problem.optim, problem.seed)
        phases.end("train")
        acc = []
        for eval_set, features in zip(problem.eval_sets, test_features, strict=True):
            with torch.no_grad():
                classifier = learner(eval_set.classnames)  # [C, E], once per evaluation
            acc.append(accuracy(classifier, features, eval_set.labels))
        phases.end("eval")
    return {"steps": log.steps, **phases.result(cold=("feature", "train", "eval"), warm=("load", "train", "eval")),
            "final_loss": log.epoch_terms[-1]["loss"], "accuracy": acc, "peak_bytes": memory.peak,
            "memory_how": memory.how, "model_rss_bytes": memory.base}


LOOPS = {"a": run_field_loop, "b": run_our_loop}


# ==== memory: one 1000-class training step (ImageNet scale) with and without a memory mechanism ====

MEMORY_CHUNK = 100  # prompts per text-encoder chunk in the chunked variants
MEMORY_VARIANTS: dict[str, str] = {
    "field": "(a) full 77-token context, no mechanism",
    "none": "(b) truncated, shared prefix, no mechanism",
    "chunk": f"(b) text_chunk_size={MEMORY_CHUNK} (each chunk recomputed in backward)",
    "checkpoint": "(b) checkpoint_text (each layer recomputed in backward)",
}


def memory_step(variant: str, n_classes: int, backbone_name: str, pretrained: str, device: str,
                batch: int = 32) -> dict:
    """One training step of the soft prompt over `n_classes` ImageNet class names; its peak memory."""
    cfg = BackboneConfig(backbone=backbone_name, pretrained=pretrained,
                         text_chunk_size=MEMORY_CHUNK if variant == "chunk" else 0,
                         checkpoint_text=variant == "checkpoint")
    torch.manual_seed(0)
    backbone = load_backbone(cfg, device)
    learner = (FieldPromptLearner if variant == "field" else PromptLearner)(backbone, PromptConfig())
    names = tuple(distractor_pool(backbone)[:n_classes])
    embeddings, eot = learner._frozen_tokens(names)  # cached frozen token embeddings [C, 77, D]
    cache_bytes = embeddings.numel() * embeddings.element_size()
    if variant != "field" and (suffixes := learner._frozen_suffixes(names)) is not None:  # built once per class list
        cache_bytes += sum(g.suffix.numel() * g.suffix.element_size() for g in suffixes.groups)
    length = backbone.context_length if variant == "field" else int(eot.max()) + 1
    features = F.normalize(torch.randn(batch, backbone.text.text_projection.shape[-1], device=backbone.device), dim=-1)
    labels = torch.randint(n_classes, (batch,), device=backbone.device)
    with PeakMemory(backbone.device) as memory:
        start = time.perf_counter()
        soft = learner(names)
        F.cross_entropy(backbone.logit_scale * features @ soft.T, labels).backward()
        sync(backbone.device)
        step_s = time.perf_counter() - start
    return {"variant": variant, "classes": n_classes, "tokens": length, "step_s": step_s,
            "peak_bytes": memory.peak, "memory_how": memory.how,
            "model_bytes": sum(t.numel() * t.element_size() for t in [*backbone.model.parameters(),
                                                                      *backbone.model.buffers()]),
            "token_cache_bytes": cache_bytes}


def _rss_watchdog(cap_bytes: int, payload: dict) -> None:
    """Stop this process, reporting the cap, once its resident set exceeds `cap_bytes` (protects the machine)."""

    def watch() -> None:
        while True:
            if (_proc_status_kib("VmRSS") or 0) * 1024 > cap_bytes:
                print(RESULT_TAG + json.dumps({**payload, "exceeded_cap_bytes": cap_bytes}), flush=True)
                os._exit(0)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


# ==== running children and printing ====


def _run_child(argv: list[str], child: str) -> dict:
    """Run one measurement in a fresh `python -m dualprompt.bench` process and return its result."""
    command = [sys.executable, "-m", "dualprompt.bench", *argv, "--child", child]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"bench child {child!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _machine() -> str:
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({threads} threads)"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def print_comparison(runs: dict[str, list[dict]], meta: dict, probe: tuple[float, float | None]) -> None:
    """The side-by-side table of (a) and (b): medians, and (min-max) over repeats."""
    a, b = runs["a"], runs["b"]
    pick = lambda rs, key: [r[key] for r in rs]  # noqa: E731
    rate = lambda rs: [r["steps"] / r["train_s"] for r in rs]  # noqa: E731
    width = 44
    print(f"\n{'':{width}} {'(a) field loop':>24} {'(b) our loop':>24} {'(b)/(a)':>12}")

    def row(label: str, av: list[float] | None, bv: list[float], fmt: str, ratio: str = "") -> None:
        left = _spread(av, fmt) if av else "-"
        print(f"{label:{width}} {left:>24} {_spread(bv, fmt):>24} {ratio:>12}")

    speed = lambda x, y: f"x{statistics.median(x) / statistics.median(y):.1f}"  # noqa: E731
    row("train steps/s", rate(a), rate(b), ".2f", speed(rate(b), rate(a)))
    cpu_rate = lambda rs: [r["steps"] / r["train_cpu_s"] for r in rs]  # noqa: E731
    row("train steps per CPU second", cpu_rate(a), cpu_rate(b), ".2f", speed(cpu_rate(b), cpu_rate(a)))
    row("train time (s)", pick(a, "train_s"), pick(b, "train_s"), ".2f", speed(pick(a, "train_s"), pick(b, "train_s")))
    row("evaluation time (s)", pick(a, "eval_s"), pick(b, "eval_s"), ".3f", speed(pick(a, "eval_s"), pick(b, "eval_s")))
    row("feature extraction, once per sweep (s)", None, pick(b, "feature_s"), ".2f")
    row("feature cache read (s)", None, pick(b, "load_s"), ".3f")
    trials = (("trial_warm", "time per trial, warm cache"), ("trial_cold", "time per trial, cold cache"))
    for suffix, prefix in (("_s", ""), ("_cpu_s", "CPU ")):
        for key, label in trials:
            av, bv = pick(a, key + suffix), pick(b, key + suffix)
            row(f"{prefix}{label} (s)", av, bv, ".2f", speed(av, bv))
    mib = lambda rs: [r["peak_bytes"] / MIB for r in rs]  # noqa: E731
    row("peak memory above loaded model (MiB)", mib(a), mib(b), ".0f",
        f"{statistics.median(mib(b)) / max(1e-9, statistics.median(mib(a))):.2f}")
    loss_gap = max(abs(x - y) for x, y in zip(pick(a, "final_loss"), pick(b, "final_loss"), strict=True))
    row("final training loss", pick(a, "final_loss"), pick(b, "final_loss"), ".5f", f"|d|={loss_gap:.1e}")
    for index, subset in enumerate(("base", "new")):
        row(f"test accuracy, {subset} classes (%)", [r["accuracy"][index] for r in a],
            [r["accuracy"][index] for r in b], ".2f")
    print(f"(time rows: (b)/(a) is the speed ratio, (a) time / (b) time; CPU time = process_time, "
          f"robust to other jobs with --threads 1; memory: {a[0]['memory_how']}; "
          f"process RSS with the model loaded: {statistics.median(pick(a, 'model_rss_bytes')) / MIB:.0f} MiB)")

    print_text_share(meta, {"wall clock": (statistics.median(rate(b)), probe[0]),
                            "CPU time": (statistics.median(cpu_rate(b)), probe[1])})


def print_text_share(meta: dict, rates: dict[str, tuple[float, float | None]]) -> None:
    """The text step's FLOPs in each loop, and (b)'s training rate as a share of the matmul probe, by
    each clock: rates = {clock: ((b)'s train steps per second of it, the probe's FLOP per second of it)}."""
    n, flops_a, flops_b, unshared = meta["classes"], meta["flops_a"], meta["flops_b"], meta["flops_b_unshared"]
    prefix, length = meta["prefix_length"], meta["our_length"]
    print(f"\ntext encoder, one forward+backward over {n} classes "
          "(2 FLOPs per frozen weight per token each way, attention 4*L*d per token forward and 2.5x that backward):")
    print(f"  (a) {n} x {meta['full_length']} tokens: {flops_a / 1e9:.3f} GFLOP")
    if prefix:
        print(f"  (b) [SOS][ctx] once ({prefix} tokens) + {meta['suffix_rows']} class-name tokens ({n} x up to "
              f"{length - prefix}, no padding), last layer's MLP on the EOT rows only: {flops_b / 1e9:.3f} GFLOP  "
              f"(a)/(b) = {flops_a / flops_b:.1f}")
    print(f"  (b) without the shared prefix, {n} x {length} tokens: {unshared / 1e9:.3f} GFLOP"
          f"{'' if prefix else f'  (a)/(b) = {flops_a / flops_b:.1f}'}")
    print("text step share of the matmul probe = (b)'s train steps/s x the text pass's FLOPs / the 2048x2048 fp32 "
          "matmul probe's FLOP/s (the CPU-time row divides CPU seconds by CPU seconds: with --threads 1 it barely "
          "moves when other jobs share the machine; the wall-clock row is what an idle machine shows):")
    unshared_head = "counted in unshared FLOPs (whole prompts)" if prefix else ""
    print(f"  {'':11} {'probe GFLOP/s':>14} {'(b) steps/s':>12} {'executed FLOPs':>15}  {unshared_head}")
    for clock, (steps, probe) in rates.items():
        if probe is None:
            continue
        unshared_share = f"{100 * steps * unshared / probe:.1f}%" if prefix else ""
        print(f"  {clock:11} {probe / 1e9:>14.1f} {steps:>12.1f} {100 * steps * flops_b / probe:>14.1f}%  "
              f"{unshared_share:>20}   (limit {probe / flops_b:.0f} steps/s at the probe's rate)")


def print_memory(results: list[dict], limit_gib: float) -> None:
    print(f"\n{'variant':58} {'classes':>7} {'tokens':>6} {'step (s)':>9} {'peak (GiB)':>10} {'+model+tokens':>13}  "
          f"fits {limit_gib:g} GiB")
    for r in results:
        fixed = (r.get("model_bytes", 0) + r.get("token_cache_bytes", 0)) / GIB
        label = MEMORY_VARIANTS[r["variant"]]
        if "exceeded_cap_bytes" in r:
            cap = r["exceeded_cap_bytes"] / GIB
            print(f"{label:58} {r['classes']:>7} {'':>6} {'':>9} {'> ' + format(cap, '.1f'):>10} {'':>13}  "
                  f"no (stopped at the {cap:.0f} GiB safety cap)")
            continue
        peak = r["peak_bytes"] / GIB
        fits = "yes" if peak + fixed < limit_gib else "no"
        print(f"{label:58} {r['classes']:>7} {r['tokens']:>6} {r['step_s']:>9.1f} {peak:>10.2f} "
              f"{peak + fixed:>13.2f}  {fits}")
    none = sorted((r["classes"], r["peak_bytes"]) for r in results if r["variant"] == "none" and "peak_bytes" in r)
    if len(none) >= 2:
        (c1, p1), (c2, p2) = none[0], none[-1]
        slope = (p2 - p1) / (c2 - c1)
        print(f"no mechanism, linear in classes: {slope / MIB:.1f} MiB per class -> "
              f"{(p1 + slope * (1000 - c1)) / GIB:.1f} GiB at 1000 classes (extrapolated from {c1} and {c2})")
    print("peak = activations and gradients of the step above the loaded model (CPU: peak RSS, fp32); "
          "+model+tokens adds the fp32 weights and the cached frozen token embeddings ([C, 77, D] and the "
          "shared-prefix suffixes [C, S, D]).")


# ==== command line ====

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
    from . import world

    if backbone == world.TINY_MODEL_NAME and world.CHECKPOINT_PATH.is_file():
        return world.TINY_PRETRAINED_TAG
    return "random"


def _problem(args: argparse.Namespace) -> Problem:
    torch.manual_seed(args.seed)
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, pretrained=args.pretrained), args.device)
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
    flops_b = shared_prefix_flops(backbone, prefix, lengths) if backbone.shares_prefix else unshared
    return {"classes": n, "train_images": len(problem.train_items),
            "test_images": [len(s.items) for s in problem.eval_sets], "epochs": problem.optim.epochs,
            "batch_size": problem.optim.batch_size, "views": problem.n_views, "full_length": full,
            "our_length": ours, "prefix_length": prefix if backbone.shares_prefix else 0,
            "suffix_rows": sum(lengths) - n * prefix,
            "flops_a": text_encoder_flops(backbone, n, full), "flops_b": flops_b, "flops_b_unshared": unshared}


def _child(args: argparse.Namespace, argv: list[str]) -> int:
    if args.child.startswith("memory:"):
        _, variant, classes = args.child.split(":")
        payload = {"variant": variant, "classes": int(classes)}
        if args.device == "cpu":
            _rss_watchdog(int(args.memory_cap_gib * GIB), payload)
        result = memory_step(variant, int(classes), args.backbone, args.pretrained, args.device)
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
    print(f"dualprompt.bench: {args.backbone} ({args.pretrained}) on {args.device}; machine: {_machine()}")
    print(f"load average (1, 5, 15 min) at start: {_loadavg()}")
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
    device, size = torch.device(args.device), 256 if args.smoke else 2048
    probe_cpu = matmul_flops_per_s(device, n=size, clock=time.process_time) if device.type == "cpu" else None
    print_comparison(runs, meta, (matmul_flops_per_s(device, n=size), probe_cpu))
    print(f"load average at end: {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
