"""Image transforms of the protocol (CoOp/Dassl) and a plain torch Dataset over `Item`s."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dualprompt.data.types import Item

Transform = Callable[[Image.Image], torch.Tensor]


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> tuple[Transform, Transform]:
    """Return (train, eval) transforms; size, mean and std come from the backbone.

    Train: random resized crop (scale `crop_scale`, bicubic) + horizontal flip, as CoOp's
    `random_resized_crop, random_flip, normalize`. Eval: resize the shorter side to `image_size`
    (bicubic) then center crop; Dassl's October-2021 change to this eval transform moved published
    numbers (CoOp issue #8), so it must stay exactly this.
    """
    normalize = T.Normalize(mean=tuple(mean), std=tuple(std))
    train = T.Compose([
        T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        normalize,
    ])
    evaluate = T.Compose([
        T.Resize(image_size, interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        normalize,
    ])
    return train, evaluate


class ImageDataset(Dataset):
    """Items as (image tensor, label) pairs; images are opened with PIL and converted to RGB."""

    def __init__(self, items: Sequence[Item], transform: Transform) -> None:
        self.items = tuple(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        # convert() loads the pixels, so the file can be closed before the transform runs.
        with Image.open(item.path) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb), item.label
