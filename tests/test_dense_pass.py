"""dense_pass.py: its block-causal mask, when it runs, and blocks with LayerScale and QuickGELU.

Its exactness on open_clip's standard blocks (features and ctx gradients against open_clip's encode_text,
the whole-prompt path and shared_prefix.py's per-prompt attention, one and several prefixes) is tested
with the other text paths in tests/test_backbone.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import LayerScale, QuickGELU
from torch import nn

from dualprompt import dense_pass, shared_prefix
from dualprompt.backbone import load_backbone
from dualprompt.bench.problem import distractor_pool
from dualprompt.config import PromptConfig
from dualprompt.prompt_learner import JointPrompts, PromptLearner
from tests.test_backbone import class_names, features_and_ctx_gradient, loss_weights, whole_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_prefix_gets_a_block_of_its_rows_where_each_row_sees_its_prefix_and_its_own_earlier_rows(
        monkeypatch):
    """Two prefixes of 2 positions, then prompt 0 (2 rows, prefix 1) and prompt 1 (1 row, prefix 0): in the
    pass's rows [prefixes 0-3; suffix rows 4-6; a zero row 7], block 0 = prefix 0 + prompt 1 + padding,
    block 1 = prefix 1 + prompt 0."""
    assert dense_pass.layout(torch.tensor([2, 1]), 2, 2, torch.tensor([1, 0])) is None  # 1 of 8 slots padding
    monkeypatch.setattr(dense_pass, "MAX_PADDING", 0.125)
    plan = dense_pass.layout(torch.tensor([2, 1]), 2, 2, torch.tensor([1, 0]))
    assert plan.source.tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert plan.eot.tolist() == [7, 2]  # each prompt's last row
    seen = [{row: (plan.mask[b, 0, row] == 0).nonzero().flatten().tolist() for row in range(4)} for b in range(2)]
    assert seen[0] == {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [3]}  # slot 3 is padding: itself only
    assert seen[1] == {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3]}
    assert set(plan.mask.unique().tolist()) == {0.0, float("-inf")}


def test_large_or_padded_blocks_keep_per_prompt_attention(tiny_clip):
    """Dense scores cost 4*L*L*D a block: above `MAX_ROWS` rows the per-prompt sequences are cheaper; and
    padding slots cost what rows cost (`MAX_PADDING`)."""
    limit = dense_pass.MAX_ROWS
    assert dense_pass.layout(torch.tensor([limit - 5]), 1, 5, None) is not None
    assert dense_pass.layout(torch.tensor([limit - 4]), 1, 5, None) is None
    names = tuple(distractor_pool(tiny_clip)[:70])  # 5 + 70 x 4 rows
    learner = PromptLearner(tiny_clip, PromptConfig(n_ctx=4, ctx_init=""))
    suffixes = learner._frozen_suffixes(names)
    assert suffixes.groups[0].dense is None and not shared_prefix.runs_dense(suffixes, learner.ctx, False)
    joint = JointPrompts([learner, PromptLearner(tiny_clip, PromptConfig(n_ctx=4, ctx_init=""))],
                         [names[:35], names[35:]])  # two blocks of 145 rows: dense
    assert shared_prefix.runs_dense(joint.suffixes, learner.ctx, False)
    uneven = JointPrompts(joint.learners, [names[:40], names[40:]])  # blocks of 165 rows, one 12% padding
    assert not shared_prefix.runs_dense(uneven.suffixes, learner.ctx, False)


@pytest.fixture(scope="module")
def scaled_quick_gelu_clip(test_clip):
    """The test CLIP with LayerScale (random gammas) and QuickGELU in every text block, as some open_clip
    towers have; open_clip's own modules compute the whole-prompt reference."""
    backbone = load_backbone(test_clip.cfg)
    backbone.model.load_state_dict(test_clip.model.state_dict())
    generator = torch.Generator().manual_seed(5)
    for block in backbone.transformer.resblocks:
        for name in ("ls_1", "ls_2"):
            scale = LayerScale(backbone.transformer.width)
            scale.gamma.data = torch.rand(backbone.transformer.width, generator=generator) + 0.5
            setattr(block, name, scale.requires_grad_(False))
        block.mlp.gelu = QuickGELU()
    backbone.dense_text = dense_pass.supports(backbone.transformer.resblocks)
    return backbone


def test_layer_scale_and_quick_gelu_blocks_equal_whole_prompts(scaled_quick_gelu_clip):
    backbone = scaled_quick_gelu_clip
    assert backbone.dense_text
    per_prompt = copy.copy(backbone)
    per_prompt.dense_text = False
    names = class_names(backbone)
    weights = loss_weights(backbone, len(names))
    ctx = torch.randn(4, backbone.token_dim, generator=torch.Generator().manual_seed(1))
    results = {}
    for path, tower in (("dense", backbone), ("per-prompt", per_prompt)):
        learner = PromptLearner(tower, PromptConfig(n_ctx=4, ctx_init=""))
        assert shared_prefix.runs_dense(learner._frozen_suffixes(names), ctx, False) == (path == "dense")

        def encode(c, learner=learner):
            learner.ctx.data = c.detach()
            return learner(names)

        features = encode(ctx)
        results[path] = (features.detach(), torch.autograd.grad((weights * features).sum(), learner.ctx)[0])
    whole = features_and_ctx_gradient(lambda c: whole_prompts(learner, names, c), ctx, weights)
    for path in results:
        torch.testing.assert_close(results[path][0], whole[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(results[path][1], whole[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("part", ["tanh GELU", "SiLU", "dropout in the MLP", "no LayerNorm bias"])
def test_blocks_with_parts_it_does_not_write_out_keep_the_autograd_path(test_clip, part):
    blocks = copy.deepcopy(test_clip.transformer.resblocks)
    assert dense_pass.supports(blocks)
    block = blocks[-1]
    if part == "tanh GELU":
        block.mlp.gelu = nn.GELU(approximate="tanh")
    elif part == "SiLU":
        block.mlp.gelu = nn.SiLU()
    elif part == "dropout in the MLP":
        block.mlp.add_module("drop", nn.Dropout(0.1))
    else:
        block.ln_2.bias = None
    assert not dense_pass.supports(blocks)
