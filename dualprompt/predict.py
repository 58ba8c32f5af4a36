"""`python -m dualprompt.predict`: classify images with a trained prompt (or the zero-shot hand-crafted one).

    python -m dualprompt.predict --prompt results/base2new/<name>/_prompts/<trial>/<job>.safetensors \\
        --classes "red circle,blue star,green heart" photo1.png photo2.png
    python -m dualprompt.predict --classes-file classes.txt --top-k 3 *.jpg          # zero-shot CLIP
    python -m dualprompt.predict --prompt P.safetensors --dataset synthetic_blurry img.png  # its classes

Prints, per image, the top-k classes with their probabilities (`--json` for one JSON object per image).
The same from Python: `dualprompt.load_prompt(path).classify(images, classnames, top_k)`, or
`dualprompt.saved_prompt.ZeroShotPrompt(backbone, template).classify(...)` without a trained prompt.
Bad input (an unreadable image, no classes, a file that is not a prompt) is one sentence, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DualpromptError, UsageError


def class_names(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The class names to choose among, and the dataset's template when they come from a dataset."""
    given = [bool(args.classes), bool(args.classes_file), bool(args.dataset)]
    if sum(given) != 1:
        raise UsageError("Name the classes once: --classes 'a,b,c', --classes-file FILE (one per line) or "
                         "--dataset NAME (its classes).")
    if args.classes:
        names = [name.strip() for name in args.classes.split(",") if name.strip()]
        template = None
    elif args.classes_file:
        path = Path(args.classes_file)
        if not path.is_file():
            raise UsageError(f"--classes-file {path} does not exist; pass a text file with one class name per line.")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        template = None
    else:
        from .data.catalogue import default_data_root, get_spec
        from .data.readers import load_dataset

        names = list(load_dataset(args.dataset, Path(args.data_root or default_data_root())).classnames)
        template = get_spec(args.dataset).template
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"Classes must be at least two distinct names; got {names!r}.")
    return names, template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.predict", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--prompt", help="a trained prompt (.safetensors, local or s3://); default: zero-shot")
    parser.add_argument("--classes", help="comma-separated class names")
    parser.add_argument("--classes-file", help="a text file with one class name per line")
    parser.add_argument("--dataset", help="use the classes of this dataset (catalogue name or folder:PATH)")
    parser.add_argument("--data-root", help="where --dataset lives; default $DUALPROMPT_DATA_ROOT")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image; default 5")
    parser.add_argument("--template", help="zero-shot template; default the dataset's, else 'a photo of a {}.'")
    parser.add_argument("--backbone", default="tiny-synthetic", help="zero-shot backbone; default the offline CLIP")
    parser.add_argument("--pretrained", default="synthetic", help="zero-shot weights tag or file")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1:
            raise UsageError(f"--top-k must be at least 1; got {args.top_k}.")
        names, dataset_template = class_names(args)
        classifier = _classifier(args, dataset_template)
        predictions = classifier.classify(args.images, names, top_k=args.top_k)
    except DualpromptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for image, top in zip(args.images, predictions, strict=True):
        if args.json:
            print(json.dumps({"image": image, "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}))
        else:
            print(image)
            print("\n".join(f"  {p:6.3f}  {c}" for c, p in top))
    return 0


def _classifier(args: argparse.Namespace, dataset_template: str | None):
    from .saved_prompt import ZeroShotPrompt, load_prompt

    if args.prompt:
        if args.template:
            raise UsageError("--template applies to zero-shot only; a trained prompt brings its own context.")
        return load_prompt(args.prompt, device=args.device)
    from .backbone import load_backbone
    from .config import BackboneConfig

    template = args.template or dataset_template or "a photo of a {}."
    if template.count("{}") != 1:
        raise UsageError(f"--template {template!r} must hold exactly one {{}} where the class name goes.")
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, pretrained=args.pretrained), args.device)
    return ZeroShotPrompt(backbone, template)


if __name__ == "__main__":
    sys.exit(main())
