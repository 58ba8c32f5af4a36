"""Few-shot sweep: accuracy against 1, 2, 4, 8 and 16 shots per class, all classes, per dataset and averaged.

    python sweeps/few_shot.py --num-samples 16                       # the offline world's datasets
    python sweeps/few_shot.py --smoke
    python sweeps/few_shot.py --data-root ~/data --backbone ViT-B-16 --pretrained openai \\
        --gpus-per-trial 1 --address auto --storage-path s3://bucket/sweeps --num-samples 32

The field's protocol (CoOp): for every dataset, shot count and seed (1-3), train on all classes and test on
all of them; CoOp trains 50 epochs for 1 shot, 100 for 2 and 4, 200 for 8 and 16 (the same ratios to the
configured budget here). The search scores validation accuracy (min(K, 4) images per class, never trained
on) at --search-shots (default: the largest); no test image is seen.
"""

import sys

from dualprompt.sweep_cli import SweepDeclaration, main

SWEEP = SweepDeclaration(protocol="few_shot", description=__doc__.split("\n\n")[0],
                         baselines=("zeroshot", "coop", "kgcoop"), validate_top_offline=2)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
