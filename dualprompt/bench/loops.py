"""The two timed loops, (a) the field's and (b) ours, and one 1000-class training step for the memory check."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbone import load_backbone
from ..config import BackboneConfig, PromptConfig
from ..evaluate import accuracy
from ..features import CachedViews, EncodedViews, FeatureStore
from ..prompt_learner import PromptLearner
from ..train import train_prompt
from .field_loop import FieldPromptLearner, field_evaluate
from .measure import PeakMemory, Phases, sync
from .problem import Problem, distractor_pool


def run_field_loop(problem: Problem) -> dict:
    """(a): per-step image encoding, full-context prompts, prompts re-encoded per test batch."""
    device = problem.backbone.device
    learner = problem.learner(FieldPromptLearner)
    views = EncodedViews(problem.backbone, problem.train_items, problem.train_transform)
    with PeakMemory(device) as memory:
        phases = Phases(device)
        log = train_prompt(learner, views, problem.labels, problem.n_views, problem.classnames,
                           problem.handcrafted, problem.method, problem.optim, problem.seed)
        phases.end("train")
        acc = [field_evaluate(learner, s.items, problem.eval_transform, s.classnames) for s in problem.eval_sets]
        phases.end("eval")
    return {"steps": log.steps, **phases.result(cold=("train", "eval"), warm=("train", "eval")),
            "final_loss": log.epoch_terms[-1]["loss"], "accuracy": acc, "peak_bytes": memory.peak,
            "memory_how": memory.how, "model_rss_bytes": memory.base}


def run_our_loop(problem: Problem, cache_dir: Path | None = None) -> dict:
    """(b): features extracted once into an empty cache (cold), read back (warm, as every later trial of a
    sweep does), then `train_prompt` on cached views and one text pass per evaluation."""
    backbone, device = problem.backbone, problem.backbone.device
    learner = problem.learner(PromptLearner)
    train_key, eval_key = f"bench-train-{backbone.image_size}", f"bench-eval-{backbone.image_size}"
    with tempfile.TemporaryDirectory() as scratch, PeakMemory(device) as memory:
        root = cache_dir or Path(scratch)
        phases = Phases(device)
        store = FeatureStore(backbone, root)
        store.features(problem.train_items, problem.train_transform, train_key, views=problem.n_views)
        for eval_set in problem.eval_sets:
            store.features(eval_set.items, problem.eval_transform, eval_key, views=None)
        phases.end("feature")
        warm = FeatureStore(backbone, root)
        train_features = warm.features(problem.train_items, problem.train_transform, train_key, views=problem.n_views)
        test_features = [warm.features(s.items, problem.eval_transform, eval_key, views=None)
                         for s in problem.eval_sets]
        phases.end("load")
        log = train_prompt(learner, CachedViews(train_features), problem.labels, problem.n_views,
                           problem.classnames, problem.handcrafted, problem.method, problem.optim, problem.seed)
        phases.end("train")
        acc = []
        for eval_set, features in zip(problem.eval_sets, test_features, strict=True):
            with torch.no_grad():
                classifier = learner(eval_set.classnames)  # [C, E], once per evaluation
            acc.append(accuracy(classifier, features, eval_set.labels))
        phases.end("eval")
    return {"steps": log.steps, **phases.result(cold=("feature", "train", "eval"), warm=("load", "train", "eval")),
            "final_loss": log.epoch_terms[-1]["loss"], "accuracy": acc, "peak_bytes": memory.peak,
            "memory_how": memory.how, "model_rss_bytes": memory.base}


LOOPS = {"a": run_field_loop, "b": run_our_loop}


MEMORY_CHUNK = 100  # prompts per text-encoder chunk in the chunked variants
MEMORY_VARIANTS: dict[str, str] = {
    "field": "(a) full 77-token context, no mechanism",
    "none": "(b) truncated, shared prefix, no mechanism",
    "chunk": f"(b) text_chunk_size={MEMORY_CHUNK} (each chunk recomputed in backward)",
    "checkpoint": "(b) checkpoint_text (each layer recomputed in backward)",
}


def memory_step(variant: str, n_classes: int, backbone_name: str, pretrained: str, device: str,
                precision: str = "fp32", batch: int = 32) -> dict:
    """One training step of the soft prompt over `n_classes` ImageNet class names; its peak memory."""
    cfg = BackboneConfig(backbone=backbone_name, pretrained=pretrained, precision=precision,
                         text_chunk_size=MEMORY_CHUNK if variant == "chunk" else 0,
                         checkpoint_text=variant == "checkpoint")
    torch.manual_seed(0)
    backbone = load_backbone(cfg, device)
    learner = (FieldPromptLearner if variant == "field" else PromptLearner)(backbone, PromptConfig())
    names = tuple(distractor_pool(backbone)[:n_classes])
    embeddings, eot = learner._frozen_tokens(names)  # cached frozen token embeddings [C, 77, D]
    cache_bytes = embeddings.numel() * embeddings.element_size()
    if variant != "field" and (suffixes := learner._frozen_suffixes(names)) is not None:  # built once per class list
        cache_bytes += sum(g.suffix.numel() * g.suffix.element_size() for g in suffixes.groups)
    length = backbone.context_length if variant == "field" else int(eot.max()) + 1
    features = F.normalize(torch.randn(batch, backbone.text.text_projection.shape[-1], device=backbone.device), dim=-1)
    labels = torch.randint(n_classes, (batch,), device=backbone.device)
    with PeakMemory(backbone.device) as memory:
        start = time.perf_counter()
        with backbone.text_autocast():  # as in training: the text tower only, the loss in float32
            soft = learner(names).float()
        F.cross_entropy(backbone.logit_scale * features @ soft.T, labels).backward()
        sync(backbone.device)
        step_s = time.perf_counter() - start
    return {"variant": variant, "classes": n_classes, "tokens": length, "step_s": step_s,
            "peak_bytes": memory.peak, "memory_how": memory.how,
            "model_bytes": sum(t.numel() * t.element_size() for t in [*backbone.model.parameters(),
                                                                      *backbone.model.buffers()]),
            "token_cache_bytes": cache_bytes}
