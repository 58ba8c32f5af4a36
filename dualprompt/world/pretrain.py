"""Contrastive pretraining of the tiny CLIP on the offline world; writes the committed checkpoint.

The committed checkpoint (world version 3.1) was made in two recorded stages (its provenance JSON records
both commands, the first stage's record nested under "init"):

    python -m dualprompt.world.pretrain --steps 1000 --seed 3 --weight-decay-on matrices --out s1_seed3.safetensors
    python -m dualprompt.world.pretrain --init s1_seed3.safetensors --steps 400 --lr 0.0003 \
        --synonym-prob 0.004 --seed 1 --weight-decay-on matrices

Stage one learns the world from captions with the shapes' common words only ("a blurry photo of a red
circle."); stage two continues it with the rare synonyms that the datasets' class names use ("red disc")
in 0.4% of captions, as names met a few times, late, by a model that already knows the objects (one
from-scratch stage with the synonyms mixed in throughout varied too much between pretraining seeds:
docs/offline-world.md).

`--weight-decay-on matrices` leaves gains, biases and the logit scale undecayed, as open_clip's training
does (the committed recipe; the default, `all`, is version 3's first checkpoint's, so that every recorded
command reproduces its checkpoint). `--synonym-schedule balanced` gives every shape the same number of
synonym captions, with its colours and styles spread evenly, instead of a coin flip per caption (measured,
not used: docs/offline-world.md).

Measured runtime on a 2-core CPU (no GPU): about 0.5 s per step on two threads (about 9 minutes for
1,000 steps), plus a minute or two of evaluation; the provenance JSON records the wall time of each
stage (the result does not depend on it).

Each step renders a fresh batch of (image, caption) pairs: a random colour-shape pair (all 144 are seen,
as real CLIP has seen the benchmarks' classes), a random style, and a caption template of that style
(captions name the style). Loss: open_clip's ClipLoss (symmetric InfoNCE); AdamW with warmup and cosine
decay, restarted in each stage.

Writes, each atomically (temporary file, then rename):
  - `--out` (default `dualprompt/world/tiny-synthetic.safetensors`): the state_dict, loadable by
    `open_clip.create_model("tiny-synthetic", pretrained=<path>)` after registering the config;
  - `<stem>.provenance.json` next to it, written by this script: the command, steps, batch size, seed,
    wall seconds, CPU count, versions, the provenance of the `--init` checkpoint, and zero-shot
    accuracies measured on the saved checkpoint with the datasets' class names (each base-to-new
    dataset's base and new test halves with "a photo of a {}." and with the style's own template, the
    cross-dataset source and the domain-generalisation targets, and per style among all 144 classes),
    with the digest of the classes they were measured on.

`--rescore` trains nothing: after the datasets' classes change (not the model), it re-measures those
zero-shot accuracies of the checkpoint and rewrites them into its provenance, naming itself there.
"""

from __future__ import annotations

import argparse
import hashlib
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
from dualprompt.world.vocab import (
    CAPTION_TEMPLATES,
    COLOURS,
    PRETRAIN_COMBOS,
    SHAPES,
    STYLE_MATCHED_TEMPLATES,
    STYLES,
    classname,
    common_name,
)
from dualprompt.world.zero_shot import dataset_accuracy, images_to_tensor, style_accuracies

MAX_FILLER_WORDS = 16  # soft prompts of up to 16 tokens put class words at positions up to ~20
WARMUP_STEPS = 50
# Options added after the first recorded checkpoints: a recorded command names one only when it differs
# from this default, so that every older record stays the exact command that made its checkpoint.
OPTION_DEFAULTS = {"synonym_schedule": "random", "weight_decay_on": "all"}


def caption_batch(
    rng: np.random.Generator, batch_size: int, plain_caption_prob: float = 0.0, synonym_prob: float = 0.0,
    scheduled: dict[int, tuple[str, str, str]] | None = None,
) -> tuple[list, list[str]]:
    """Render `batch_size` fresh (image, caption) pairs of all colour-shape pairs, all styles.

    A caption names the shape by its rare synonym (the datasets' class name) with probability
    `synonym_prob`, else by its common word (with 0 no draw is made, so the random stream is the one of
    captions without synonyms). With probability `plain_caption_prob` an image of a style other than
    photo gets a photo caption instead of its own style's (the web's captions do not always name the
    style). Half of the captions get 1..16 leading placeholder words "x" (the word CoOp-style prompt
    learners write for soft context), so that the text tower also learns the positions a long soft
    prompt pushes the class name and end token to.

    `scheduled` (with `synonym_prob` 0) instead names by synonym exactly the captions at these positions
    of the batch, each with its given (colour, shape, style): a `synonym_schedule` step.
    """
    images, captions = [], []
    for _ in range(batch_size):
        colour, shape = PRETRAIN_COMBOS[rng.integers(len(PRETRAIN_COMBOS))]
        style = STYLES[rng.integers(len(STYLES))]
        templates = CAPTION_TEMPLATES[style]
        if plain_caption_prob and style != "photo" and rng.random() < plain_caption_prob:
            templates = CAPTION_TEMPLATES["photo"]
        rare = synonym_prob > 0 and rng.random() < synonym_prob
        if scheduled is not None and len(images) in scheduled:  # after the draws: the stream stays aligned
            rare, (colour, shape, style) = True, scheduled[len(images)]
            templates = CAPTION_TEMPLATES[style]
        name = classname(colour, shape) if rare else common_name(colour, shape)
        caption = templates[rng.integers(len(templates))].format(name)
        if rng.random() < 0.5:
            caption = "x " * int(rng.integers(1, MAX_FILLER_WORDS + 1)) + caption
        images.append(render(colour, shape, style, rng))
        captions.append(caption)
    return images, captions


def synonym_captions_per_shape(synonym_prob: float, steps: int, batch_size: int) -> int:
    """A balanced stage's synonym captions per shape: as many as the coin flip gives on average."""
    return round(synonym_prob * steps * batch_size / len(SHAPES))


def synonym_schedule(seed: int, synonym_prob: float, steps: int, batch_size: int
                     ) -> dict[int, dict[int, tuple[str, str, str]]]:
    """The rare-name captions of a balanced stage: step -> {position in the batch: (colour, shape, style)}.

    As many as `synonym_prob` gives on average (round(synonym_prob * steps * batch_size / 12) per shape),
    but each shape gets exactly that many, its colours and styles spread evenly (each at most one more
    than another), at positions drawn uniformly over the stage; the coin flip leaves which colours and
    styles carry each of the ~17 names to chance. Measured (docs/offline-world.md, the crossed seeds): it
    does not make knowledge guidance's gain steady over pretraining seeds.
    """
    rng = np.random.default_rng([seed, 1])  # its own stream: the captions' draws stay those of --seed
    per_shape = synonym_captions_per_shape(synonym_prob, steps, batch_size)
    slots = rng.choice(steps * batch_size, size=per_shape * len(SHAPES), replace=False)
    combos = []
    for shape in SHAPES:  # whole shuffled rounds of the colours (styles), cut to per_shape
        colours = [c for _ in range(per_shape // len(COLOURS) + 1) for c in rng.permutation(list(COLOURS))]
        styles = [t for _ in range(per_shape // len(STYLES) + 1) for t in rng.permutation(list(STYLES))]
        combos += [(str(c), shape, str(t)) for c, t in zip(colours[:per_shape], styles[:per_shape], strict=True)]
    schedule: dict[int, dict[int, tuple[str, str, str]]] = {}
    for slot, index in zip(slots, rng.permutation(len(combos)), strict=True):
        schedule.setdefault(int(slot) // batch_size, {})[int(slot) % batch_size] = combos[index]
    return schedule


def optimizer_groups(model: torch.nn.Module, weight_decay_on: str) -> list[dict]:
    """AdamW's parameter groups: weight decay on every parameter ("all", version 3's first checkpoint) or on
    the weight matrices only ("matrices", the committed recipe: not on gains, biases and the logit scale, as
    open_clip's training)."""
    if weight_decay_on == "all":
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    undecayed = {n for n, p in named if p.ndim < 2 or any(w in n for w in ("bn", "ln", "bias", "logit_scale"))}
    return [{"params": [p for n, p in named if n not in undecayed]},
            {"params": [p for n, p in named if n in undecayed], "weight_decay": 0.0}]


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warmup over WARMUP_STEPS, then cosine decay to zero."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: torch.nn.Module, tokenizer: WorldTokenizer, args: argparse.Namespace) -> float:
    """Run the contrastive loop in place; returns the mean loss of the last 50 steps."""
    rng = np.random.default_rng(args.seed)
    optimizer = torch.optim.AdamW(optimizer_groups(model, args.weight_decay_on), lr=args.lr, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    mean, std = model.visual.image_mean, model.visual.image_std
    recent: list[float] = []
    schedule = (synonym_schedule(args.seed, args.synonym_prob, args.steps, args.batch_size)
                if args.synonym_schedule == "balanced" else None)
    coin_prob = args.synonym_prob if schedule is None else 0.0  # a balanced stage flips no coin
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        images, captions = caption_batch(rng, args.batch_size, args.plain_caption_prob, coin_prob,
                                         (schedule or {}).get(step))
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
    and per style, 144-way among all classes."""
    from dualprompt.backbone import load_backbone
    from dualprompt.config import Config
    from dualprompt.experiment import Experiment

    cfg = Config().replace(pretrained=str(checkpoint), method="zeroshot", data_root=str(data_root),
                           use_feature_cache=False)
    backbone = load_backbone(cfg.backbone)
    experiment = Experiment(backbone)
    results: dict = {"all_144_classes_by_style": style_accuracies(backbone.model, backbone.tokenizer)}
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


def classes_digest() -> str:
    """SHA-256 of every synthetic dataset's class names in label order: which classes the zero-shot
    accuracies of a provenance record were measured on."""
    names = {name: list(dataset.classnames) for name, dataset in sorted(DATASETS.items())}
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()


def zero_shot_record(checkpoint: Path, data_root: Path | None) -> dict:
    """The provenance fields of the zero-shot measurement: the accuracies (`measure_zero_shot`, datasets
    materialised in `data_root` or a temporary folder) and the digest of the classes they were measured on."""
    with tempfile.TemporaryDirectory() as scratch:
        accuracies = measure_zero_shot(checkpoint, data_root or Path(scratch))
    return {"zero_shot_accuracy_percent": accuracies, "zero_shot_classes_digest": classes_digest()}


def rescore(args: argparse.Namespace) -> None:
    """Re-measure the zero-shot accuracies of the checkpoint at --out on this version's datasets (after a
    change of their classes, not of the model) and rewrite them into its provenance, which keeps its
    training record and says which command re-measured them."""
    record_path = provenance_path(args.out)
    record = json.loads(record_path.read_text())
    record.update(zero_shot_record(args.out, args.data_root))
    record["zero_shot_rescored_by"] = "python -m dualprompt.world.pretrain --rescore"
    write_atomically(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(json.dumps(record["zero_shot_accuracy_percent"], indent=2))


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
    parser.add_argument("--synonym-prob", type=float, default=0.0,
                        help="probability that a caption names the shape by its rare synonym (default 0)")
    parser.add_argument("--synonym-schedule", choices=("random", "balanced"),
                        default=OPTION_DEFAULTS["synonym_schedule"],
                        help="random: each caption flips its own coin (the committed recipe); balanced: the same "
                             "number of synonym captions for every shape, colours and styles spread evenly")
    parser.add_argument("--weight-decay-on", choices=("all", "matrices"), default=OPTION_DEFAULTS["weight_decay_on"],
                        help="AdamW's weight decay on every parameter (default: version 3's first checkpoint) or "
                             "on weight matrices only, not gains, biases and the logit scale (open_clip's "
                             "training; the committed checkpoint)")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this checkpoint of the same model (a first stage), not from scratch")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH, help="checkpoint path (.safetensors)")
    parser.add_argument("--rescore", action="store_true",
                        help="train nothing: re-measure the zero-shot accuracies of --out on this version's "
                             "datasets and rewrite them into its provenance (after their classes change)")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="eval datasets go here (default: a temporary folder)"
    )
    args = parser.parse_args()
    for flag, value in (("--plain-caption-prob", args.plain_caption_prob), ("--synonym-prob", args.synonym_prob)):
        if not 0.0 <= value <= 1.0:
            parser.error(f"{flag} is a probability; give a value in [0, 1], not {value}.")
    if args.synonym_schedule == "balanced" and synonym_captions_per_shape(args.synonym_prob, args.steps,
                                                                          args.batch_size) < 1:
        parser.error(f"--synonym-schedule balanced: --synonym-prob {args.synonym_prob} over {args.steps} steps of "
                     f"{args.batch_size} gives no synonym caption per shape; raise --synonym-prob or --steps.")
    if args.steps < 1 or args.batch_size < 2:
        parser.error("--steps must be >= 1 and --batch-size >= 2 (a contrastive batch needs negatives).")
    if args.rescore:
        missing = next((path for path in (args.out, provenance_path(args.out)) if not path.is_file()), None)
        if missing is not None:
            parser.error(f"--rescore: {missing} does not exist; it needs the checkpoint (--out) and the "
                         "provenance record next to it, so pretrain first.")
    if args.init is not None:
        if not args.init.is_file():
            parser.error(f"--init {args.init}: no such checkpoint file; give the .safetensors of a first stage.")
        if args.init.resolve() == args.out.resolve():
            parser.error(f"--init and --out are the same file ({args.out}); write the second stage elsewhere.")
    return args


def load_init(model: torch.nn.Module, path: Path) -> dict | None:
    """Load the first stage's weights into `model`; returns that checkpoint's provenance record, if any.

    Raises ValueError naming the file when its tensors do not fit the model (another vocabulary or size)."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"--init {path} does not fit the tiny CLIP of this world ({first_line}); "
                         "pretrain the first stage with this version of the world.") from None
    record = provenance_path(path)
    return json.loads(record.read_text()) if record.is_file() else None


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this stage (--out and --data-root left out: they say where, not what)."""
    command = (f"python -m dualprompt.world.pretrain --steps {args.steps} --batch-size {args.batch_size} "
               f"--lr {args.lr} --seed {args.seed} --plain-caption-prob {args.plain_caption_prob} "
               f"--synonym-prob {args.synonym_prob}")
    for name, default in OPTION_DEFAULTS.items():
        value = getattr(args, name)
        command += f" --{name.replace('_', '-')} {value}" if value != default else ""
    return command + (f" --init {args.init}" if args.init is not None else "")


def main() -> None:
    args = parse_args()
    if args.rescore:
        return rescore(args)
    torch.manual_seed(args.seed)
    open_clip.add_model_config(CONFIG_PATH)
    model = open_clip.create_model(TINY_MODEL_NAME, output_dict=True)
    try:
        init_record = load_init(model, args.init) if args.init is not None else None
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    start = time.perf_counter()
    final_loss = train(model, build_tokenizer(), args)
    wall_s = time.perf_counter() - start
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomically(args.out, lambda tmp: save_file(state, str(tmp)))
    zero_shot = zero_shot_record(args.out, args.data_root)
    record = {
        "model": TINY_MODEL_NAME,
        "command": command_line(args),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "plain_caption_prob": args.plain_caption_prob,
        "synonym_prob": args.synonym_prob,
        "synonym_schedule": args.synonym_schedule,
        "weight_decay_on": args.weight_decay_on,
        "init": None if args.init is None else {"checkpoint": args.init.name, "provenance": init_record},
        "train_wall_s": round(wall_s, 1),
        "final_loss_mean50": round(final_loss, 4),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
        "python_version": platform.python_version(),
        "generator_version": GENERATOR_VERSION,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **zero_shot,
    }
    write_atomically(provenance_path(args.out), lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
