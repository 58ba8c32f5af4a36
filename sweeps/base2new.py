"""Base-to-new sweep: leak-free Optuna search of the dual-view method, then a final stage against baselines.

    python sweeps/base2new.py --num-samples 64          # the offline world on a 2-core laptop (README timing)
    python sweeps/base2new.py --num-samples 8           # the quick demo
    python sweeps/base2new.py --smoke                   # 2 trials, tiny budget: checks the whole pipeline
    python sweeps/base2new.py --data-root ~/data --backbone ViT-B-16 --pretrained openai \\
        --gpus-per-trial 1 --address auto --storage-path s3://bucket/sweeps --num-samples 64

Search: each trial is one configuration drawn by multivariate TPE (the defaults first), trained on the
pseudo-base half of every dataset's base classes (both halves in turn with --folds 2), scored by the HM of
pseudo-base validation and pseudo-new accuracy averaged over its jobs; true new classes are never seen.
Final: the best configuration, the dual-view defaults, the next --validate-top configurations (and
--validate-spread more at evenly spaced ranks down to the worst, to measure the objective over its range), the
baselines (zero-shot CLIP, CoOp, KgCoOp; --ablations adds the best configuration with one term only), each
trained on all base classes for every dataset and seed, tested on base and new, its prompt kept.

Writes one Parquet file per trial to results/base2new/<name>/ (or --storage-path/<name>/); rerunning the
same command (same --name) resumes an interrupted sweep. Bad input exits with code 2 before Ray starts.
"""

import sys

from dualprompt.sweep_cli import SweepDeclaration, main

SWEEP = SweepDeclaration(protocol="base2new", description=__doc__.split("\n\n")[0],
                         baselines=("zeroshot", "coop", "kgcoop"))

if __name__ == "__main__":
    sys.exit(main(SWEEP))
