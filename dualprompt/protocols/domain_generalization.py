"""Domain generalisation (CoCoOp's protocol): the ImageNet prompt on ImageNet-V2, -Sketch, -A and -R.

Train once on the source (ImageNet, all classes, 16 shots, seeds 1-3) and evaluate the same saved prompt,
untouched, on each variant's test images with its own class list (ImageNet-A and -R: their 200-class
subsets, relabelled); report the source, each target and the targets' mean.

Leak-free search: as for cross-dataset transfer, the pseudo split of the source's classes; the variants
are never seen.
"""

from __future__ import annotations

from ..data.synthetic import DOMAIN_GENERALISATION_TARGETS, SOURCE_DATASET
from . import SOURCE_SEARCH, TRANSFER_FINAL, Protocol

PROTOCOL = Protocol(
    name="domain_generalization",
    title="Domain generalisation",
    search=SOURCE_SEARCH,
    final=TRANSFER_FINAL,
    uses_targets=True,
    default_real_datasets=("imagenet",),
    default_real_targets=("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"),
    default_offline_datasets=(SOURCE_DATASET,),
    default_offline_targets=DOMAIN_GENERALISATION_TARGETS,
)
