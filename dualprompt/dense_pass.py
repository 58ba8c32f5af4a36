"""Small shared-prefix text passes: one block-causal attention over all rows, and a backward written out.

A training step of the offline world (18 prompts, 77 token rows, width 128, 4 layers) executes 0.2 GFLOP
in about 1,200 ATen calls through shared_prefix.py; much of its time is their fixed cost, not arithmetic.
For a pass that small this module computes what `shared_prefix._run` computes (exact up to float
round-off, tests/test_backbone.py) in about 800 calls (docs/performance.md):

- **One attention over the pass's T rows**: scores [H, T, T] under a block-causal mask (a prompt's rows
  see their prefix's rows and their own earlier rows; a prefix's rows see its own earlier rows), instead of
  one padded sequence per prompt with the prefix's q/k/v broadcast into each. No padding, cat or gather.
  Dense scores cost 4*T*T*D FLOPs a layer against the matmuls' 24*T*D*D, so only small passes
  (`MAX_ROWS`) run here.
- **No autograd graph**: the forward runs the block's arithmetic directly and keeps what its backward reads;
  the backward, written per layer, computes only what reaches the prefix: no weight gradients (`Backbone`
  freezes the tower at load), at the last layer attention for the EOT rows only, at the first layer
  gradients for the prefix rows only (the class-name rows are constants there).

It runs open_clip's `ResidualAttentionBlock` whose parts it writes out (`supports`): LayerNorm, the
packed q/k/v and output projections with biases, LayerScale or none, an MLP of Linear, GELU or
QuickGELU, Linear. `shared_prefix.encode` calls it for a one-group pass with a mask (built only when T
fits), in float32, without autocast or per-layer checkpointing; anything else keeps the autograd path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Measured (CPU, one thread, training steps alternated with shared_prefix.py's per-prompt attention; see
# docs/performance.md): faster up to T = 245 on the tiny CLIP (x1.07; x0.80 at 405) and T = 274 on ViT-B-16
# (x1.06; x0.93 at 413).
MAX_ROWS = 256


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

    return all(plain(block) for block in blocks)


def block_causal_mask(n_prompts_rows: Tensor, n_prefixes: int, n_prefix: int,
                      prefix_of: Tensor | None) -> Tensor | None:
    """Additive attention mask [T, T] (0 or -inf) of one pass laid out as K*P prefix rows, then each prompt's
    rows in order; n_prompts_rows [N]: each prompt's own rows; prefix_of [N] (None: one prefix). None when
    T > MAX_ROWS (the dense scores would cost more than the per-prompt sequences save)."""
    n_prefix_rows = n_prefixes * n_prefix
    n_rows = n_prefix_rows + int(n_prompts_rows.sum())
    if n_rows > MAX_ROWS:
        return None
    device = n_prompts_rows.device
    rows = torch.arange(n_rows, device=device)
    prompts = torch.arange(len(n_prompts_rows), device=device)
    prompt = torch.cat([torch.full((n_prefix_rows,), -1, device=device),
                        torch.repeat_interleave(prompts, n_prompts_rows)])  # [T], -1 on prefix rows
    of_prompt = torch.zeros_like(prompts) if prefix_of is None else prefix_of
    block = torch.cat([rows[:n_prefix_rows] // n_prefix, of_prompt[prompt[n_prefix_rows:]]])  # [T] its prefix
    row, col = rows.unsqueeze(1), rows.unsqueeze(0)
    earlier = col <= row
    sees_prefix = (col < n_prefix_rows) & (block[row] == block[col]) & ((prompt[row] >= 0) | earlier)
    sees_own = (prompt[col] >= 0) & (prompt[row] == prompt[col]) & earlier
    return torch.zeros(n_rows, n_rows, device=device).masked_fill(~(sees_prefix | sees_own), float("-inf"))


def encode(blocks: nn.ModuleList, prefix: Tensor, suffix: Tensor, mask: Tensor, eot_row: Tensor) -> Tensor:
    """Hidden states at the EOT rows after the last block: prefix [K*P, D] (trainable), suffix [R, D]
    (frozen), mask [T, T] from `block_causal_mask`, eot_row [N] -> [N, D]."""
    return _DensePass.apply(prefix, suffix, mask, eot_row, blocks)


class _DensePass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prefix: Tensor, suffix: Tensor, mask: Tensor, eot_row: Tensor, blocks: nn.ModuleList):
        x = torch.cat([prefix, suffix])  # [T, D]
        saved, last = [], len(blocks) - 1
        for i, block in enumerate(blocks):
            x, kept = _layer_forward(block, x, mask, eot_row if i == last else None)
            saved.append(kept)
        if ctx.needs_input_grad[0]:
            ctx.saved, ctx.blocks, ctx.eot_row, ctx.n_prefix_rows = saved, blocks, eot_row, prefix.shape[0]
        return x  # [N, D]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        last = len(ctx.blocks) - 1
        for i in range(last, -1, -1):
            grad = _layer_backward(ctx.blocks[i], ctx.saved[i], grad, ctx.eot_row if i == last else None,
                                   ctx.n_prefix_rows if i == 0 else None)
        ctx.saved = None
        return grad, None, None, None, None  # [K*P, D]: the prefix rows' gradient


def _gamma(layer_scale: nn.Module) -> Tensor | None:
    return getattr(layer_scale, "gamma", None)  # LayerScale multiplies by gamma [D]; Identity: None


def _layer_forward(block: nn.Module, x: Tensor, mask: Tensor, queries: Tensor | None):
    """One block over x [T, D] -> [T, D], or [N, D] at rows `queries` (the last layer: only the EOT rows
    feed the text feature, so only they query, project and run the MLP). Returns what backward reads."""
    n_rows, width = x.shape
    attn, ln_1, ln_2, mlp = block.attn, block.ln_1, block.ln_2, block.mlp
    heads = attn.num_heads
    normed, mean_1, rstd_1 = torch.native_layer_norm(x, ln_1.normalized_shape, ln_1.weight, ln_1.bias, ln_1.eps)
    qkv = torch.addmm(attn.in_proj_bias, normed, attn.in_proj_weight.t())  # [T, 3D]
    q, k, v = qkv.view(n_rows, 3, heads, width // heads).permute(1, 2, 0, 3)  # each [H, T, dh]
    scores_mask, residual = mask, x
    if queries is not None:
        q, scores_mask, residual = q[:, queries], mask[queries], x[queries]  # [H, N, dh], [N, T], [N, D]
    probs = torch.baddbmm(scores_mask, q, k.transpose(1, 2), alpha=(width // heads) ** -0.5).softmax(-1)  # [H, Q, T]
    attended = torch.bmm(probs, v).transpose(0, 1).reshape(-1, width)  # [Q, D]
    branch = torch.addmm(attn.out_proj.bias, attended, attn.out_proj.weight.t())  # [Q, D]
    y = residual + (branch if (g := _gamma(block.ls_1)) is None else branch * g)  # [Q, D]
    normed_2, mean_2, rstd_2 = torch.native_layer_norm(y, ln_2.normalized_shape, ln_2.weight, ln_2.bias, ln_2.eps)
    hidden = torch.addmm(mlp.c_fc.bias, normed_2, mlp.c_fc.weight.t())  # [Q, 4D]
    branch = torch.addmm(mlp.c_proj.bias, mlp.gelu(hidden), mlp.c_proj.weight.t())  # [Q, D]
    out = y + (branch if (g := _gamma(block.ls_2)) is None else branch * g)
    return out, (x, mean_1, rstd_1, q, k, v, probs, y, mean_2, rstd_2, hidden)


def _layer_backward(block: nn.Module, kept, grad: Tensor, queries: Tensor | None, rows: int | None) -> Tensor:
    """The gradient of one block's input rows from its output's, grad [Q, D]: all T rows, or the first
    `rows` (the first layer: only the prefix rows are trainable). queries: the EOT rows (the last layer)."""
    x, mean_1, rstd_1, q, k, v, probs, y, mean_2, rstd_2, hidden = kept
    attn, ln_1, ln_2, mlp = block.attn, block.ln_1, block.ln_2, block.mlp
    heads, n_rows, head_width = k.shape
    width = heads * head_width
    d_branch = grad if (g := _gamma(block.ls_2)) is None else grad * g
    d_hidden = _activation_backward(mlp.gelu, d_branch @ mlp.c_proj.weight, hidden)  # [Q, 4D]
    d_y = torch.ops.aten.native_layer_norm_backward(d_hidden @ mlp.c_fc.weight, y, ln_2.normalized_shape, mean_2,
                                                    rstd_2, ln_2.weight, ln_2.bias, [True, False, False])[0]
    d_y += grad  # [Q, D]
    d_branch = d_y if (g := _gamma(block.ls_1)) is None else d_y * g
    d_attended = (d_branch @ attn.out_proj.weight).view(-1, heads, head_width).transpose(0, 1)  # [H, Q, dh]
    # Softmax backward: d_scores = P * (dP - rowsum(dP * P)), scaled as the scores were.
    d_probs = torch.bmm(d_attended, v.transpose(1, 2))  # [H, Q, T]
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))
    d_scores *= head_width**-0.5
    keep = slice(None) if rows is None else slice(0, rows)  # key/value rows whose gradient is needed
    d_k = torch.bmm(d_scores.transpose(1, 2)[:, keep], q)  # [H, rows, dh]
    d_v = torch.bmm(probs.transpose(1, 2)[:, keep], d_attended)  # [H, rows, dh]
    if queries is None:
        d_q = torch.bmm(d_scores[:, keep], k)  # [H, rows, dh]
        d_x = d_y[keep]  # the residual
    else:  # only the EOT rows queried; they are never prefix rows
        d_q = q.new_zeros(heads, n_rows, head_width).index_copy_(1, queries, torch.bmm(d_scores, k))[:, keep]
        d_x = d_y.new_zeros(n_rows, width).index_copy_(0, queries, d_y)[keep]
    d_qkv = torch.stack([d_q, d_k, d_v]).permute(2, 0, 1, 3).reshape(-1, 3 * width)  # [rows, 3D]
    d_normed = d_qkv @ attn.in_proj_weight  # [rows, D]
    return d_x + torch.ops.aten.native_layer_norm_backward(d_normed, x[keep], ln_1.normalized_shape, mean_1[keep],
                                                           rstd_1[keep], ln_1.weight, ln_1.bias,
                                                           [True, False, False])[0]


def _activation_backward(activation: nn.Module, grad: Tensor, hidden: Tensor) -> Tensor:
    if isinstance(activation, nn.GELU):
        return torch.ops.aten.gelu_backward(grad, hidden)
    s = torch.sigmoid(1.702 * hidden)  # QuickGELU: x * sigmoid(1.702 x)
    return grad * (s + 1.702 * hidden * s * (1 - s))
