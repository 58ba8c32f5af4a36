"""Few-shot learning (CoOp's protocol): 1, 2, 4, 8 and 16 shots per class, all classes, seeds 1-3.

Each (dataset, shots, seed) job trains on all classes and tests on all of them; tables report accuracy per
dataset and shots, and the mean over datasets, and plot accuracy against shots per method. CoOp trains 50
epochs for 1 shot, 100 for 2 and 4, 200 for 8 and 16: `epochs_for` keeps those ratios to the configured
(16-shot) budget.

Leak-free search: the validation accuracy of the few-shot val images (min(K, 4) per class), which the
training never touches; no test image is seen.
"""

from __future__ import annotations

from ..data.synthetic import BASE_TO_NEW_DATASETS
from . import BENCHMARK_DATASETS, Evaluation, Protocol, Stage

SHOTS = (1, 2, 4, 8, 16)
# CoOp's epochs per shot count relative to its 16-shot budget (200): 50, 100, 100, 200, 200.
EPOCH_FRACTION = {1: 0.25, 2: 0.5, 4: 0.5, 8: 1.0, 16: 1.0}


def epochs_for(epochs: int, shots: int) -> int:
    """The job's epochs: CoOp's fraction of the configured budget for the nearest listed shot count."""
    nearest = min(EPOCH_FRACTION, key=lambda k: (abs(k - shots), k))
    return max(1, round(epochs * EPOCH_FRACTION[nearest]))


PROTOCOL = Protocol(
    name="few_shot",
    title="Few-shot learning",
    search=Stage(
        pool="all",
        train_classes="all",
        evaluations=(Evaluation("acc_val", "all", "val"),),
        objective="acc_val",
    ),
    final=Stage(
        pool="all",
        train_classes="all",
        evaluations=(Evaluation("acc_test", "all", "test"),),
        objective="acc_test",
        saves_prompt=True,
    ),
    sweeps_shots=True,
    epochs_for=epochs_for,
    default_real_datasets=BENCHMARK_DATASETS,
    default_offline_datasets=BASE_TO_NEW_DATASETS,
)
