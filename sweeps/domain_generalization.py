"""Domain generalisation sweep: the source prompt on the source's classes in other domains, untouched.

    python sweeps/domain_generalization.py --num-samples 16        # the offline world's miniature
    python sweeps/domain_generalization.py --smoke
    python sweeps/domain_generalization.py --data-root ~/data --backbone ViT-B-16 --pretrained openai \\
        --gpus-per-trial 1 --address auto --storage-path s3://bucket/sweeps --num-samples 32

The field's protocol (CoCoOp): train on ImageNet (all classes, 16 shots, seeds 1-3) and evaluate the saved
prompt on ImageNet-V2, -Sketch, -A and -R (A and R with their 200-class subsets); report each and their
mean. The search holds out half of the source's classes; the variants are never seen.
"""

import sys

from dualprompt.sweep_cli import SweepDeclaration, main

SWEEP = SweepDeclaration(protocol="domain_generalization", description=__doc__.split("\n\n")[0],
                         baselines=("zeroshot", "coop", "kgcoop"), validate_top_offline=2)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
