"""Contrastive pretraining of the tiny CLIP on the offline world; writes the committed checkpoint.

Command (the committed checkpoint was made with exactly this; its provenance JSON records it):

    python -m dualprompt.world.pretrain --steps 1000 --batch-size 128 --seed 0

Measured runtime on a 2-core CPU (no GPU): 0.36 s per step when the machine is otherwise idle, so about
6 minutes for 1,000 steps, plus about a minute of evaluation; the provenance JSON records the wall time
of the committed run (the result does not depend on it).

Each step renders a fresh batch of (image, caption) pairs: a random colour-shape pair (all 100 are seen,
as real CLIP has seen the benchmarks' classes), a random style, and a caption template of that style
(captions name the style). Loss: open_clip's ClipLoss (symmetric InfoNCE); AdamW with warmup and cosine
decay.

Writes, each atomically (temporary file, then rename):
  - `--out` (default `dualprompt/world/tiny-synthetic.safetensors`): the state_dict, loadable by
    `open_clip.create_model("tiny-synthetic", pretrained=<path>)` after registering the config;
  - `<stem>.provenance.json` next to it, written by this script: the command, steps, batch size, seed,
    wall seconds, CPU count, versions, and zero-shot accuracies measured on the saved checkpoint (each
    base-to-new dataset's base and new test halves with "a photo of a {}." and with the style's own
    template, the cross-dataset source and the domain-generalisation targets, and per style among all
    100 classes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from dualprompt.data.synthetic import (
    BASE_TO_NEW_DATASETS,
    DATASETS,
    DOMAIN_GENERALISATION_TARGETS,
    GENERATOR_VERSION,
    SOURCE_DATASET,
    TEMPLATE,
)
from dualprompt.world import CHECKPOINT_PATH, CONFIG_PATH, TINY_MODEL_NAME, build_tokenizer
from dualprompt.world.render import render
from dualprompt.world.tokenizer import WorldTokenizer
from dualprompt.world.vocab import CAPTION_TEMPLATES, PRETRAIN_COMBOS, STYLE_MATCHED_TEMPLATES, STYLES, classname
from dualprompt.world.zero_shot import dataset_accuracy, images_to_tensor, style_accuracies

MAX_FILLER_WORDS = 16  # soft prompts of up to 16 tokens put class words at positions up to ~20
WARMUP_STEPS = 50


def caption_batch(rng: np.random.Generator, batch_size: int, plain_caption_prob: float = 0.0) -> tuple[list, list[str]]:
    """Render `batch_size` fresh (image, caption) pairs of all colour-shape pairs, all styles.

    With probability `plain_caption_prob` an image of a style other than photo gets a photo caption
    instead of its own style's (the web's captions do not always name the style). Half of the
    captions get 1..16 leading placeholder words "x" (the word CoOp-style prompt learners write for
    soft context), so that the text tower also learns the positions a long soft prompt pushes the
    class name and end token to.
    """
    images, captions = [], []
    for _ in range(batch_size):
        colour, shape = PRETRAIN_COMBOS[rng.integers(len(PRETRAIN_COMBOS))]
        style = STYLES[rng.integers(len(STYLES))]
        templates = CAPTION_TEMPLATES[style]
        if plain_caption_prob and style != "photo" and rng.random() < plain_caption_prob:
            templates = CAPTION_TEMPLATES["photo"]
        caption = templates[rng.integers(len(templates))].format(classname(colour, shape))
        if rng.random() < 0.5:
            caption = "x " * int(rng.integers(1, MAX_FILLER_WORDS + 1)) + caption
        images.append(render(colour, shape, style, rng))
        captions.append(caption)
    return images, captions


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warmup over WARMUP_STEPS, then cosine decay to zero."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: torch.nn.Module, tokenizer: WorldTokenizer, args: argparse.Namespace) -> float:
    """Run the contrastive loop in place; returns the mean loss of the last 50 steps."""
    rng = np.random.default_rng(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    mean, std = model.visual.image_mean, model.visual.image_std
    recent: list[float] = []
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        images, captions = caption_batch(rng, args.batch_size, args.plain_caption_prob)
        out = model(images_to_tensor(images, mean, std), tokenizer(captions))  # dict of features
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as CLIP does
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  mean50 {sum(recent) / len(recent):.3f}", flush=True)
    return sum(recent) / len(recent)


def write_atomically(path: Path, write) -> None:
    """Call `write(temporary_path)`, then rename the result onto `path` (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes files private; these are shared artefacts
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def measure_zero_shot(checkpoint: Path, data_root: Path) -> dict:
    """Zero-shot accuracies (percent) of the checkpoint as loaded back: each base-to-new dataset's base and
    new test halves through the project's own zero-shot method, with the catalogue template and with the
    style's own; the cross-dataset source and the domain-generalisation targets over all their classes;
    and per style, 100-way among all classes."""
    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment

    cfg = Config().replace(pretrained=str(checkpoint), method="zeroshot", data_root=str(data_root),
                           use_feature_cache=False)
    backbone = load_backbone(cfg.backbone)
    experiment = Experiment(backbone)
    results: dict = {"all_100_classes_by_style": style_accuracies(backbone.model, backbone.tokenizer)}
    for name in BASE_TO_NEW_DATASETS:
        style = DATASETS[name].styles[0]
        matched = STYLE_MATCHED_TEMPLATES[style]
        plain = experiment.run(cfg.replace(dataset=name), "final").metrics
        styled = experiment.run(cfg.replace(dataset=name, template=matched), "final").metrics
        results[name] = {
            "template": TEMPLATE,
            "base": plain["acc_test_base"],
            "new": plain["acc_test_new"],
            "style_matched_template": matched,
            "base_style_matched": styled["acc_test_base"],
            "new_style_matched": styled["acc_test_new"],
        }
    for name in (SOURCE_DATASET, *DOMAIN_GENERALISATION_TARGETS):
        results[name] = {"all_classes": dataset_accuracy(backbone, name, data_root)}
    return results


def provenance_path(checkpoint: Path) -> Path:
    """Where the provenance JSON of `checkpoint` lives: `<stem>.provenance.json` next to it."""
    return checkpoint.with_name(f"{checkpoint.stem}.provenance.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128, help="image-caption pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and data")
    parser.add_argument("--plain-caption-prob", type=float, default=0.0,
                        help="probability that a non-photo image gets a photo caption (default 0)")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH, help="checkpoint path (.safetensors)")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="eval datasets go here (default: a temporary folder)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    open_clip.add_model_config(CONFIG_PATH)
    model = open_clip.create_model(TINY_MODEL_NAME, output_dict=True)
    start = time.perf_counter()
    final_loss = train(model, build_tokenizer(), args)
    wall_s = time.perf_counter() - start
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomically(args.out, lambda tmp: save_file(state, str(tmp)))
    with tempfile.TemporaryDirectory() as scratch:
        zero_shot = measure_zero_shot(args.out, args.data_root or Path(scratch))
    record = {
        "model": TINY_MODEL_NAME,
        "command": f"python -m dualprompt.world.pretrain --steps {args.steps} --batch-size {args.batch_size} "
        f"--lr {args.lr} --seed {args.seed} --plain-caption-prob {args.plain_caption_prob}",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "plain_caption_prob": args.plain_caption_prob,
        "train_wall_s": round(wall_s, 1),
        "final_loss_mean50": round(final_loss, 4),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
        "python_version": platform.python_version(),
        "generator_version": GENERATOR_VERSION,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "zero_shot_accuracy_percent": zero_shot,
    }
    write_atomically(provenance_path(args.out), lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
