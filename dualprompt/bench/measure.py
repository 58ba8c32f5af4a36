"""Clocks, peak memory, FLOP counts and the matmul probe the bench reports with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from ..backbone import Backbone
from ..prompt_learner import PromptLearner

GIB = 1024**3
MIB = 1024**2


def proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block above the level at its start, in bytes (see `dualprompt.bench`)."""

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
        self.base, self.how = (proc_status_kib("VmRSS") or 0) * 1024, "peak RSS (VmHWM reset at start)"
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
        hwm = proc_status_kib("VmHWM")
        if hwm is None or self.how.startswith("peak RSS of the process"):
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak = max(0, hwm * 1024 - self.base)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _text_tower(backbone: Backbone) -> tuple[int, int, int, int]:
    """Width d, layers, MLP hidden width h and output width E of the backbone's text tower."""
    blocks = backbone.transformer.resblocks
    return (backbone.transformer.width, len(blocks), blocks[0].mlp.c_fc.out_features,
            backbone.text.text_projection.shape[-1])


def _shared_rows(n_prefix: int, lengths: Sequence[int]) -> int:
    """Token rows of a pass that runs the shared prefix once: T = n_prefix + sum(length - n_prefix)."""
    return n_prefix + sum(lengths) - len(lengths) * n_prefix


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
    d, layers, hidden, embed = _text_tower(backbone)
    tokens = n_prompts * length
    linear = 2 * tokens * layers * (4 * d * d + 2 * d * hidden)
    attention = 4 * n_prompts * length * length * d * layers
    projection = 2 * n_prompts * d * embed
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
    d, layers, hidden, embed = _text_tower(backbone)
    n_prompts, length, rows = len(lengths), max(lengths), _shared_rows(n_prefix, lengths)
    linear = 2 * ((layers - 1) * rows * (4 * d * d + 2 * d * hidden) + rows * 3 * d * d
                  + n_prompts * (d * d + 2 * d * hidden))
    attention = 4 * n_prompts * length * length * d * layers
    projection = 2 * n_prompts * d * embed
    return (linear + attention + projection) + (linear + 2.5 * attention + projection)


def dense_pass_flops(backbone: Backbone, n_prefix: int, lengths: Sequence[int]) -> float:
    """Floating-point operations of one forward and backward of (b)'s text pass when `dense_pass.py` runs it
    (a small one-group pass, one prefix), prompts as in `shared_prefix_flops`.

    Per layer the weight matrices run on the T rows, except at the last layer, where the output projection
    and MLP run on the N EOT rows; attention is one [T, T] product each way. Backward computes input
    gradients only, and at the first layer only for the prefix rows (the q/k/v projection's, and the
    queries', keys' and values' of the prefix). Equal to `FlopCounterMode` (tests/test_bench.py).
    """
    d, layers, hidden, embed = _text_tower(backbone)
    n, rows = len(lengths), _shared_rows(n_prefix, lengths)
    per_row = 2 * (d * d + 2 * d * hidden)  # output projection and MLP, each way
    total = 0.0
    for layer in range(layers):
        projected = n if layer == layers - 1 else rows  # rows through the output projection and MLP
        needed = n_prefix if layer == 0 else rows  # rows whose input gradient backward computes
        forward = 2 * rows * 3 * d * d + 4 * rows * rows * d + projected * per_row
        # d_probs (T x T), then d_q, d_k and d_v for the needed rows, and the q/k/v projection's input gradient
        backward = projected * per_row + 2 * rows * rows * d + 3 * 2 * needed * rows * d + 2 * needed * 3 * d * d
        total += forward + backward
    return total + 2 * 2 * n * d * embed


def matmul_flops_per_s(device: torch.device, n: int = 2048, repeats: int = 5,
                       clock: Callable[[], float] = time.perf_counter, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-`repeats` FLOP/s of an n x n matmul in `dtype`: the machine's practical dense-compute limit.
    `clock=time.process_time` times it in CPU seconds (CPU only), as the loops' CPU-time rows are."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
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
