"""How much a tuned prompt could gain on each offline dataset's base classes, from the frozen features alone.

    python -m dualprompt.world.headroom                 # the five base-to-new datasets, 16 shots, seed 1
    python -m dualprompt.world.headroom --pretrained DIR/tiny-synthetic.safetensors   # another checkpoint

A prompt learner only moves the text side of a frozen CLIP: whatever its prompt, its classifier is a linear
one on the frozen image features (the class text features are the weights), so on the base classes it can
do at most what the best such classifier does. The linear probe estimates that from the few-shot budget (an
estimate, not a bound: it sees only the K shots). Per dataset this prints, on the base classes'
test images: zero-shot accuracy with the catalogue template ("a photo of a {}."), zero-shot with the
style's own pretraining template ("a blurry photo of a {}."), and a linear probe (CoOp's linear-probe
baseline: L2-regularised logistic regression on the K-shot training images, its weight chosen on the
few-shot validation images, never on a test image). "headroom" is the probe minus zero-shot: what the
field's CoOp turns into its base-class gain (real CLIP: far above zero-shot on fine-grained datasets).
"beyond the style" is the probe minus the style-matched zero-shot: the part a context can only reach by
fitting the base classes themselves, which is what it loses on new classes in the field's regime.

A second table gives how crowded the class text features are (hand-crafted prompts, catalogue template):
per class set, the cosine of each class's nearest other class, averaged over the classes, and the mean
cosine over all pairs. The closer the nearest class, the more accuracy a small drift of the class features
away from their hand-crafted ones (what knowledge guidance leaves) costs (docs/offline-world.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dualprompt.backbone import Backbone

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 weights tried; the one with the best validation accuracy wins
COLUMNS = ("zero-shot", "style-matched", "linear probe", "headroom", "beyond the style")


def fit_linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, weight_decay: float,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on features x_train [N, E] with labels [N]: weights [E, C], bias [C]."""
    weight = torch.zeros(x_train.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, y_train) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   test: tuple[torch.Tensor, torch.Tensor], n_classes: int) -> tuple[float, float]:
    """Test accuracy (%) of the probe whose weight decay scores best on `val` (ties: the stronger decay,
    listed later), and that weight decay. Each argument is (features [N, E], labels [N])."""
    def score(split: tuple[torch.Tensor, torch.Tensor], model: tuple[torch.Tensor, torch.Tensor]) -> float:
        features, labels = split
        return 100.0 * ((features @ model[0] + model[1]).argmax(dim=1) == labels).float().mean().item()

    fits = []
    for decay in WEIGHT_DECAYS:
        model = fit_linear_probe(*train, n_classes, decay)
        fits.append((score(val, model), decay, model))
    best = max(range(len(fits)), key=lambda i: (fits[i][0], i))
    return score(test, fits[best][2]), fits[best][1]


def class_spacing(features: torch.Tensor) -> tuple[float, float]:
    """Unit class features [C, E] (C >= 2): (mean over classes of the cosine to the nearest other class,
    mean cosine over all pairs of distinct classes)."""
    cosines = features @ features.T  # [C, C]
    others = ~torch.eye(len(features), dtype=torch.bool)
    nearest = cosines.masked_fill(~others, -2.0).max(dim=1).values  # [C]
    return nearest.mean().item(), cosines[others].mean().item()


def dataset_headroom(backbone: Backbone, name: str, data_root: Path, cache_dir: Path | None, shots: int,
                     seed: int) -> dict:
    """The five columns (percent) for one offline base-to-new dataset's base classes, and the spacing of its
    base and new class features (`class_spacing` of each)."""
    from dualprompt.data.readers import load_dataset
    from dualprompt.data.sampling import sample_few_shot, subsample_classes
    from dualprompt.data.synthetic import DATASETS, TEMPLATE
    from dualprompt.evaluate import accuracy
    from dualprompt.experiment import Experiment, eval_image_features
    from dualprompt.features import FeatureStore
    from dualprompt.world.vocab import STYLE_MATCHED_TEMPLATES

    few_shot = sample_few_shot(load_dataset(name, data_root), shots, seed)
    base = subsample_classes(few_shot, "base")
    store = FeatureStore(backbone, cache_dir)

    def split(items) -> tuple[torch.Tensor, torch.Tensor]:
        features = eval_image_features(store, items).float()  # [N, E]
        return F.normalize(features, dim=-1), torch.tensor([item.label for item in items])

    test = split(base.test)
    experiment = Experiment(backbone)
    style = DATASETS[name].styles[0]
    handcrafted = {subset: experiment.handcrafted(classes.classnames, TEMPLATE, ensemble=False)  # [C, E] each
                   for subset, classes in (("base", base), ("new", subsample_classes(few_shot, "new")))}
    matched = experiment.handcrafted(base.classnames, STYLE_MATCHED_TEMPLATES[style], ensemble=False)
    zero_shot = {"zero-shot": accuracy(handcrafted["base"], *test), "style-matched": accuracy(matched, *test)}
    probe, decay = probe_accuracy(split(base.train), split(base.val), test, len(base.classnames))
    spacing = {subset: class_spacing(features) for subset, features in handcrafted.items()}
    return {**zero_shot, "linear probe": probe, "headroom": probe - zero_shot["zero-shot"],
            "beyond the style": probe - zero_shot["style-matched"], "weight_decay": decay, "spacing": spacing}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world.headroom", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", help="comma-separated offline base-to-new datasets (default: all five)")
    parser.add_argument("--shots", type=int, default=16, help="training images per class for the probe (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="few-shot seed (default 1)")
    parser.add_argument("--pretrained", help="checkpoint of the tiny CLIP (default: the committed one)")
    parser.add_argument("--data-root", type=Path, help="data root (default $DUALPROMPT_DATA_ROOT or "
                        "~/.cache/dualprompt/data)")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default $DUALPROMPT_CACHE_DIR or "
                        "~/.cache/dualprompt/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dualprompt.backbone import load_backbone
    from dualprompt.config import BackboneConfig
    from dualprompt.data.catalogue import default_data_root
    from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS, IMAGES_PER_CLASS

    datasets = BASE_TO_NEW_DATASETS
    if args.datasets:
        datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    unknown = [d for d in datasets if d not in BASE_TO_NEW_DATASETS]
    if unknown:
        print(f"--datasets: {', '.join(unknown)} is not an offline base-to-new dataset; use some of "
              f"{', '.join(BASE_TO_NEW_DATASETS)}.", file=sys.stderr)
        return 2
    if not 1 <= args.shots <= IMAGES_PER_CLASS["train"]:
        print(f"--shots: {args.shots} is outside 1..{IMAGES_PER_CLASS['train']}, the training images each class of "
              "the offline world has; use e.g. 16.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    backbone = load_backbone(BackboneConfig(**({"pretrained": args.pretrained} if args.pretrained else {})))
    data_root = args.data_root or default_data_root()
    print(f"Base-class headroom: backbone {backbone.cfg.backbone} ({backbone.cfg.pretrained}); {args.shots} shots, "
          f"seed {args.seed}; test accuracy (percent) on each dataset's base classes\n")
    print(f"| {'dataset':20} | " + " | ".join(f"{c:>16}" for c in COLUMNS) + " |")
    print(f"|{'-' * 22}|" + "|".join("-" * 18 for _ in COLUMNS) + "|")
    results = []
    for name in datasets:
        results.append(dataset_headroom(backbone, name, data_root, args.cache_dir, args.shots, args.seed))
        print(f"| {name:20} | " + " | ".join(f"{results[-1][c]:>16.1f}" for c in COLUMNS) + " |", flush=True)
    if len(results) > 1:
        print(f"| {'Average':20} | " + " | ".join(f"{statistics.fmean(r[c] for r in results):>16.1f}"
                                                for c in COLUMNS) + " |")
    print("\nlinear probe: logistic regression on the few-shot training images, its L2 weight chosen on the "
          "few-shot validation images; headroom = probe - zero-shot; beyond the style = probe - style-matched.")
    print_spacing(datasets, results)
    return 0


def print_spacing(datasets: tuple[str, ...], results: list[dict]) -> None:
    columns = ("nearest, base", "nearest, new", "all pairs, base", "all pairs, new")
    print("\nClass text-feature spacing (hand-crafted prompts, catalogue template): cosine of each class's nearest "
          "other class, mean over the classes; and the mean cosine over all pairs of classes\n")
    print(f"| {'dataset':20} | " + " | ".join(f"{c:>16}" for c in columns) + " |")
    print(f"|{'-' * 22}|" + "|".join("-" * 18 for _ in columns) + "|")
    for name, result in zip(datasets, results, strict=True):
        spacing = result["spacing"]
        values = (spacing["base"][0], spacing["new"][0], spacing["base"][1], spacing["new"][1])
        print(f"| {name:20} | " + " | ".join(f"{v:>16.3f}" for v in values) + " |")


if __name__ == "__main__":
    sys.exit(main())
