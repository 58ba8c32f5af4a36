"""`python -m dualprompt`: train and evaluate one job (one method, dataset and seed) and print its metrics.

    python -m dualprompt --set method=coop --set dataset=synthetic_blurry --set epochs=20

Sweeps over many configurations, datasets and seeds run through `python sweeps/base2new.py` instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from .backbone import load_backbone
from .config import Config, ConfigError, parse_assignment
from .data.errors import DataError
from .experiment import STAGES, Experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualprompt", description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--stage", choices=STAGES, default="final", help="final: base/new test; search: pseudo split")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args(argv)
    try:
        cfg = Config().replace(**dict(parse_assignment(pair) for pair in args.set))
        result = Experiment(load_backbone(cfg.backbone, args.device)).run(cfg, args.stage)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {**result.metrics, "steps": result.steps, "final_loss": result.final_loss,
              "train_s": round(result.train_s, 2), "feature_s": round(result.feature_s, 2)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
