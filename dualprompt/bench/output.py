"""The bench's printed tables: (a) against (b), the text step's share of the matmul probe, the memory check."""

from __future__ import annotations

import statistics

from .loops import MEMORY_VARIANTS
from .measure import GIB, MIB


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def print_comparison(runs: dict[str, list[dict]], meta: dict, probe: tuple[float, float | None],
                     probe_name: str) -> None:
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
                            "CPU time": (statistics.median(cpu_rate(b)), probe[1])}, probe_name)


def print_text_share(meta: dict, rates: dict[str, tuple[float, float | None]],
                     probe_name: str) -> None:
    """The text step's FLOPs in each loop, and (b)'s training rate as a share of the matmul probe, by
    each clock: rates = {clock: ((b)'s train steps per second of it, the probe's FLOP per second of it)}."""
    n, flops_a, flops_b, unshared = meta["classes"], meta["flops_a"], meta["flops_b"], meta["flops_b_unshared"]
    prefix, length = meta["prefix_length"], meta["our_length"]
    print(f"\ntext encoder, one forward+backward over {n} classes "
          "(2 FLOPs per frozen weight per token each way, attention 4*L*d per token forward and 2.5x that backward):")
    print(f"  (a) {n} x {meta['full_length']} tokens: {flops_a / 1e9:.3f} GFLOP")
    if prefix:
        how = ("one block-causal attention over all rows, backward to the prefix only (dense_pass.py)"
               if meta["dense"] else "one attention sequence per prompt")
        print(f"  (b) [SOS][ctx] once ({prefix} tokens) + {meta['suffix_rows']} class-name tokens ({n} x up to "
              f"{length - prefix}, no padding), last layer's MLP on the EOT rows only, {how}: "
              f"{flops_b / 1e9:.3f} GFLOP  (a)/(b) = {flops_a / flops_b:.1f}")
    print(f"  (b) without the shared prefix, {n} x {length} tokens: {unshared / 1e9:.3f} GFLOP"
          f"{'' if prefix else f'  (a)/(b) = {flops_a / flops_b:.1f}'}")
    print(f"text step share of the matmul probe = (b)'s train steps/s x the text pass's FLOPs / the {probe_name}'s "
          "FLOP/s (the CPU-time row divides CPU seconds by CPU seconds: with --threads 1 it barely "
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
