"""Contrastive pretraining of the tiny CLIP on the offline world; writes the committed checkpoint.

Command (the committed checkpoint was made with exactly this, the defaults):

    python -m dualprompt.world.pretrain --steps 1000 --batch-size 128 --seed 0

Measured runtime on a 2-core CPU (no GPU): 0.36 s per step when the machine is otherwise idle (a
30-step run took 10.7 s), so about 6 minutes for the default 1,000 steps, plus about 30 s of
evaluation. The committed checkpoint's run shared its 2 cores with other jobs and recorded
`train_wall_s` 2,889 s in its provenance JSON; the result does not depend on the wall time.

Each step renders a fresh batch of (image, caption) pairs: a random colour-shape pair that is not held
out, a random style, and a caption template of that style (captions name the style). Loss: open_clip's
ClipLoss (symmetric InfoNCE); AdamW with warmup and cosine decay.

Writes, each atomically (temporary file, then rename):
  - `--out` (default `dualprompt/world/tiny-synthetic.safetensors`): the state_dict, loadable by
    `open_clip.create_model("tiny-synthetic", pretrained=<path>)` after registering the config;
  - `<stem>.provenance.json` next to it, written by this script: steps, batch size, seed, wall
    seconds, CPU count, versions, and zero-shot accuracies measured on the saved checkpoint (each
    synthetic dataset's base and new test halves, and held-out pairs).
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

from dualprompt.data.synthetic import GENERATOR_VERSION, SYNTHETIC_SPECS, SYNTHETIC_STYLES
from dualprompt.world import CHECKPOINT_PATH, CONFIG_PATH, TINY_MODEL_NAME, build_tokenizer
from dualprompt.world.render import render
from dualprompt.world.tokenizer import WorldTokenizer
from dualprompt.world.vocab import CAPTION_TEMPLATES, PRETRAIN_COMBOS, STYLES, classname
from dualprompt.world.zero_shot import held_out_accuracies, images_to_tensor

# The hand-crafted template that matches each dataset's style: the gap between it and the
# dataset's own "a photo of a {}." on base classes is room that prompt tuning can win.
STYLE_MATCHED_TEMPLATES: dict[str, str] = {"blurry": "a blurry photo of a {}.", "sketch": "a sketch of a {}."}
MAX_FILLER_WORDS = 16  # soft prompts of up to 16 tokens put class words at positions up to ~20
WARMUP_STEPS = 50


def caption_batch(rng: np.random.Generator, batch_size: int) -> tuple[list, list[str]]:
    """Render `batch_size` fresh (image, caption) pairs from the non-held-out pairs, all styles.

    Half of the captions get 1..16 leading placeholder words "x" (the word CoOp-style prompt
    learners write for soft context), so that the text tower also learns the positions a long
    soft prompt pushes the class name and end token to.
    """
    images, captions = [], []
    for _ in range(batch_size):
        colour, shape = PRETRAIN_COMBOS[rng.integers(len(PRETRAIN_COMBOS))]
        style = STYLES[rng.integers(len(STYLES))]
        templates = CAPTION_TEMPLATES[style]
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
        images, captions = caption_batch(rng, args.batch_size)
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
    """Zero-shot accuracies (percent) of the checkpoint as loaded back, through the project's own
    zero-shot method: each synthetic dataset's base and new test halves with its catalogue template
    and with the style-matched one, and photos of the held-out pairs."""
    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment

    cfg = Config().replace(pretrained=str(checkpoint), method="zeroshot", data_root=str(data_root),
                           use_feature_cache=False)
    backbone = load_backbone(cfg.backbone)
    experiment = Experiment(backbone)
    results: dict = {"held_out_photo": held_out_accuracies(backbone.model, backbone.tokenizer)}
    for name, spec in SYNTHETIC_SPECS.items():
        matched = STYLE_MATCHED_TEMPLATES[SYNTHETIC_STYLES[name]]
        plain = experiment.run(cfg.replace(dataset=name), "final").metrics
        styled = experiment.run(cfg.replace(dataset=name, template=matched), "final").metrics
        results[name] = {
            "template": spec.template,
            "base": plain["acc_test_base"],
            "new": plain["acc_test_new"],
            "style_matched_template": matched,
            "base_style_matched": styled["acc_test_base"],
            "new_style_matched": styled["acc_test_new"],
        }
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
        f"--lr {args.lr} --seed {args.seed}",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
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
