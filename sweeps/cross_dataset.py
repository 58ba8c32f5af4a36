"""Cross-dataset transfer sweep: one prompt trained on the source, evaluated untouched on every target.

    python sweeps/cross_dataset.py --num-samples 16                 # the offline world's miniature
    python sweeps/cross_dataset.py --smoke
    python sweeps/cross_dataset.py --data-root ~/data --backbone ViT-B-16 --pretrained openai \\
        --gpus-per-trial 1 --address auto --storage-path s3://bucket/sweeps --num-samples 32

The field's protocol (CoCoOp; CoOp's xd_train.sh / xd_test.sh): train on ImageNet with all 1,000 classes and
16 shots (seeds 1-3), then evaluate the saved prompt on the other ten datasets' test sets with all their
classes; report each and their mean. The search never sees a target: it holds out half of the source's
classes and scores the HM of their accuracy and the trained half's validation accuracy.
"""

import sys

from dualprompt.sweep_cli import SweepDeclaration, main

SWEEP = SweepDeclaration(protocol="cross_dataset", description=__doc__.split("\n\n")[0],
                         baselines=("zeroshot", "coop", "kgcoop"), validate_top_offline=2)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
