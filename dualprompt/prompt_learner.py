"""The soft prompt (view 1): M shared context vectors placed before each class name."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import PromptConfig
from .shared_prefix import SharedPrefixPrompts


class PromptLearner(nn.Module):
    """Learnable context `[SOS][ctx_1..ctx_M][class name][.][EOT]`, shared by every class.

    Only `ctx` trains. The class names are an argument of `forward`, not part of the state, so a
    context tuned on base classes classifies any other list of names (new classes) unchanged.
    """

    def __init__(self, backbone: Backbone, cfg: PromptConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # A plain attribute, not a submodule: the frozen CLIP is not part of the learner's state_dict.
        self.__dict__["backbone"] = backbone
        self.n_ctx = cfg.n_ctx
        self.ctx = nn.Parameter(self._initial_context(cfg, generator))  # [M, token_dim]
        self._class_tokens: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._class_suffixes: dict[tuple[str, ...], SharedPrefixPrompts | None] = {}
        backbone.prompt_ids([[0]], n_ctx=self.n_ctx)  # fail now if even a one-word prompt cannot fit

    def _initial_context(self, cfg: PromptConfig, generator: torch.Generator | None) -> torch.Tensor:
        """Word embeddings of `ctx_init`, right-aligned so the prompt ends in "... a photo of a {class}.";
        positions the words do not cover (or all, without init words) are drawn from N(0, 0.02^2), or with
        `ctx_fill="words"` hold the words again, repeated leftwards. The draws are made either way, so the
        generator's stream does not depend on the fill."""
        backbone = self.backbone
        ctx = torch.randn(cfg.n_ctx, backbone.token_dim, generator=generator) * 0.02  # [M, D]
        if cfg.ctx_init.strip():
            words = backbone.word_ids(cfg.ctx_init)
            covered = cfg.n_ctx if cfg.ctx_fill == "words" else min(cfg.n_ctx, len(words))
            # Position M - 1 - i holds word W - 1 - (i mod W): the phrase, right-aligned, then again to its left.
            ids = torch.tensor([words[-1 - (i % len(words))] for i in reversed(range(covered))], dtype=torch.long,
                               device=backbone.device)
            with torch.no_grad():
                ctx[cfg.n_ctx - covered :] = backbone.embed_tokens(ids).float().cpu()
        return ctx.to(backbone.device)

    def _frozen_tokens(self, classnames: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [C, L, D] of the prompts with ctx slots left to fill, and EOT positions [C]; cached."""
        if classnames not in self._class_tokens:
            words = [self.backbone.word_ids(name + ".") for name in classnames]
            ids, eot = self.backbone.prompt_ids(words, n_ctx=self.n_ctx)
            with torch.no_grad():
                self._class_tokens[classnames] = (self.backbone.embed_tokens(ids), eot)
        return self._class_tokens[classnames]

    def _frozen_suffixes(self, classnames: tuple[str, ...]) -> SharedPrefixPrompts | None:
        """What follows `[SOS][ctx]` in every prompt, ready for `Backbone.encode_shared_prefix`; cached.
        None when the backbone's text tower cannot share the prefix."""
        if classnames not in self._class_suffixes:
            embeddings, eot = self._frozen_tokens(classnames)
            self._class_suffixes[classnames] = self.backbone.shared_prefix_prompts(embeddings, eot, 1 + self.n_ctx)
        return self._class_suffixes[classnames]

    def forward(self, classnames: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Soft-prompt text features for these classes: L2-normalised [C, E]."""
        classnames = tuple(classnames)
        embeddings, eot = self._frozen_tokens(classnames)  # [C, L, D], [C]
        suffixes = self._frozen_suffixes(classnames)
        if suffixes is not None:
            # [SOS][ctx] is the same in every prompt: under the causal mask it runs once for all classes.
            prefix = torch.cat([embeddings[0, :1], self.ctx.to(embeddings.dtype)])  # [1 + M, D]
            return self.backbone.encode_shared_prefix(prefix, suffixes)
        n_cls = embeddings.shape[0]
        ctx = self.ctx.to(embeddings.dtype).unsqueeze(0).expand(n_cls, -1, -1)  # [C, M, D]
        prompts = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + self.n_ctx :]], dim=1)  # [C, L, D]
        return self.backbone.encode_embeddings(prompts, eot)


class JointPrompts:
    """Several learners' soft prompts (one backbone, one context length) encoded in one text pass.

    A trial's jobs each tune their own `ctx` on their own classes; one pass over all their classes pays the
    per-op cost once instead of once per job. Each job's `[SOS][ctx]` is the prefix of its own classes only
    (`shared_prefix.py`, several prefixes), so each job's features equal its own pass's up to round-off.
    """

    def __init__(self, learners: list[PromptLearner], classnames: list[tuple[str, ...]]) -> None:
        backbone, n_ctx = learners[0].backbone, learners[0].n_ctx
        if any(learner.backbone is not backbone or learner.n_ctx != n_ctx for learner in learners):
            raise ValueError("jointly encoded prompts need one backbone and one context length")
        self.learners, self.classnames = learners, [tuple(names) for names in classnames]
        self.sizes = [len(names) for names in self.classnames]
        tokens = [learner._frozen_tokens(names) for learner, names in zip(learners, self.classnames, strict=True)]
        embeddings = torch.cat([emb for emb, _ in tokens])  # [sum C_j, L, D]
        eot = torch.cat([positions for _, positions in tokens])  # [sum C_j]
        jobs = torch.arange(len(learners), device=eot.device)
        prefix_of = torch.repeat_interleave(jobs, torch.tensor(self.sizes, device=eot.device))  # [sum C_j]
        self.sos = embeddings[0, :1]  # [1, D]
        self.suffixes = backbone.shared_prefix_prompts(embeddings, eot, 1 + n_ctx, prefix_of)

    def __call__(self) -> list[torch.Tensor]:
        """Each learner's soft-prompt features for its own classes: L2-normalised [C_j, E]."""
        if self.suffixes is None:  # a tower that cannot share prefixes: one pass per learner
            return [learner(names) for learner, names in zip(self.learners, self.classnames, strict=True)]
        prefixes = torch.stack([torch.cat([self.sos, learner.ctx.to(self.sos.dtype)]) for learner in self.learners])
        features = self.learners[0].backbone.encode_shared_prefix(prefixes, self.suffixes)  # [sum C_j, E]
        return list(features.split(self.sizes))  # [K, 1 + M, D] prefixes -> one [C_j, E] per learner
