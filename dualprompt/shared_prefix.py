"""Text encoding of prompts that share their first positions: the `[SOS][ctx]` prefix runs once per step.

Why it is exact: CLIP's text attention is causal, so the hidden states of the first P positions (and so
their keys and values at every layer) depend on those P positions only. Every soft prompt starts with
the same `[SOS][ctx_1..ctx_M]`, so those states are the same for every class; each class's remaining
positions attend to [the shared prefix's keys and values] + [their own, causally], which is exactly what
they attend to in a pass over the whole prompt. Gradients reach `ctx` through the shared prefix rows.

How it is cheap: the token rows of a pass are one flat [T, D] matrix, the P prefix rows once and then
each prompt's own positions up to its EOT token, without padding (T = P + sum_i s_i instead of
N * (P + max_i s_i); ImageNet's names are padded 68% with n_ctx=4), so every per-token op (LayerNorm,
the fused q/k/v projection, the output projection, the MLP) runs once over T rows. Only attention needs
one sequence per prompt: the prefix's q/k/v rows are broadcast (an `expand`, no copy) in front of each
prompt's own rows and one fused causal `scaled_dot_product_attention` runs over [N, P+S]; the prefix's
output rows are taken from prompt 0 (every prompt computes the same ones). At the last layer only the
EOT rows feed the text feature, so the output projection and MLP run on those N rows alone.

Several prefixes (K jobs' contexts, each shared by its own classes) run in the same pass: the K prefixes'
rows come first, each prompt's sequence starts with its own prefix's q/k/v (`prefix_of`, a gather instead
of the broadcast), and each prefix's output rows come from its first prompt. A job's features are the
same as in a pass of its own up to float round-off (the matrices are larger, so summation order differs).

This reads the weights of open_clip's `ResidualAttentionBlock` (ln_1, the packed in_proj of its
`nn.MultiheadAttention`, out_proj, ls_1, ln_2, mlp, ls_2) and calls its submodules; `supports` says
whether a text tower is made of exactly those blocks. `Backbone` owns the rest (positions, the final
LayerNorm and projection) and falls back to open_clip's own modules for any other tower. A small pass
(one group whose prefixes each have up to dense_pass.MAX_ROWS rows with their prompts', float32) runs in
dense_pass.py instead: the same arithmetic as one masked attention per prefix's rows, with its backward
written out (`runs_dense`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from . import dense_pass


def supports(text: nn.Module) -> bool:
    """Whether `text` (a CLIP text tower) has a causal mask and only blocks this module can run."""
    from open_clip.transformer import ResidualAttentionBlock

    mask = getattr(text, "attn_mask", None)
    blocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    if not isinstance(mask, Tensor) or blocks is None or len(blocks) == 0:
        return False
    causal = torch.full_like(mask, float("-inf")).triu(1)  # 0 on and below the diagonal
    # The exact class: a subclass may change what forward computes.
    return torch.equal(mask, causal) and all(type(b) is ResidualAttentionBlock and _plain_attention(b) for b in blocks)


def _plain_attention(block: nn.Module) -> bool:
    """Self-attention with one packed q/k/v projection and nothing extra (no bias_kv, no zero attention)."""
    attn = block.attn
    return (
        not hasattr(block, "ln_1_kv")  # cross-attention blocks
        and isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and attn.bias_v is None
        and not attn.add_zero_attn
    )


@dataclass(frozen=True)
class PromptGroup:
    """The frozen inputs of one pass over N prompts (all of them, or one chunk), after the prefix.

    Only real positions are rows (up to each prompt's own EOT token, no padding): R = sum of the suffix
    lengths s_i. Attention alone needs one padded sequence per prompt, S = max s_i positions: a prompt's
    padding slots repeat its EOT row, which is exact because under the causal mask only later padding
    slots see them, whose outputs are dropped (so they also get exactly zero gradient).
    """

    suffix: Tensor  # [R, D] token + positional embeddings of the suffix positions, prompt after prompt
    eot_row: Tensor  # [N] row of each prompt's EOT token among the pass's own token rows
    eot_seq: Tensor  # [N] the same token's row in the pass's [N*(P+S)] per-prompt sequences
    seq_index: Tensor | None  # [N*S] own suffix row of each sequence slot; None: no padding (a view)
    out_index: Tensor | None  # [R] slot in the [N*(P+S)] sequences of each own suffix row; None: no padding
    prefix_of: Tensor | None = None  # [N] the prefix (0..K-1) of each prompt; None: one prefix for all
    first_of_prefix: Tensor | None = None  # [K] each prefix's first prompt; only when the pass has the prefix rows
    dense: dense_pass.Layout | None = None  # small one-group passes: how dense_pass.py lays out their rows

    @property
    def n_prompts(self) -> int:
        return self.eot_row.shape[0]


@dataclass(frozen=True)
class SharedPrefixPrompts:
    """Prompts `[prefix (P positions, shared)][suffix (S positions, per prompt)]`, in passes of `groups`.

    With one group the prefix rows are part of the pass (computed with the suffix rows); with several
    (`text_chunk_size`), the prefix runs once on its own and every group attends to its keys and values.
    """

    n_prefix: int
    groups: tuple[PromptGroup, ...]
    n_prefixes: int = 1  # K: prefixes of P positions each, given to `encode` as [K, P, D]


def build_prompts(suffix: Tensor, eot: Tensor, n_prefix: int, chunk: int,
                  prefix_of: Tensor | None = None, dense: bool = False) -> SharedPrefixPrompts:
    """suffix [C, S, D] (token + positional embeddings after the prefix, padded), eot [C] (EOT position
    within the suffix); `chunk` prompts per pass (0 or >= C: one pass); prefix_of [C]: each prompt's prefix
    (0..K-1, every one used; None: one prefix); `dense`: the blocks are ones dense_pass.py runs, so a small
    one-group pass gets its layout. Everything here is frozen: built once per class list."""
    n_prompts = suffix.shape[0]
    n_prefixes = 1 if prefix_of is None else int(prefix_of.max()) + 1
    if prefix_of is not None and len(prefix_of.unique()) != n_prefixes:
        raise ValueError("prefix_of must use every prefix 0..K-1")
    chunk = chunk if 0 < chunk < n_prompts else n_prompts
    own_prefix = chunk == n_prompts  # one pass: the prefix rows come first among its own rows
    groups = tuple(
        _group(suffix[start : start + chunk], eot[start : start + chunk], n_prefix,
               n_prefixes * n_prefix if own_prefix else 0, None if prefix_of is None else prefix_of[start:][:chunk],
               n_prefixes, dense and own_prefix)
        for start in range(0, n_prompts, chunk)
    )
    return SharedPrefixPrompts(n_prefix, groups, n_prefixes)


def _group(suffix: Tensor, eot: Tensor, n_prefix: int, first_row: int, prefix_of: Tensor | None,
           n_prefixes: int, dense: bool) -> PromptGroup:
    """One pass over suffix [N, S', D] with EOT positions eot [N]; its own suffix rows start at `first_row`."""
    lengths = eot + 1  # [N] real suffix positions of each prompt
    length = int(lengths.max())  # S: this pass's padded sequence length
    slots = torch.arange(length, device=suffix.device)  # [S]
    real = slots < lengths.unsqueeze(1)  # [N, S]
    starts = torch.cumsum(lengths, 0) - lengths  # [N] first own row of each prompt
    prompt = torch.arange(len(eot), device=suffix.device)  # [N]
    padded = not bool(real.all())
    first_of_prefix = None
    if prefix_of is not None and first_row > 0:  # the pass computes the prefix rows: from which prompts
        prefixes = torch.arange(n_prefixes, device=suffix.device)  # [K]
        first_of_prefix = (prefix_of.unsqueeze(0) == prefixes.unsqueeze(1)).int().argmax(dim=1)  # first match
    return PromptGroup(
        suffix=suffix[:, :length][real].contiguous(),  # [R, D]
        eot_row=first_row + starts + eot,
        eot_seq=prompt * (n_prefix + length) + n_prefix + eot,
        # Padding slots take the prompt's EOT row (any real row would do: nothing reads them).
        seq_index=(starts.unsqueeze(1) + torch.minimum(slots, eot.unsqueeze(1))).flatten() if padded else None,
        out_index=(prompt.unsqueeze(1) * (n_prefix + length) + n_prefix + slots)[real] if padded else None,
        prefix_of=prefix_of,
        first_of_prefix=first_of_prefix,
        dense=dense_pass.layout(lengths, n_prefixes, n_prefix, prefix_of) if dense else None,
    )


def encode(blocks: nn.ModuleList, prefix: Tensor, prompts: SharedPrefixPrompts, checkpoint_layers: bool) -> Tensor:
    """Hidden states at each prompt's EOT token after the last block: prefix [K, P, D] (with positions; [P, D]
    for K = 1) -> [C, D].

    Several groups: the prefix runs once, then each group is checkpointed as a whole when gradients
    flow (only its [N, D] output is kept; chunking alone would keep every chunk's graph until backward).
    `checkpoint_layers` also recomputes each layer of a pass in backward (`checkpoint_text`).
    """
    prefix = prefix.reshape(-1, prefix.shape[-1])  # [K*P, D]: prefix after prefix
    if prefix.shape[0] != prompts.n_prefixes * prompts.n_prefix:
        raise ValueError(f"expected {prompts.n_prefixes} prefixes of {prompts.n_prefix} positions, got "
                         f"{prefix.shape[0]} rows")
    if len(prompts.groups) == 1:
        group = prompts.groups[0]
        if runs_dense(prompts, prefix, checkpoint_layers):
            return dense_pass.encode(blocks, prefix, group.suffix, group.dense)
        rows = torch.cat([prefix, group.suffix.to(prefix.dtype)])  # [K*P + R, D]
        return _run(blocks, rows, group, None, checkpoint_layers)
    prefix_qkv = _prefix_qkv(blocks, prefix, prompts.n_prefixes)
    recompute = torch.is_grad_enabled()
    parts = []
    for group in prompts.groups:
        rows = group.suffix.to(prefix.dtype)  # [R, D]
        if recompute:
            run = lambda r, *qkv, g=group: _run(blocks, r, g, qkv, checkpoint_layers)  # noqa: E731
            parts.append(torch.utils.checkpoint.checkpoint(run, rows, *prefix_qkv, use_reentrant=False))
        else:
            parts.append(_run(blocks, rows, group, prefix_qkv, checkpoint_layers))
    return torch.cat(parts)  # [C, D]


def runs_dense(prompts: SharedPrefixPrompts, prefix: Tensor, checkpoint_layers: bool) -> bool:
    """Whether `encode` runs dense_pass.py: a small pass (only a one-group pass gets a layout), float32
    without autocast, and every layer kept (no recomputation)."""
    return (prompts.groups[0].dense is not None and prefix.dtype == torch.float32 and not checkpoint_layers
            and not torch.is_autocast_enabled(prefix.device.type))


def _prefix_qkv(blocks: nn.ModuleList, x: Tensor, n_prefixes: int) -> list[Tensor]:
    """The K prefixes alone, one sequence each (x [K*P, D]): their packed q/k/v [K, P, 3D] at every layer."""
    out = []
    alone = torch.arange(n_prefixes, device=x.device) if n_prefixes > 1 else None  # prefix k is sequence k
    for layer, block in enumerate(blocks):
        qkv = _qkv(block, x).view(n_prefixes, -1, x.shape[-1] * 3)  # [K, P, 3D]
        out.append(qkv)
        if layer < len(blocks) - 1:  # the last layer's prefix outputs feed nothing
            attended = _attend(block, qkv, qkv.new_empty(0, qkv.shape[-1]), n_prefixes, alone)  # [K, P, D]
            x = _residual(block, x, attended.reshape(x.shape))
    return out


def _run(blocks: nn.ModuleList, x: Tensor, group: PromptGroup, prefix_qkv, checkpoint_layers: bool) -> Tensor:
    """All blocks over one pass's own rows x [T, D] -> [N, D] at the EOT rows.

    prefix_qkv None: x holds the K*P prefix rows, then the suffix rows; else a per-layer list of the
    prefixes' q/k/v [K, P, 3D], and x holds only suffix rows.
    """
    last = len(blocks) - 1
    for layer, block in enumerate(blocks):
        args = (block, x, group, None if prefix_qkv is None else prefix_qkv[layer], layer == last)
        if checkpoint_layers and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(_layer, *args, use_reentrant=False)
        else:
            x = _layer(*args)
    return x


def _layer(block: nn.Module, x: Tensor, group: PromptGroup, prefix_qkv: Tensor | None, last: bool) -> Tensor:
    """One residual attention block over a pass's own rows x [T, D] -> [T, D] ([N, D] EOT rows if `last`).
    T = K*P + R with the prefix rows first, or R: the suffix rows (R = sum of the prompts' suffix lengths)."""
    qkv = _qkv(block, x)  # [T, 3D]
    if prefix_qkv is None:
        n_rows = x.shape[0] - group.suffix.shape[0]  # K*P
        n_prefixes = 1 if group.first_of_prefix is None else group.first_of_prefix.shape[0]
        prefix_qkv, qkv = qkv[:n_rows].view(n_prefixes, -1, qkv.shape[-1]), qkv[n_rows:]  # [K, P, 3D], [R, 3D]
    n_prefix = prefix_qkv.shape[1]
    if group.seq_index is not None:  # prompts of different lengths: pad each one's q/k/v to S slots
        qkv = qkv.index_select(0, group.seq_index)  # [N*S, 3D]
    attended = _attend(block, prefix_qkv, qkv, group.n_prompts, group.prefix_of)  # [N, P+S, D]
    flat = attended.reshape(-1, attended.shape[-1])  # [N*(P+S), D], a view
    if last:  # only the EOT rows feed the text feature
        return _residual(block, x[group.eot_row], flat[group.eot_seq])  # [N, D]
    if group.out_index is None:
        own = attended[:, n_prefix:].reshape(-1, flat.shape[-1])  # [R, D]
    else:
        own = flat.index_select(0, group.out_index)  # [R, D], the real slots only
    if x.shape[0] > own.shape[0]:  # the prefix rows are this pass's: each prefix's first prompt computed them
        if group.first_of_prefix is None:
            prefix_rows = attended[0, :n_prefix]  # [P, D]
        else:
            prefix_rows = attended[group.first_of_prefix, :n_prefix].reshape(-1, own.shape[-1])  # [K*P, D]
        own = torch.cat([prefix_rows, own])  # [K*P + R, D]
    return _residual(block, x, own)


def _qkv(block: nn.Module, x: Tensor) -> Tensor:
    """nn.MultiheadAttention's packed q/k/v projection of the LayerNorm'd rows, fused: [T, D] -> [T, 3D]."""
    attn = block.attn
    return F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)


def _attend(block: nn.Module, prefix_qkv: Tensor, suffix_qkv: Tensor, n_prompts: int,
            prefix_of: Tensor | None) -> Tensor:
    """Causal attention of each prompt's sequence [prefix][own suffix] -> outputs [N, P+S, D] (before out_proj).

    prefix_qkv [K, P, 3D]: with one prefix it is broadcast (not copied) into every sequence, else prompt i
    takes prefix prefix_of[i]; suffix_qkv [N*S, 3D] (padded).
    """
    width3 = prefix_qkv.shape[-1]
    heads, width = block.attn.num_heads, width3 // 3
    own = suffix_qkv.view(n_prompts, suffix_qkv.shape[0] // n_prompts, width3)  # [N, S, 3D]; S may be 0
    shared = prefix_qkv.expand(n_prompts, -1, -1) if prefix_of is None else prefix_qkv.index_select(0, prefix_of)
    sequences = torch.cat([shared, own], dim=1)  # [N, P+S, 3D]
    length = sequences.shape[1]
    # Split q/k/v before moving heads forward: unbind's backward then stacks the gradients straight into
    # this [N, L, 3, H, dh] layout (one copy) instead of a stacked layout that needs a second, strided one.
    heads_view = sequences.view(n_prompts, length, 3, heads, width // heads)
    q, k, v = (t.transpose(1, 2) for t in heads_view.unbind(2))  # each [N, H, P+S, dh]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [N, H, P+S, dh]
    return out.transpose(1, 2).reshape(n_prompts, length, width)  # [N, P+S, D]; a view when out is [N, L, H, dh]


def _residual(block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
    """The rest of the block: out_proj, layer scale and residual, then the MLP branch. [T, D] -> [T, D]."""
    x = x + block.ls_1(block.attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
