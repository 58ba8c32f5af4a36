"""The frozen CLIP: loading any open_clip model, and the only code that reaches into its text tower.

Text is encoded from token *embeddings* (so soft context vectors can be spliced in) and stops at the
longest prompt's EOT token instead of running all `context_length` positions. That is exact: CLIP's
text attention is causal, so no position before the EOT token ever attends to the padding after it.
For the same reason prompts that share their first positions (the soft prompt's `[SOS][ctx]`) can run
that prefix once for all of them: `encode_shared_prefix`, with the block math in `shared_prefix.py`
(open_clip's standard text blocks; any other tower goes through open_clip's own modules).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import dense_pass, shared_prefix
from .config import BackboneConfig, ConfigError
from .shared_prefix import SharedPrefixPrompts

RANDOM_INIT_TAG = "random"  # pretrained tag meaning "no weights" (benchmarks, tests)


@dataclass(frozen=True)
class PackagedModel:
    """A model whose open_clip config, weights and tokenizer ship inside this package."""

    config_path: Path
    weights: dict[str, Path]  # pretrained tag -> checkpoint file
    build_tokenizer: Callable[[], Any]


def packaged_models() -> dict[str, PackagedModel]:
    """Models shipped with the package (the offline world's tiny CLIP), keyed by open_clip model name."""
    from . import world

    return {
        world.TINY_MODEL_NAME: PackagedModel(
            config_path=world.CONFIG_PATH,
            weights={world.TINY_PRETRAINED_TAG: world.CHECKPOINT_PATH},
            build_tokenizer=world.build_tokenizer,
        )
    }


def _register_packaged_configs() -> dict[str, PackagedModel]:
    import open_clip

    models = packaged_models()
    for model in models.values():
        if model.config_path.stem not in open_clip.list_models():
            open_clip.add_model_config(model.config_path)
    return models


def validate_backbone_name(cfg: BackboneConfig) -> None:
    """Fail fast, before any weights are read, on a model name or pretrained tag open_clip cannot resolve."""
    import open_clip

    packaged = _register_packaged_configs()
    names = open_clip.list_models()
    if cfg.backbone not in names:
        close = difflib.get_close_matches(cfg.backbone, names, n=3)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ConfigError(f"backbone: {cfg.backbone!r} is not an open_clip model name.{hint}")
    if cfg.pretrained == RANDOM_INIT_TAG or Path(cfg.pretrained).is_file():
        return
    tags = (
        list(packaged[cfg.backbone].weights)
        if cfg.backbone in packaged
        else open_clip.list_pretrained_tags_by_model(cfg.backbone)
    )
    if cfg.pretrained not in tags:
        raise ConfigError(
            f"pretrained: {cfg.pretrained!r} is not a known tag for {cfg.backbone} "
            f"(known: {', '.join(tags) or 'none'}; or give a checkpoint file, or {RANDOM_INIT_TAG!r})."
        )


def load_backbone(cfg: BackboneConfig, device: torch.device | str = "cpu") -> Backbone:
    """Create the open_clip model with its weights and tokenizer, frozen, on `device`."""
    import open_clip

    validate_backbone_name(cfg)
    packaged = packaged_models().get(cfg.backbone)
    if cfg.pretrained == RANDOM_INIT_TAG:
        pretrained = None
    elif packaged is not None and cfg.pretrained in packaged.weights:
        pretrained = str(packaged.weights[cfg.pretrained])
    else:
        pretrained = cfg.pretrained
    model = open_clip.create_model(cfg.backbone, pretrained=pretrained, device=device)
    tokenizer = packaged.build_tokenizer() if packaged else open_clip.get_tokenizer(cfg.backbone)
    # A checkpoint file is named by its content, so features cached from older weights are never reused.
    weights_id = _file_digest(Path(pretrained)) if pretrained and Path(pretrained).is_file() else cfg.pretrained
    return Backbone(model, tokenizer, cfg, weights_id=weights_id)


def text_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The text tower's compute dtype: bf16 (autocast) for `precision=amp` on CUDA, else float32."""
    return torch.bfloat16 if precision == "amp" and device.type == "cuda" else torch.float32


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class Backbone:
    """A frozen open_clip model with prompt-level text encoding, image encoding and preprocessing facts."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: BackboneConfig, weights_id: str = "") -> None:
        from open_clip.model import get_model_preprocess_cfg

        self.cfg = cfg
        self.weights_id = weights_id or cfg.pretrained
        self.model = model.eval().requires_grad_(False)
        # CLIP keeps its text tower's parts on the model itself; CustomTextCLIP keeps them under `.text`.
        self.text = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        self._check_text_tower()
        self.tokenizer = tokenizer
        for attr in ("sot_token_id", "eot_token_id", "encode"):
            if not hasattr(tokenizer, attr):
                raise ConfigError(
                    f"backbone: {cfg.backbone}'s tokenizer has no {attr}; soft prompts need a CLIP-style "
                    "tokenizer with start/end tokens."
                )
        self.transformer.grad_checkpointing = cfg.checkpoint_text
        preprocess = get_model_preprocess_cfg(model)
        size = preprocess.get("size", 224)
        self.image_size: int = size if isinstance(size, int) else size[0]
        self.image_mean: tuple[float, ...] = tuple(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.image_std: tuple[float, ...] = tuple(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.logit_scale: float = float(model.logit_scale.exp().item())
        self.context_length: int = self.text.positional_embedding.shape[0]
        self.token_dim: int = self.text.token_embedding.weight.shape[1]
        # Decided once: whether shared_prefix.py can run this tower's blocks (else open_clip's modules do).
        self.shares_prefix: bool = shared_prefix.supports(self.text)
        # And whether dense_pass.py can run small passes of them (its backward is written for these parts).
        self.dense_text: bool = self.shares_prefix and dense_pass.supports(self.transformer.resblocks)

    def _check_text_tower(self) -> None:
        text = self.text
        ok = text is not None and all(
            hasattr(text, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")
        )
        pool = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
        if not ok or pool not in ("argmax", "eos") or getattr(text, "cls_emb", None) is not None:
            raise ConfigError(
                f"backbone: {self.cfg.backbone} has no causal CLIP text transformer with EOT pooling; "
                "soft prompts need one (e.g. ViT-B-16, ViT-L-14, RN50)."
            )

    @property
    def device(self) -> torch.device:
        return self.text.token_embedding.weight.device

    @property
    def transformer(self) -> nn.Module:
        return self.text.transformer

    def text_autocast(self) -> AbstractContextManager:
        """Autocast of text-tower passes to `text_dtype` (bf16 for `precision=amp` on CUDA); else a no-op."""
        dtype = text_dtype(self.cfg.precision, self.device)
        return nullcontext() if dtype == torch.float32 else torch.autocast(self.device.type, dtype=dtype)

    @property
    def key(self) -> str:
        """Identifies the weights, for feature-cache keys."""
        return f"{self.cfg.backbone}@{self.weights_id}"

    # ---- tokens -------------------------------------------------------------------------------
    def word_ids(self, text: str) -> list[int]:
        """Token ids of `text` without start/end tokens; ConfigError (one sentence) if the tokenizer refuses it
        (the offline world's tiny CLIP knows only the world's words)."""
        try:
            return list(self.tokenizer.encode(text))
        except ValueError as error:
            reason = " ".join(str(error).split()).rstrip(".")
            raise ConfigError(f"classes: {self.cfg.backbone} cannot encode {text!r} ({reason}); use class names its "
                              "tokenizer knows, or a real backbone.") from None

    def prompt_ids(self, words: list[list[int]], n_ctx: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids `[SOS][ctx x n_ctx][words][EOT][pad...]` per prompt, and each prompt's EOT position.

        Returns ids [N, context_length] (ctx positions hold the pad id; they are overwritten by soft
        context vectors) and eot [N].
        """
        ids = torch.zeros(len(words), self.context_length, dtype=torch.long)
        eot = torch.empty(len(words), dtype=torch.long)
        for row, tokens in enumerate(words):
            length = 1 + n_ctx + len(tokens) + 1
            if length > self.context_length:
                raise ConfigError(
                    f"n_ctx: a prompt needs {length} tokens ({n_ctx} context + {len(tokens)} words + 2), "
                    f"but {self.cfg.backbone}'s text tower holds {self.context_length}; lower n_ctx."
                )
            ids[row, 0] = self.tokenizer.sot_token_id
            ids[row, 1 + n_ctx : length - 1] = torch.tensor(tokens, dtype=torch.long)
            ids[row, length - 1] = self.tokenizer.eot_token_id
            eot[row] = length - 1
        return ids.to(self.device), eot.to(self.device)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings: ids [N, L] -> [N, L, token_dim]."""
        return self.text.token_embedding(ids)

    # ---- text ---------------------------------------------------------------------------------
    def encode_embeddings(self, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Text features from prompt embeddings [N, L, D] with EOT positions [N] -> L2-normalised [N, E].

        Runs only the first max(eot)+1 positions (exact under the causal mask). With `text_chunk_size`
        set, prompts go through in chunks, and when gradients flow each chunk is checkpointed as a whole
        (only its output is kept, its activations are recomputed in backward): chunking alone would keep
        every chunk's graph alive until backward and save nothing.
        """
        length = int(eot.max().item()) + 1
        n_prompts = embeddings.shape[0]
        chunk = self.cfg.text_chunk_size or n_prompts
        recompute = chunk < n_prompts and torch.is_grad_enabled()
        parts = []
        for start in range(0, n_prompts, chunk):
            args = (embeddings[start : start + chunk, :length], eot[start : start + chunk])
            if recompute:
                parts.append(torch.utils.checkpoint.checkpoint(self._encode_truncated, *args, use_reentrant=False))
            else:
                parts.append(self._encode_truncated(*args))
        return torch.cat(parts)

    def _encode_truncated(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        text, length = self.text, x.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = x.to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)  # [N, length, D]
        x = self.transformer(x, attn_mask=text.attn_mask[:length, :length])
        return self._project(x[torch.arange(x.shape[0], device=x.device), eot])  # [N, D] at each EOT token

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm (per token, so only the pooled EOT rows need it) and text projection:
        [N, D] -> L2-normalised [N, E]."""
        pooled = self.text.ln_final(pooled)
        projection = self.text.text_projection
        if isinstance(projection, nn.Module):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = pooled @ projection
        return F.normalize(pooled, dim=-1)

    def shared_prefix_prompts(
        self, embeddings: torch.Tensor, eot: torch.Tensor, n_prefix: int, prefix_of: torch.Tensor | None = None
    ) -> SharedPrefixPrompts | None:
        """The frozen part of prompts whose first `n_prefix` positions are the same for every prompt (their
        embeddings are given to `encode_shared_prefix` per call): embeddings [N, L, D] (prefix slots are not
        read), EOT positions [N]; prefix_of [N] when K prefixes share the pass (prompt i starts with prefix
        prefix_of[i]). Build once per class list. None when this tower's blocks are not ones shared_prefix.py
        can run: then encode whole prompts with `encode_embeddings`."""
        if not self.shares_prefix:
            return None
        if int(eot.min()) < n_prefix:
            raise ValueError(f"every EOT token must come after the {n_prefix} shared positions")
        length = int(eot.max()) + 1
        cast_dtype = self.transformer.get_cast_dtype()
        with torch.no_grad():
            positions = self.text.positional_embedding[n_prefix:length].to(cast_dtype)  # [S, D]
            suffix = embeddings[:, n_prefix:length].to(cast_dtype) + positions  # [N, S, D]
        return shared_prefix.build_prompts(suffix, eot - n_prefix, n_prefix, self.cfg.text_chunk_size, prefix_of,
                                           dense=self.dense_text)

    def encode_shared_prefix(self, prefix: torch.Tensor, prompts: SharedPrefixPrompts) -> torch.Tensor:
        """Text features of prompts `[prefix][own positions]`: prefix [P, D] token embeddings shared by all
        (the soft prompt's [SOS][ctx]), or [K, P, D] for K prefixes, prompts from `shared_prefix_prompts`
        -> L2-normalised [N, E].

        Equals `encode_embeddings` of the whole prompts (exact under the causal mask; tests/test_backbone.py)
        with the prefix computed once. `text_chunk_size` and `checkpoint_text` act as they do there.
        """
        cast_dtype = self.transformer.get_cast_dtype()
        positions = self.text.positional_embedding[: prompts.n_prefix].to(cast_dtype)  # [P, D]
        prefix = prefix.to(cast_dtype) + positions  # [P, D] or [K, P, D]
        hidden = shared_prefix.encode(self.transformer.resblocks, prefix, prompts, self.cfg.checkpoint_text)
        return self._project(hidden)  # [N, D] at each EOT token -> [N, E]

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Frozen features of plain-text prompts -> L2-normalised [N, E]."""
        words = [self.word_ids(t) for t in texts]
        ids, eot = self.prompt_ids(words)
        return self.encode_embeddings(self.embed_tokens(ids), eot)

    # ---- images -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen image features: [B, 3, H, W] -> L2-normalised [B, E]."""
        return F.normalize(self.model.encode_image(images.to(self.device)), dim=-1)
