"""Frozen-image features, computed once per (weights, image, transform, view) and shared on disk.

The image tower never trains, so a training step needs only the features of the augmented view it
samples. View `v` of an image is the training transform run under a seed derived from the image's
content and `v`, so it is the same tensor on every machine and in the cached and uncached paths.

Layout: `<cache_dir>/<backbone key>/<transform key>/<digest[:2]>/<digest>.pt`, one float32 tensor
[n_views, E] per image, written to a temporary name and renamed, so two processes filling the same
cache at once only ever leave complete files (both write identical content; the last rename wins).

The cache heals itself: a file that cannot be loaded (truncated by a full disk or a killed copy, a
foreign file) or that holds the wrong shape is recomputed and replaced, with one warning line per call
saying how many; a cache that cannot be written costs speed, never the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from .backbone import Backbone
from .data.images import read_rgb
from .data.types import Item

ENCODE_BATCH = 64
log = logging.getLogger(__name__)


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
    """The image through `transform` [3, H, W]; view `v` seeds the transform's randomness (None: eval).

    Raises UnreadableImageError (a DataError naming the file and its dataset) if the file cannot be decoded.
    """
    image = read_rgb(path)
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
        pairs = zip(indices.tolist(), views.tolist(), strict=True)
        images = [render_view(self.items[i].path, self.transform, int(v)) for i, v in pairs]
        return self.backbone.encode_images(torch.stack(images))


class FeatureStore:
    """Computes image features with a frozen backbone, reading and filling the on-disk cache when enabled."""

    def __init__(self, backbone: Backbone, cache_dir: Path | None, enabled: bool = True) -> None:
        self.backbone = backbone
        self.enabled = enabled
        root = cache_dir or default_cache_dir()
        self.root = root / _safe(backbone.key)
        self._feature_dim: int | None = None

    def features(
        self, items: Sequence[Item], transform: Callable, transform_key: str, views: int | None,
    ) -> torch.Tensor:
        """Features of `items`: [N, views, E] for augmented views, or [N, E] when `views` is None (eval)."""
        n_views = 1 if views is None else views
        paths = [self._path(item, transform_key) for item in items] if self.enabled else []
        found, n_damaged = self._read_cache(paths, n_views)
        missing = [i for i in range(len(items)) if i not in found]
        unsaved: list[OSError] = []
        for start in range(0, len(missing), ENCODE_BATCH):
            batch = missing[start : start + ENCODE_BATCH]
            encoded = self._encode(items, batch, transform, views)  # [b, n_views, E]
            for row, index in enumerate(batch):
                found[index] = encoded[row]
                if self.enabled:
                    _in_memory[paths[index]] = encoded[row].clone()
                    _save_or_note(encoded[row].clone(), paths[index], unsaved)
        self._warn(n_damaged, unsaved)
        stacked = torch.stack([found[i] for i in range(len(items))]).to(self.backbone.device)  # [N, n_views, E]
        return stacked[:, 0] if views is None else stacked

    def _read_cache(self, paths: Sequence[Path], n_views: int) -> tuple[dict[int, torch.Tensor], int]:
        """Cached features with at least `n_views` views, by item index, and how many files were damaged."""
        found: dict[int, torch.Tensor] = {}
        n_damaged = 0
        for index, path in enumerate(paths):
            cached = _in_memory.get(path)
            if cached is None and path.exists():
                cached = _load_valid(path, self.feature_dim)
                if cached is None:
                    n_damaged += 1
                    continue
                _in_memory[path] = cached
            # A file with fewer views than asked for is complete, just too short: recomputed, not damaged.
            if cached is not None and cached.shape[0] >= n_views:
                found[index] = cached[:n_views]
        return found, n_damaged

    def _warn(self, n_damaged: int, unsaved: Sequence[OSError]) -> None:
        """One line per problem kind and call: a user sees the cache healed, not a line per file."""
        if n_damaged:
            log.warning("Feature cache: recomputed and replaced %s (unreadable or of the wrong shape) under %s.",
                        _count(n_damaged, "damaged file", "damaged files"), self.root)
        if unsaved:
            log.warning("Feature cache: could not write %s under %s (%s); the features were used but will be "
                        "computed again next time.", _count(len(unsaved), "file", "files"), self.root, unsaved[0])

    @property
    def feature_dim(self) -> int:
        """E, the width of an image feature, which every cached file must have."""
        if self._feature_dim is None:
            self._feature_dim = _feature_dim(self.backbone)
        return self._feature_dim

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


def _load_valid(path: Path, feature_dim: int) -> torch.Tensor | None:
    """The tensor in a cache file, or None if the file is damaged: unloadable, or not a finite [V, E] float32."""
    try:
        with warnings.catch_warnings():
            # A foreign pickle makes torch warn about its protocol; the caller's one line already reports it.
            warnings.simplefilter("ignore")
            tensor = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - a truncated or foreign file fails in many ways; each means "recompute"
        return None
    ok = (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.dim() == 2
          and tensor.shape[0] >= 1 and tensor.shape[1] == feature_dim and bool(torch.isfinite(tensor).all()))
    return tensor if ok else None


def _feature_dim(backbone: Backbone) -> int:
    """E from the image tower's declared output width (every open_clip tower has one), else by encoding once."""
    declared = getattr(getattr(backbone.model, "visual", None), "output_dim", None)
    if isinstance(declared, int):
        return declared
    probe = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
    return int(backbone.encode_images(probe).shape[-1])


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _save_or_note(tensor: torch.Tensor, path: Path, unsaved: list[OSError]) -> None:
    """Save to the cache; a cache that cannot be written (full disk, read-only) is noted, not fatal."""
    try:
        _atomic_save(tensor, path)
    except OSError as error:
        unsaved.append(error)


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
