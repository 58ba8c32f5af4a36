"""Base-to-new generalisation (CoCoOp's protocol, every paper's main table).

Train on the base classes (the first ceil(n/2) sorted labels) with K = 16 shots per class, test on the base
test images and, with the same context, on the new classes' test images: two closed-set problems whose
harmonic mean is the headline; a benchmark's Average row is the HM of the dataset-averaged base and new
accuracies. Seeds 1, 2, 3.

Leak-free search: inside the base classes, train on the pseudo-base half and score the HM of pseudo-base
validation accuracy and pseudo-new accuracy (the few-shot train and val images of classes never trained
on). The true new classes and every test image stay unseen. With two folds each half is held out once.

The final stage also scores the new-class test images in two halves (the first ceil(n/2) new labels and the
rest, still classified among all new classes): how alike the halves rank configurations says how much of the
final result depends on which classes are new, which no leak-free objective can see
(`validity.leak_free_ceiling`). Only the first two evaluations make the headline HM.
"""

from __future__ import annotations

from ..data.synthetic import BASE_TO_NEW_DATASETS
from . import BENCHMARK_DATASETS, Evaluation, Protocol, Stage, pseudo_split_search

PROTOCOL = Protocol(
    name="base2new",
    title="Base-to-new generalisation",
    search=pseudo_split_search("base"),
    final=Stage(
        pool="base",
        train_classes="base",
        evaluations=(Evaluation("acc_test_base", "base", "test"), Evaluation("acc_test_new", "new", "test"),
                     Evaluation("acc_test_new_first_half", "new", "test", images_of="first_half"),
                     Evaluation("acc_test_new_second_half", "new", "test", images_of="second_half")),
        objective="hm_test",
        saves_prompt=True,
    ),
    default_real_datasets=BENCHMARK_DATASETS,
    default_offline_datasets=BASE_TO_NEW_DATASETS,
)
