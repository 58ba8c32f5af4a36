"""Frozen-image features, computed once per (weights, image, transform, view) and shared on disk.

The image tower never trains, so a training step needs only the features of the augmented view it
samples. View `v` of an image is the training transform run under a seed derived from the image's
content and `v`, so it is the same tensor on every machine and in the cached and uncached paths.

Layout: `<cache_dir>/<backbone key>/<transform key>/<digest[:2]>/<digest>.pt`, one float32 tensor
[n_views, E] per image, written to a temporary name and renamed, so two processes filling the same
cache at once only ever leave complete files (both write identical content; the last rename wins).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from PIL import Image

from .backbone import Backbone
from .data.types import Item

ENCODE_BATCH = 64


def default_cache_dir() -> Path:
    return Path(os.environ.get("DUALPROMPT_CACHE_DIR", Path.home() / ".cache" / "dualprompt" / "features"))


_digests: dict[tuple[str, int, int], str] = {}


def image_digest(path: str) -> str:
    """SHA-1 of the image file's bytes (memoised per path, size and mtime in this process)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        with open(path, "rb") as handle:
            _digests[key] = hashlib.sha1(handle.read()).hexdigest()
    return _digests[key]


def view_seed(path: str, view: int) -> int:
    """The seed of view `view` of an image: from its content, so it is the same on every machine."""
    return int(image_digest(path)[:12], 16) + 1_000_003 * view


def render_view(path: str, transform: Callable, view: int | None) -> torch.Tensor:
    """The image through `transform` [3, H, W]; view `v` seeds the transform's randomness (None: eval)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if view is None:
            return transform(image)
        with torch.random.fork_rng(devices=[]):
            # Seed the CPU generator directly: torch.manual_seed would also queue a lazy CUDA seed,
            # which costs about 2 ms per image.
            torch.default_generator.manual_seed(view_seed(path, view))
            return transform(image)


class ViewSource(Protocol):
    """Where training features come from: `get(indices [B], views [B]) -> [B, E]` normalised.

    `encodes_images`: whether `get` runs the image tower (then data-parallel ranks split the batch).
    """

    encodes_images: bool

    def get(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor: ...


class CachedViews:
    """Training features precomputed for every (image, view): a lookup per step."""

    encodes_images = False

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features  # [N, V, E]

    def get(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.features[indices, views]


class EncodedViews:
    """The straightforward path: every step renders and encodes its images (for exactness checks)."""

    encodes_images = True

    def __init__(self, backbone: Backbone, items: Sequence[Item], transform: Callable) -> None:
        self.backbone, self.items, self.transform = backbone, items, transform

    def get(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        images = [render_view(self.items[i].path, self.transform, int(v)) for i, v in zip(indices.tolist(), views.tolist())]
        return self.backbone.encode_images(torch.stack(images))


class FeatureStore:
    """Computes image features with a frozen backbone, reading and filling the on-disk cache when enabled."""

    def __init__(self, backbone: Backbone, cache_dir: Path | None, enabled: bool = True) -> None:
        self.backbone = backbone
        self.enabled = enabled
        root = cache_dir or default_cache_dir()
        self.root = root / _safe(backbone.key)

    def features(self, items: Sequence[Item], transform: Callable, transform_key: str, views: int | None) -> torch.Tensor:
        """Features of `items`: [N, views, E] for augmented views, or [N, E] when `views` is None (eval)."""
        n_views = 1 if views is None else views
        found: dict[int, torch.Tensor] = {}
        paths = [self._path(item, transform_key) for item in items] if self.enabled else []
        for index, path in enumerate(paths):
            cached = _read_cached(path)
            if cached is not None and cached.shape[0] >= n_views:
                found[index] = cached[:n_views]
        missing = [i for i in range(len(items)) if i not in found]
        for start in range(0, len(missing), ENCODE_BATCH):
            batch = missing[start : start + ENCODE_BATCH]
            encoded = self._encode(items, batch, transform, views)  # [b, n_views, E]
            for row, index in enumerate(batch):
                found[index] = encoded[row]
                if self.enabled:
                    _atomic_save(encoded[row].clone(), paths[index])
                    _in_memory[paths[index]] = encoded[row].clone()
        stacked = torch.stack([found[i] for i in range(len(items))]).to(self.backbone.device)  # [N, n_views, E]
        return stacked[:, 0] if views is None else stacked

    def _encode(self, items: Sequence[Item], batch: list[int], transform: Callable, views: int | None) -> torch.Tensor:
        view_ids = [None] if views is None else list(range(views))
        per_view = []
        for view in view_ids:
            images = torch.stack([render_view(items[i].path, transform, view) for i in batch])
            per_view.append(self.backbone.encode_images(images).float().cpu())  # [b, E]
        return torch.stack(per_view, dim=1)  # [b, n_views, E]

    def _path(self, item: Item, transform_key: str) -> Path:
        digest = image_digest(item.path)
        return self.root / _safe(transform_key) / digest[:2] / f"{digest}.pt"


# Features already read in this process: a sweep worker runs many jobs over the same images, and one
# small file per image costs more to re-read than the rest of a tiny-model job.
_in_memory: dict[Path, torch.Tensor] = {}


def _read_cached(path: Path) -> torch.Tensor | None:
    if path not in _in_memory and path.exists():
        _in_memory[path] = torch.load(path, weights_only=True)
    return _in_memory.get(path)


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", key)


def _atomic_save(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(tensor, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
