"""Cross-dataset transfer (CoCoOp's protocol; CoOp's scripts/cocoop/xd_train.sh and xd_test.sh).

Train once on the source (ImageNet: all 1,000 classes, 16 shots, seeds 1-3) and evaluate the SAME saved
prompt, untouched, on the test sets of the other ten datasets with all their classes; report the source,
each target and the targets' mean.

Leak-free search: the targets are unseen, so a trial trains on the pseudo-base half of the source's classes
and scores the HM of their validation accuracy and the accuracy on the held-out half, which stands in
for classes the prompt was not tuned on. No target image is ever evaluated in the search.
"""

from __future__ import annotations

from ..data.synthetic import BASE_TO_NEW_DATASETS, SOURCE_DATASET
from . import BENCHMARK_DATASETS, SOURCE_SEARCH, TRANSFER_FINAL, Protocol

PROTOCOL = Protocol(
    name="cross_dataset",
    title="Cross-dataset transfer",
    search=SOURCE_SEARCH,
    final=TRANSFER_FINAL,
    uses_targets=True,
    default_real_datasets=("imagenet",),
    default_real_targets=tuple(d for d in BENCHMARK_DATASETS if d != "imagenet"),
    default_offline_datasets=(SOURCE_DATASET,),
    default_offline_targets=BASE_TO_NEW_DATASETS,
)
