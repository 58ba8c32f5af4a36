"""`python -m dualprompt`: train and evaluate one job (one method, dataset and seed) and print its metrics.

    python -m dualprompt --set method=coop --set dataset=synthetic_blurry --set epochs=20
    python -m dualprompt --protocol cross_dataset --set dataset=synthetic_source \\
        --targets synthetic_blurry,synthetic_sketch --save-prompt prompt.safetensors

Sweeps over many configurations, datasets and seeds run through `python sweeps/<protocol>.py` instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import DualpromptError


def main(argv: list[str] | None = None) -> int:
    from .protocols import STAGES, all_protocols

    parser = argparse.ArgumentParser(prog="python -m dualprompt", description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--protocol", choices=[p.name for p in all_protocols()], default="base2new",
                        help="which protocol's job; default base2new")
    parser.add_argument("--stage", choices=STAGES, default="final",
                        help="final: the protocol's test evaluation; search: its leak-free validation")
    parser.add_argument("--fold", type=int, default=0, help="pseudo-split fold of a search job (0 or 1)")
    parser.add_argument("--targets", default="", help="comma-separated datasets to evaluate the prompt on untouched")
    parser.add_argument("--save-prompt", metavar="PATH", help="keep the trained prompt here (.safetensors)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args(argv)
    try:
        from .backbone import load_backbone
        from .config import Config, parse_assignment
        from .experiment import Experiment

        cfg = Config().replace(**dict(parse_assignment(pair) for pair in args.set))
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        result = Experiment(load_backbone(cfg.backbone, args.device)).run(
            cfg, args.stage, args.protocol, args.fold, targets, args.save_prompt)
    except DualpromptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {**result.metrics, **result.counts, **result.standard_errors, "steps": result.steps,
              "final_loss": result.final_loss, "train_s": round(result.train_s, 2),
              "feature_s": round(result.feature_s, 2)}
    if result.targets:
        report["targets"] = {name: evaluated.metrics for name, evaluated in result.targets.items()}
    if result.prompt_path:
        report["prompt"] = result.prompt_path
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
