"""The backbone: exact truncated text encoding, and clear errors for bad backbones and contexts."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from dualprompt import dense_pass, shared_prefix
from dualprompt.backbone import Backbone, load_backbone
from dualprompt.config import BackboneConfig, ConfigError, PromptConfig
from dualprompt.prompt_learner import JointPrompts, PromptLearner

PROMPTS = ["a photo of a dog.", "a photo of a great crested newt, a type of amphibian.", "x."]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_truncated_encoding_matches_full_context(test_clip):
    """Stopping at the longest prompt's EOT equals open_clip's own 77-token encode_text (causal attention)."""
    full_ids = test_clip.tokenizer(PROMPTS)  # [3, 77], padded to the full context
    with torch.no_grad():
        full = torch.nn.functional.normalize(test_clip.model.encode_text(full_ids), dim=-1)
    truncated = test_clip.encode_texts(PROMPTS)
    assert truncated.shape == full.shape
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=0)


def test_chunked_encoding_matches_unchunked(test_clip):
    chunked = load_backbone(BackboneConfig(backbone="test-clip", pretrained="random", text_chunk_size=1))
    chunked.model.load_state_dict(test_clip.model.state_dict())
    torch.testing.assert_close(chunked.encode_texts(PROMPTS), test_clip.encode_texts(PROMPTS), atol=1e-6, rtol=0)


def test_chunked_training_gives_the_same_features_and_gradients(test_clip):
    """Chunks recomputed in backward (the 1000-class memory mechanism) change nothing but memory."""
    chunked = load_backbone(BackboneConfig(backbone="test-clip", pretrained="random", text_chunk_size=3))
    chunked.model.load_state_dict(test_clip.model.state_dict())
    names = tuple(f"class number {i}" for i in range(7))
    plain_learner = PromptLearner(test_clip, PromptConfig(), torch.Generator().manual_seed(0))
    chunked_learner = PromptLearner(chunked, PromptConfig(), torch.Generator().manual_seed(0))
    plain, chunked_features = plain_learner(names), chunked_learner(names)
    weights = loss_weights(test_clip, len(names))  # not square().sum(): constant on unit vectors, zero gradient
    (grad_plain,) = torch.autograd.grad((weights * plain).sum(), plain_learner.ctx)
    (grad_chunked,) = torch.autograd.grad((weights * chunked_features).sum(), chunked_learner.ctx)
    assert grad_plain.abs().max() > 0.1
    torch.testing.assert_close(chunked_features, plain)
    torch.testing.assert_close(grad_chunked, grad_plain)


def test_soft_prompt_with_init_words_equals_the_hand_written_prompt(test_clip):
    """With ctx initialised from "a photo of a", the soft prompt is exactly the text "a photo of a {}."."""
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=4, ctx_init="a photo of a"))
    with torch.no_grad():
        soft = learner(("dog", "sea lion"))
    hand = test_clip.encode_texts(["a photo of a dog.", "a photo of a sea lion."])
    torch.testing.assert_close(soft, hand, atol=1e-5, rtol=0)


def test_unknown_backbone_names_the_closest(test_clip):
    with pytest.raises(ConfigError, match="backbone: 'ViT-B-61' is not an open_clip model name.*ViT-B-16"):
        load_backbone(BackboneConfig(backbone="ViT-B-61", pretrained="openai"))


def test_unknown_pretrained_tag(test_clip):
    with pytest.raises(ConfigError, match="pretrained: 'imagenet' is not a known tag for ViT-B-16"):
        load_backbone(BackboneConfig(backbone="ViT-B-16", pretrained="imagenet"))


def test_context_longer_than_the_text_tower_is_refused(test_clip):
    learner = PromptLearner(test_clip, PromptConfig(n_ctx=64, ctx_init=""))
    ten_words = "one two three four five six seven eight nine ten"
    assert learner((ten_words,)).shape == (1, 64)  # SOS + 64 + 10 words + "." + EOT = 77 tokens: fits
    with pytest.raises(ConfigError, match="n_ctx: a prompt needs 78 tokens .* holds 77; lower n_ctx"):
        learner((ten_words + " eleven",))


# ---- the shared [SOS][ctx] prefix (shared_prefix.py) against whole prompts -----------------------------
# Exact: features and ctx gradients equal open_clip's own encode_text and the whole-prompt path to 1e-5.

MODES = {  # BackboneConfig overrides: chunks over the class axis and per-layer checkpointing, alone and together
    "plain": {},  # these passes are small: dense_pass.py runs them
    "per-prompt": {"dense_text": False},  # shared_prefix.py's own attention, as larger passes run
    "chunked": {"text_chunk_size": 2},
    "checkpoint": {"checkpoint_text": True},
    "chunked+checkpoint": {"text_chunk_size": 2, "checkpoint_text": True},
}
_configured: dict[tuple, Backbone] = {}


def configured(backbone: Backbone, **options) -> Backbone:
    """`backbone` (same weights) with other BackboneConfig `options`; loaded once per session."""
    key = (backbone.cfg.backbone, *sorted(options.items()))
    if not options:
        return backbone
    if key not in _configured:
        dense = options.pop("dense_text", backbone.dense_text)  # not a config field: decided at load
        other = load_backbone(replace(backbone.cfg, **options))
        other.model.load_state_dict(backbone.model.state_dict())
        other.dense_text = dense
        _configured[key] = other
    return _configured[key]


def class_names(backbone: Backbone) -> tuple[str, ...]:
    """Five names of 1 to 5 words (so 2 to 6 tokens with the "."), in the backbone's vocabulary."""
    if backbone.cfg.backbone == "test-clip":
        return ("dog", "sea lion", "great crested newt, a type", "x", "red panda")
    from dualprompt.world.vocab import COLOURS, SHAPES

    colours, shapes = list(COLOURS), list(SHAPES)
    return (f"{colours[0]} {shapes[0]}", shapes[1], f"{colours[1]} {colours[2]} {shapes[2]}", shapes[3],
            f"{colours[3]} {colours[4]} {colours[5]} {colours[6]} {shapes[4]}")


def context_ids(backbone: Backbone, names: tuple[str, ...], n_ctx: int) -> torch.Tensor:
    """n_ctx distinct word ids that occur nowhere else in the prompts: the gradient of the embedding table's
    row for each is then exactly the gradient of that context vector."""
    used = {backbone.tokenizer.sot_token_id, backbone.tokenizer.eot_token_id, 0}
    for name in names:
        used.update(backbone.word_ids(name + "."))
    free = [i for i in range(1, backbone.text.token_embedding.num_embeddings) if i not in used]
    return torch.tensor(free[:: max(1, len(free) // n_ctx)][:n_ctx])


def loss_weights(backbone: Backbone, n: int) -> torch.Tensor:
    """Fixed random unit vectors [n, E] h_i, read out as the loss sum_i <w_i, h_i> / n: a KgCoOp-style mean
    cosine, whose gradient reaches every direction of ctx at the scale of a training loss's (0.1 to 1),
    so an absolute 1e-5 is a relative 1e-5 to 1e-4. (A loss whose gradient is 20x larger shows 20x larger
    float32 round-off: today's whole-prompt path and open_clip's encode_text then differ by 2e-5.)"""
    h = torch.randn(n, backbone.text.text_projection.shape[-1], generator=torch.Generator().manual_seed(3))
    return F.normalize(h, dim=-1) / n


def features_and_ctx_gradient(encode, ctx: torch.Tensor, weights: torch.Tensor):
    """encode(ctx) -> [C, E]; returns (features, d(sum(weights * features))/d ctx)."""
    ctx = ctx.detach().clone().requires_grad_(True)
    features = encode(ctx)
    (grad,) = torch.autograd.grad((weights * features).sum(), ctx)
    return features.detach(), grad


def whole_prompts(learner: PromptLearner, names: tuple[str, ...], ctx: torch.Tensor) -> torch.Tensor:
    """The generic path: the context spliced into every prompt, each prompt encoded whole."""
    embeddings, eot = learner._frozen_tokens(names)  # [C, L, D], [C]
    ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)  # [C, M, D]
    prompts = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + learner.n_ctx :]], dim=1)
    return learner.backbone.encode_embeddings(prompts, eot)


def open_clip_encode_text(backbone: Backbone, names: tuple[str, ...], ids: torch.Tensor, weights: torch.Tensor):
    """open_clip's own encode_text over the full context, with the context as real words `ids`: features,
    and the context's gradient as the gradient of those rows of the embedding table."""
    tokens, _ = backbone.prompt_ids([backbone.word_ids(name + ".") for name in names], n_ctx=len(ids))
    tokens[:, 1 : 1 + len(ids)] = ids
    table = backbone.text.token_embedding.weight
    table.requires_grad_(True)
    try:
        features = F.normalize(backbone.model.encode_text(tokens), dim=-1)
        (grad,) = torch.autograd.grad((weights * features).sum(), table)
    finally:
        table.requires_grad_(False)
    return features.detach(), grad[ids]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n_ctx", [1, 4, 16])
@pytest.mark.parametrize("model", ["test_clip", "tiny_clip"])
def test_shared_prefix_equals_open_clip_and_whole_prompts(request, model, n_ctx, mode):
    base = request.getfixturevalue(model)
    backbone = configured(base, **MODES[mode])
    assert backbone.shares_prefix
    names = class_names(backbone)
    learner = PromptLearner(backbone, PromptConfig(n_ctx=n_ctx, ctx_init=""))
    ids = context_ids(backbone, names, n_ctx)
    assert len(ids) == n_ctx
    ctx = backbone.embed_tokens(ids)  # [M, D]: the soft prompt is then the text prompt with these words
    weights = loss_weights(backbone, len(names))

    def shared(c: torch.Tensor) -> torch.Tensor:
        learner.ctx.data = c.detach()
        features = learner(names)
        return features, torch.autograd.grad((weights * features).sum(), learner.ctx)[0]

    features, grad = shared(ctx)
    dense = shared_prefix.runs_dense(learner._frozen_suffixes(names), learner.ctx, backbone.cfg.checkpoint_text)
    assert dense == (mode == "plain")
    assert grad.abs().max() > 1e3 * 1e-5  # the gradient is far above the tolerance below (see loss_weights)
    reference, reference_grad = open_clip_encode_text(base, names, ids, weights)
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=0)
    whole, whole_grad = features_and_ctx_gradient(lambda c: whole_prompts(learner, names, c), ctx, weights)
    torch.testing.assert_close(features, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, whole_grad, atol=1e-5, rtol=0)
    with torch.no_grad():  # evaluation: no graph, chunks without recomputation
        torch.testing.assert_close(learner(names), features, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["test_clip", "tiny_clip"])
def test_shared_prefix_with_a_random_context_equals_whole_prompts(request, model):
    """A context far from any word embedding, and the class list split differently into chunks (a chunk of
    one name has no padding slots; the others pad the shorter names' attention sequences)."""
    base = request.getfixturevalue(model)
    names = class_names(base)
    ctx = torch.randn(4, base.token_dim, generator=torch.Generator().manual_seed(1))
    weights = loss_weights(base, len(names))
    whole_learner = PromptLearner(base, PromptConfig(n_ctx=4, ctx_init=""))
    expected = features_and_ctx_gradient(lambda c: whole_prompts(whole_learner, names, c), ctx, weights)
    padded = set()
    for chunk in (1, 3, 4, 5, 6):
        learner = PromptLearner(configured(base, text_chunk_size=chunk), PromptConfig(n_ctx=4, ctx_init=""))
        padded.update(group.seq_index is not None for group in learner._frozen_suffixes(names).groups)

        def shared(c, learner=learner):
            learner.ctx.data = c.detach()
            return learner(names)

        features = shared(ctx)
        (grad,) = torch.autograd.grad((weights * features).sum(), learner.ctx)
        torch.testing.assert_close(features, expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, expected[1], atol=1e-5, rtol=0)
    assert padded == {True, False}  # passes whose names differ in length (padded slots) and passes without


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", ["test_clip", "tiny_clip"])
def test_several_learners_in_one_pass_equal_their_own_passes(request, model, mode, monkeypatch):
    """`JointPrompts`: three jobs' contexts, each the prefix of its own class list (of other lengths and
    names), in one pass: each job's features and ctx gradient equal its own pass's to 1e-5; a job's
    gradient does not depend on the other jobs' classes. (dense_pass.py pads the shorter jobs' blocks
    here more than it would choose to: allowed, so that padded blocks are tested.)"""
    monkeypatch.setattr(dense_pass, "MAX_PADDING", 1.0)
    backbone = configured(request.getfixturevalue(model), **MODES[mode])
    names = class_names(backbone)
    lists = [names, names[1:4], (names[4], names[0])]
    learners = [PromptLearner(backbone, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(seed))
                for seed in range(3)]
    weights = [loss_weights(backbone, len(classes)) for classes in lists]
    joint = JointPrompts(learners, lists)
    assert joint.suffixes is not None and joint.suffixes.n_prefixes == 3
    assert shared_prefix.runs_dense(joint.suffixes, learners[0].ctx, backbone.cfg.checkpoint_text) == (mode == "plain")
    features = joint()
    loss = sum((w * f).sum() for w, f in zip(weights, features, strict=True))
    grads = torch.autograd.grad(loss, [learner.ctx for learner in learners])
    for learner, classes, w, f, g in zip(learners, lists, weights, features, grads, strict=True):
        own = learner(classes)
        (own_grad,) = torch.autograd.grad((w * own).sum(), learner.ctx)
        assert f.shape == own.shape
        torch.testing.assert_close(f, own, atol=1e-5, rtol=0)
        torch.testing.assert_close(g, own_grad, atol=1e-5, rtol=0)
    with torch.no_grad():
        for f, again in zip(features, joint(), strict=True):
            torch.testing.assert_close(again, f.detach(), atol=1e-6, rtol=0)


def test_jointly_encoded_learners_must_share_the_context_length(tiny_clip):
    learners = [PromptLearner(tiny_clip, PromptConfig(n_ctx=n, ctx_init="")) for n in (4, 8)]
    with pytest.raises(ValueError, match="one context length"):
        JointPrompts(learners, [class_names(tiny_clip)] * 2)


def test_towers_without_open_clip_standard_blocks_fall_back_to_whole_prompts(test_clip):
    """shared_prefix.py runs only the blocks it knows; anything else keeps open_clip's own modules."""
    assert shared_prefix.supports(test_clip.text)
    no_mask = copy.deepcopy(test_clip.text)
    no_mask.attn_mask = None  # bidirectional attention: a prefix would see the class name
    assert not shared_prefix.supports(no_mask)
    subclassed = copy.deepcopy(test_clip.text)
    block = subclassed.transformer.resblocks[1]
    block.__class__ = type("Patched", (type(block),), {})  # may compute something else in forward
    assert not shared_prefix.supports(subclassed)

    fallback = copy.copy(test_clip)
    fallback.shares_prefix = False
    names = class_names(test_clip)
    learner = PromptLearner(fallback, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    assert learner._frozen_suffixes(names) is None
    with torch.no_grad():
        expected = whole_prompts(learner, names, learner.ctx)
        torch.testing.assert_close(learner(names), expected, atol=0, rtol=0)  # the very same code path
        shared = PromptLearner(test_clip, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
        torch.testing.assert_close(shared(names), expected, atol=1e-5, rtol=0)


def test_shared_prefix_under_bf16_autocast_matches_whole_prompts(tiny_clip):
    """`precision=amp` (bf16 autocast of the text tower; CUDA in training, here the CPU's autocast): both
    paths run in bf16 and agree to bf16's resolution (2^-8 relative), not float32's, so the tolerance is
    two bf16 steps at 1.0; in float32 the same comparison is exact to 1e-5 (the tests above)."""
    names = class_names(tiny_clip)
    learner = PromptLearner(tiny_clip, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    weights = loss_weights(tiny_clip, len(names))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not shared_prefix.runs_dense(learner._frozen_suffixes(names), learner.ctx, False)  # float32 only
        shared, whole = learner(names), whole_prompts(learner, names, learner.ctx)
    assert shared.dtype == whole.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad((weights * shared.float()).sum(), learner.ctx)
    (whole_grad,) = torch.autograd.grad((weights * whole.float()).sum(), learner.ctx)
    torch.testing.assert_close(shared.float(), whole.float(), atol=2**-7, rtol=0)
    torch.testing.assert_close(grad, whole_grad, atol=2**-7, rtol=0)


def test_mixed_precision_is_float32_on_a_cpu(tiny_clip):
    """`precision=amp` autocasts the text tower on CUDA only (`Backbone.text_autocast`): on a CPU training
    runs in float32, with the same features as `precision=fp32`."""
    amp = configured(tiny_clip, precision="amp")
    names = class_names(tiny_clip)
    learners = [PromptLearner(b, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
                for b in (tiny_clip, amp)]
    with torch.no_grad(), amp.text_autocast():
        features = [learner(names) for learner in learners]
    assert features[1].dtype == torch.float32
    torch.testing.assert_close(features[1], features[0], atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "amp"])
@pytest.mark.parametrize("model", ["test_clip", "tiny_clip"])
def test_shared_prefix_on_cuda_matches_whole_prompts_and_the_cpu(request, model, precision):
    """On CUDA (cuBLAS, the GPU's fused attention kernels): the shared-prefix pass equals whole prompts and
    the CPU's float32 result to 1e-5 in float32. Under training's bf16 autocast (`text_autocast`) it equals
    whole prompts to two bf16 steps at 1.0 (as the CPU autocast test above), and the CPU's float32 to four
    (bf16 against float32 is 0.0052 at most on the CPU's autocast, for these two towers)."""
    base = request.getfixturevalue(model)
    backbone = load_backbone(replace(base.cfg, precision=precision), "cuda")
    backbone.model.load_state_dict(base.model.state_dict())
    assert backbone.shares_prefix
    names = class_names(base)
    weights = loss_weights(base, len(names))
    cpu = PromptLearner(base, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    cpu_features, cpu_grad = features_and_ctx_gradient(lambda c: whole_prompts(cpu, names, c), cpu.ctx, weights)
    learner = PromptLearner(backbone, PromptConfig(n_ctx=4, ctx_init=""), torch.Generator().manual_seed(0))
    with backbone.text_autocast():
        shared = learner(names)
        whole = whole_prompts(learner, names, learner.ctx)
    bf16_ran = (shared.detach().float().cpu() - cpu_features).abs().max() > 1e-4  # far above float32 round-off
    assert bf16_ran == (precision == "amp")
    cuda_weights = weights.cuda()
    (grad,) = torch.autograd.grad((cuda_weights * shared.float()).sum(), learner.ctx)
    (whole_grad,) = torch.autograd.grad((cuda_weights * whole.float()).sum(), learner.ctx)
    amp = precision == "amp"
    for features, ctx_grad, tolerance in ((whole, whole_grad, 2**-7 if amp else 1e-5),
                                          (cpu_features, cpu_grad, 2**-6 if amp else 1e-5)):
        torch.testing.assert_close(shared.float().cpu(), features.float().cpu(), atol=tolerance, rtol=0)
        torch.testing.assert_close(grad.cpu(), ctx_grad.cpu(), atol=tolerance, rtol=0)
