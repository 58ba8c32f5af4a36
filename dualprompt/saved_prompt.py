"""Trained prompts as artefacts: saved with their configuration and provenance, loadable to classify any classes.

A prompt file is a safetensors file holding one tensor, `ctx` [n_ctx, token_dim] (the learned context
vectors), and text metadata: the format name and version, the job's full flat configuration, provenance
(git commit, package versions, host, time), what it was trained on (protocol, dataset, seed, shots, class
names) and the job's own metrics. It is written atomically to a local path or a URI (s3://...), like the
result rows.

    from dualprompt import load_prompt
    prompt = load_prompt("results/base2new/example/_prompts/final-....safetensors")
    prompt.classify(["photo.png"], ["red circle", "blue star"])   # top-k (class, probability) per image

`ZeroShotPrompt` classifies the same way with a hand-crafted template, the baseline without training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .backbone import Backbone, load_backbone
from .config import Config, ConfigError
from .data.images import read_rgb
from .data.transforms import build_transforms
from .errors import DualpromptError
from .prompt_learner import PromptLearner
from .prompts import fill
from .results import provenance
from .storage import one_line, open_storage, write_bytes_atomically

PROMPT_FORMAT = "dualprompt-prompt"
FORMAT_VERSION = "1"


class PromptFileError(DualpromptError):
    """A prompt file cannot be read or does not fit the backbone it is asked to run on."""


def save_prompt(learner: PromptLearner, cfg: Config, destination: str, trained_on: dict[str, Any],
                metrics: dict[str, float] | None = None) -> str:
    """Write `learner`'s context with `cfg`, provenance, `trained_on` and `metrics`; return the path written."""
    backbone = learner.backbone
    metadata = {
        "format": PROMPT_FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(cfg.portable_flat(), sort_keys=True),
        "weights_id": backbone.weights_id,
        "provenance": json.dumps(provenance(), sort_keys=True, default=str),
        "trained_on": json.dumps(trained_on, sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
    }
    tensor = learner.ctx.detach().float().cpu().contiguous()  # [n_ctx, token_dim]
    write_bytes_atomically(save_safetensors({"ctx": tensor}, metadata), destination)
    return destination


class PromptClassifier:
    """Classifies images among any list of class names by cosine similarity with class text features."""

    backbone: Backbone

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """L2-normalised class features [C, E]."""
        raise NotImplementedError

    @torch.no_grad()
    def image_features(self, images: Sequence[str | Path | Image.Image]) -> torch.Tensor:
        """Frozen image features [N, E] of image files or PIL images, with the protocol's eval transform."""
        backbone = self.backbone
        _, transform = build_transforms(backbone.image_size, backbone.image_mean, backbone.image_std)
        tensors = [transform(image.convert("RGB") if isinstance(image, Image.Image) else read_rgb(image))
                   for image in images]
        return backbone.encode_images(torch.stack(tensors)).float()

    @torch.no_grad()
    def probabilities(self, images: Sequence[str | Path | Image.Image], classnames: Sequence[str]) -> torch.Tensor:
        """Class probabilities [N, C]: softmax of CLIP's logit scale times the cosine similarities."""
        if not classnames:
            raise ConfigError("classes: no class names given; pass at least two, e.g. 'cat,dog'.")
        text = self.text_features(list(classnames)).float()  # [C, E]
        logits = self.backbone.logit_scale * self.image_features(images) @ text.T  # [N, C]
        return logits.softmax(dim=-1)

    def classify(self, images: Sequence[str | Path | Image.Image], classnames: Sequence[str],
                 top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the `top_k` most probable (class name, probability) pairs, most probable first."""
        probs = self.probabilities(images, classnames)
        values, indices = probs.topk(min(top_k, len(classnames)), dim=-1)
        return [[(classnames[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
                for row_p, row_i in zip(values, indices, strict=True)]


@dataclass
class TrainedPrompt(PromptClassifier):
    """A loaded prompt file bound to its backbone: `learner(classnames)` gives the soft-prompt features."""

    learner: PromptLearner
    config: Config
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> Backbone:  # type: ignore[override]
        return self.learner.backbone

    @torch.no_grad()
    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        return self.learner(tuple(classnames))


@dataclass
class ZeroShotPrompt(PromptClassifier):
    """The hand-crafted prompt ("a photo of a {}." by default) on a frozen backbone: no training."""

    backbone: Backbone
    template: str = "a photo of a {}."

    @torch.no_grad()
    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_texts([fill(self.template, name) for name in classnames])


def load_prompt(
    path: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None
) -> TrainedPrompt:
    """Read a prompt file (local path or URI) and bind it to its backbone, loaded here unless one is given.

    Raises PromptFileError (one sentence) for a file that is not a dualprompt prompt, was written by a newer
    format, or does not fit `backbone` (another model or other weights).
    """
    text = str(path)
    tensors, metadata = _read(text)
    try:
        cfg = Config.from_flat(json.loads(metadata["config"]))
    except (KeyError, ValueError) as error:
        raise PromptFileError(f"{text} has no readable configuration ({error}); it was not written by "
                              "dualprompt.save_prompt, or is damaged: use the prompt file a sweep wrote.") from None
    recorded, given = metadata.get("weights_id"), backbone is not None
    if not given:
        backbone = load_backbone(cfg.backbone, device)
    # The same name and tag can load other weights later (a retrained offline CLIP, a replaced file); a file
    # that records no weights is checked against a given backbone only.
    if backbone.cfg.backbone != cfg.backbone.backbone or (backbone.weights_id != recorded and (recorded or given)):
        now = (f"the given {backbone.cfg.backbone} has weights" if given
               else f"{cfg.backbone.backbone} ({cfg.backbone.pretrained}) now loads weights")
        fix = ("load it with its own backbone (backbone=None)" if given
               else "load it with a backbone built from the checkpoint it was trained on (backbone=...)")
        raise PromptFileError(f"{text} was trained on {cfg.backbone.backbone} with weights {recorded!r}, but {now} "
                              f"{backbone.weights_id!r}; {fix}.")
    ctx = tensors["ctx"]
    if ctx.ndim != 2 or ctx.shape != (cfg.prompt.n_ctx, backbone.token_dim):
        raise PromptFileError(f"{text} holds a context of shape {tuple(ctx.shape)} where "
                              f"{(cfg.prompt.n_ctx, backbone.token_dim)} fits {cfg.backbone.backbone}; the file is "
                              "damaged or edited: use the prompt file a sweep wrote.")
    learner = PromptLearner(backbone, cfg.prompt)
    with torch.no_grad():
        learner.ctx.copy_(ctx.to(learner.ctx.device, learner.ctx.dtype))
    return TrainedPrompt(learner=learner, config=cfg, trained_on=json.loads(metadata.get("trained_on", "{}")),
                         metrics=json.loads(metadata.get("metrics", "{}")),
                         provenance=json.loads(metadata.get("provenance", "{}")))


def _read(text: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    fs, inner = open_storage(text)
    try:
        with fs.open_input_stream(inner) as stream:
            data = stream.read()
    except FileNotFoundError:
        raise PromptFileError(f"Cannot read prompt file {text}: it does not exist; pass the path of a prompt a "
                              "sweep wrote (its final rows name it in column prompt_file).") from None
    except OSError as error:
        raise PromptFileError(f"Cannot read prompt file {text} ({one_line(error)}); check the path and its "
                              "permissions.") from None
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{text} is not a safetensors prompt file ({error}); pass a .safetensors "
                              "file written by a dualprompt sweep.") from None
    if metadata.get("format") != PROMPT_FORMAT or "ctx" not in tensors:
        raise PromptFileError(f"{text} is a safetensors file but not a dualprompt prompt (no "
                              f"format={PROMPT_FORMAT!r} and ctx tensor); pass a prompt file a sweep wrote.")
    if int(metadata.get("format_version", "0")) > int(FORMAT_VERSION):
        raise PromptFileError(f"{text} uses prompt format version {metadata['format_version']}, newer than this "
                              f"dualprompt reads ({FORMAT_VERSION}); upgrade dualprompt to load it.")
    return tensors, metadata
