"""Small shared-prefix text passes: one block-causal attention per prefix's rows, and a backward written out.

A training step of the offline world (18 prompts, 77 token rows, width 128, 4 layers) executes 0.2 GFLOP
in about 1,200 ATen calls through shared_prefix.py; much of its time is their fixed cost, not arithmetic.
This module computes what `shared_prefix._run` computes (exact up to float round-off, tests/test_backbone.py)
in 818 ATen calls a step instead of 1,189 (docs/performance.md):

- **One attention per prefix**: each prefix's rows (its P positions, then its prompts' own rows, one
  block of L rows; several prefixes are K blocks, padded to the longest) attend to each other under a
  block-causal mask (a prompt's rows see their prefix's rows and their own earlier rows; the prefix's
  rows see its own earlier rows): scores [K*H, L, L], instead of one padded sequence per prompt with
  the prefix's q/k/v broadcast into each. Dense scores cost 4*L*L*D FLOPs a layer and block against the
  matmuls' 24*L*D*D, so only blocks of up to `MAX_ROWS` rows run here.
- **No autograd graph**: the forward runs the block's arithmetic directly and keeps what its backward reads;
  the backward, written per layer, computes only what reaches the prefixes: no weight gradients
  (`Backbone` freezes the tower at load), at the last layer the output projection and MLP for the EOT
  rows only, at the first layer gradients for the prefix rows only (the class-name rows are constants).

It runs open_clip's `ResidualAttentionBlock` whose parts it writes out (`supports`): LayerNorm, the
packed q/k/v and output projections with biases, LayerScale or none, an MLP of Linear, GELU or
QuickGELU, Linear. `shared_prefix.encode` calls it for a one-group pass with a layout (built only when
the blocks fit), in float32, without autocast or per-layer checkpointing; anything else keeps the
autograd path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Measured (CPU, one thread, training steps alternated with shared_prefix.py's per-prompt attention; see
# docs/performance.md): one job gains up to L = 205 on the tiny CLIP (x1.04; x0.96 at 245) and L = 274 on
# ViT-B-16 (x1.04; x0.92 at 413); a search trial's ten jobs of L = 41 gain x1.38.
MAX_ROWS = 200
# Padding slots cost what real rows cost in the matmuls, and one job gains x1.04 to x1.15 at equal rows, so
# a layout with more than this share of padding (prefixes of very different class counts) keeps the other
# path (reasoned from those figures, not measured on padded layouts).
MAX_PADDING = 0.1


def supports(blocks: nn.ModuleList) -> bool:
    """Whether every block's parts are ones written out here (checked once, at load)."""
    from open_clip.transformer import LayerNorm, LayerScale, QuickGELU  # LayerNorm: float32 as torch's

    def plain(block: nn.Module) -> bool:
        mlp, attn = block.mlp, block.attn
        return (
            isinstance(mlp, nn.Sequential) and list(mlp._modules) == ["c_fc", "gelu", "c_proj"]
            and all(type(m) is nn.Linear and m.bias is not None for m in (mlp.c_fc, mlp.c_proj))
            and (type(mlp.gelu) is QuickGELU or (type(mlp.gelu) is nn.GELU and mlp.gelu.approximate == "none"))
            and all(type(ln) in (nn.LayerNorm, LayerNorm) and ln.weight is not None
                    and ln.bias is not None for ln in (block.ln_1, block.ln_2))
            and all(type(ls) is nn.Identity or (type(ls) is LayerScale and not ls.inplace)
                    for ls in (block.ls_1, block.ls_2))
            and attn.in_proj_bias is not None and attn.out_proj.bias is not None
        )

    return all(plain(block) for block in blocks) and len({block.attn.num_heads for block in blocks}) == 1


@dataclass(frozen=True)
class Layout:
    """Where a pass's rows go: K blocks of L rows, block k = prefix k's P rows, then its prompts' own rows
    in prompt order, then padding. Frozen: built once per class list (`layout`)."""

    source: Tensor  # [K*L] row of [prefixes (K*P); suffix rows (R); one zero row] placed in each slot
    mask: Tensor  # [K, 1, L, L] additive (0 or -inf); a padding slot sees only itself
    eot: Tensor  # [N] slot of each prompt's EOT row
    n_prefix: int  # P

    @property
    def n_blocks(self) -> int:
        return self.mask.shape[0]


def layout(n_prompt_rows: Tensor, n_prefixes: int, n_prefix: int, prefix_of: Tensor | None) -> Layout | None:
    """The layout of a pass of K*P prefix rows, then each prompt's own rows in order (n_prompt_rows [N]);
    prefix_of [N] (None: one prefix). None when a block would exceed MAX_ROWS (the dense scores would cost
    more than the per-prompt sequences save) or the blocks would be more than MAX_PADDING padding."""
    device = n_prompt_rows.device
    n_prompts, n_rows = len(n_prompt_rows), int(n_prompt_rows.sum())
    prompt = torch.repeat_interleave(torch.arange(n_prompts, device=device), n_prompt_rows)  # [R]
    block = (torch.zeros(n_prompts, dtype=torch.long, device=device) if prefix_of is None else prefix_of)[prompt]
    counts = torch.bincount(block, minlength=n_prefixes)  # [K] suffix rows of each block
    length = n_prefix + int(counts.max())  # L
    padding = n_prefixes * length - n_prefixes * n_prefix - n_rows  # slots that no row fills
    if length > MAX_ROWS or padding > MAX_PADDING * n_prefixes * length:
        return None
    order = torch.argsort(block, stable=True)  # suffix rows block by block, in order within each
    starts = torch.cumsum(counts, 0) - counts
    slot = block[order] * length + n_prefix + torch.arange(n_rows, device=device) - starts[block[order]]
    source = torch.full((n_prefixes * length,), n_prefixes * n_prefix + n_rows, device=device)  # the zero row
    slot_of_row = torch.empty_like(slot)
    slot_of_row[order] = slot  # [R] slot of each suffix row
    source[slot_of_row] = n_prefixes * n_prefix + torch.arange(n_rows, device=device)
    prefix_slots = (torch.arange(n_prefixes, device=device).unsqueeze(1) * length
                    + torch.arange(n_prefix, device=device)).flatten()
    source[prefix_slots] = torch.arange(n_prefixes * n_prefix, device=device)
    owner = torch.full((n_prefixes * length,), -2, device=device)  # -2 padding, -1 prefix, else the prompt
    owner[prefix_slots], owner[slot_of_row] = -1, prompt
    owner = owner.view(n_prefixes, length)
    position = torch.arange(length, device=device)
    earlier = position.unsqueeze(0) <= position.unsqueeze(1)  # [L, L]: key j <= query i
    query, key = owner.unsqueeze(2), owner.unsqueeze(1)  # [K, L, 1], [K, 1, L]
    sees = ((key == -1) & ((query >= 0) | ((query == -1) & earlier))) | ((query >= 0) & (query == key) & earlier)
    sees |= (query == -2) & torch.eye(length, dtype=torch.bool, device=device)  # padding: itself, never read
    mask = torch.zeros(sees.shape, device=device).masked_fill(~sees, float("-inf")).unsqueeze(1)
    return Layout(source, mask, slot_of_row[torch.cumsum(n_prompt_rows, 0) - 1], n_prefix)


def encode(blocks: nn.ModuleList, prefix: Tensor, suffix: Tensor, plan: Layout) -> Tensor:
    """Hidden states at the EOT rows after the last block: prefix [K*P, D] (trainable), suffix [R, D]
    (frozen) -> [N, D]."""
    return _DensePass.apply(prefix, suffix, plan, blocks)


class _DensePass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prefix: Tensor, suffix: Tensor, plan: Layout, blocks: nn.ModuleList):
        rows = torch.cat([prefix, suffix, prefix.new_zeros(1, prefix.shape[1])])
        x = rows.index_select(0, plan.source)  # [K*L, D]
        heads = blocks[0].attn.num_heads
        mask = plan.mask.expand(-1, heads, -1, -1).reshape(-1, *plan.mask.shape[2:])  # [K*H, L, L]
        saved, last = [], len(blocks) - 1
        for i, block in enumerate(blocks):
            x, kept = _layer_forward(block, x, plan, mask, plan.eot if i == last else None)
            saved.append(kept)
        if ctx.needs_input_grad[0]:
            ctx.saved, ctx.blocks, ctx.plan = saved, blocks, plan
        return x  # [N, D]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        last = len(ctx.blocks) - 1
        for i in range(last, -1, -1):
            grad = _layer_backward(ctx.blocks[i], ctx.saved[i], grad, ctx.plan, i == last, i == 0)
        ctx.saved = None
        return grad, None, None, None  # [K*P, D]: the prefix rows' gradient


def _gamma(layer_scale: nn.Module) -> Tensor | None:
    return getattr(layer_scale, "gamma", None)  # LayerScale multiplies by gamma [D]; Identity: None


def _split_heads(qkv: Tensor, blocks: int, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[K*L, 3D] -> q, k, v, each [K*H, L, dh] (one copy for the three)."""
    width = qkv.shape[1] // 3
    split = qkv.view(blocks, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # [3, K, H, L, dh]
    return split.reshape(3, -1, split.shape[3], split.shape[4]).unbind(0)


def _merge_heads(t: Tensor, blocks: int) -> Tensor:
    """[K*H, L, dh] -> [K*L, H*dh]."""
    kh, length, head_width = t.shape
    return t.view(blocks, kh // blocks, length, head_width).transpose(1, 2).reshape(-1, kh // blocks * head_width)


def _layer_forward(block: nn.Module, x: Tensor, plan: Layout, mask: Tensor, eot: Tensor | None):
    """One block over x [K*L, D] -> [K*L, D], or [N, D] at the EOT slots (the last layer: only they feed
    the text feature, so only they run the output projection and MLP); mask [K*H, L, L]. Returns what
    backward reads."""
    width = x.shape[1]
    attn, ln_1, ln_2, mlp = block.attn, block.ln_1, block.ln_2, block.mlp
    normed, mean_1, rstd_1 = torch.native_layer_norm(x, ln_1.normalized_shape, ln_1.weight, ln_1.bias, ln_1.eps)
    qkv = torch.addmm(attn.in_proj_bias, normed, attn.in_proj_weight.t())  # [K*L, 3D]
    q, k, v = _split_heads(qkv, plan.n_blocks, attn.num_heads)  # each [K*H, L, dh]
    probs = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=(width // attn.num_heads) ** -0.5).softmax(-1)
    attended = _merge_heads(torch.bmm(probs, v), plan.n_blocks)  # [K*L, D]
    residual = x
    if eot is not None:
        attended, residual = attended[eot], x[eot]  # [N, D]
    branch = torch.addmm(attn.out_proj.bias, attended, attn.out_proj.weight.t())
    y = residual + (branch if (g := _gamma(block.ls_1)) is None else branch * g)
    normed_2, mean_2, rstd_2 = torch.native_layer_norm(y, ln_2.normalized_shape, ln_2.weight, ln_2.bias, ln_2.eps)
    hidden = torch.addmm(mlp.c_fc.bias, normed_2, mlp.c_fc.weight.t())  # [Q, 4D]
    branch = torch.addmm(mlp.c_proj.bias, mlp.gelu(hidden), mlp.c_proj.weight.t())
    out = y + (branch if (g := _gamma(block.ls_2)) is None else branch * g)
    return out, (x, mean_1, rstd_1, q, k, v, probs, y, mean_2, rstd_2, hidden)


def _layer_backward(block: nn.Module, kept, grad: Tensor, plan: Layout, last: bool, first: bool) -> Tensor:
    """The gradient of one block's input from its output's, grad [K*L, D] ([N, D] at the last layer): all
    slots, or at the first layer only the prefix rows' [K*P, D] (the only trainable rows)."""
    x, mean_1, rstd_1, q, k, v, probs, y, mean_2, rstd_2, hidden = kept
    attn, ln_1, ln_2, mlp = block.attn, block.ln_1, block.ln_2, block.mlp
    n_blocks, heads = plan.n_blocks, attn.num_heads
    length, head_width = k.shape[1], k.shape[2]
    d_branch = grad if (g := _gamma(block.ls_2)) is None else grad * g
    d_hidden = _activation_backward(mlp.gelu, d_branch @ mlp.c_proj.weight, hidden)
    d_y = torch.ops.aten.native_layer_norm_backward(d_hidden @ mlp.c_fc.weight, y, ln_2.normalized_shape, mean_2,
                                                    rstd_2, ln_2.weight, ln_2.bias, [True, False, False])[0]
    d_y += grad
    d_branch = d_y if (g := _gamma(block.ls_1)) is None else d_y * g
    d_attended = d_branch @ attn.out_proj.weight
    if last:  # only the EOT slots were projected: scatter their gradients (attended and residual) back
        d_attended = x.new_zeros(x.shape).index_copy_(0, plan.eot, d_attended)
        d_y = x.new_zeros(x.shape).index_copy_(0, plan.eot, d_y)
    d_attended = d_attended.view(n_blocks, length, heads, head_width).transpose(1, 2).reshape(-1, length, head_width)
    # Softmax backward: d_scores = P * (dP - rowsum(dP * P)), scaled as the scores were.
    d_probs = torch.bmm(d_attended, v.transpose(1, 2))  # [K*H, L, L]
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))
    d_scores *= head_width**-0.5
    keep = slice(0, plan.n_prefix) if first else slice(None)  # positions of each block whose gradient is needed
    d_q = torch.bmm(d_scores[:, keep], k)  # [K*H, rows, dh]
    d_k = torch.bmm(d_scores.transpose(1, 2)[:, keep], q)
    d_v = torch.bmm(probs.transpose(1, 2)[:, keep], d_attended)
    rows = d_q.shape[1]
    d_qkv = torch.stack([d_q, d_k, d_v]).view(3, n_blocks, heads, rows, head_width).permute(1, 3, 0, 2, 4)
    d_normed = d_qkv.reshape(n_blocks * rows, -1) @ attn.in_proj_weight  # [K*rows, D]

    def kept_rows(t: Tensor) -> Tensor:  # [K*L, *] -> the kept positions of each block, [K*rows, *]
        return t if not first else t.view(n_blocks, length, -1)[:, keep].reshape(-1, t.shape[-1])

    return kept_rows(d_y) + torch.ops.aten.native_layer_norm_backward(
        d_normed, kept_rows(x), ln_1.normalized_shape, kept_rows(mean_1), kept_rows(rstd_1), ln_1.weight, ln_1.bias,
        [True, False, False])[0]


def _activation_backward(activation: nn.Module, grad: Tensor, hidden: Tensor) -> Tensor:
    if isinstance(activation, nn.GELU):
        return torch.ops.aten.gelu_backward(grad, hidden)
    s = torch.sigmoid(1.702 * hidden)  # QuickGELU: x * sigmoid(1.702 x)
    return grad * (s + 1.702 * hidden * s * (1 - s))
