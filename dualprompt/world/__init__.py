"""The offline world: a procedurally generated colour x shape image world and a tiny CLIP trained on it.

What the rest of the project uses: the open_clip model name and config file of the tiny CLIP, its
committed checkpoint, its tokenizer, and the image normalisation it was pretrained with. The
normalisation is open_clip's default (the OpenAI mean/std), which open_clip attaches to
`model.visual.image_mean` / `image_std` for any registered config, so the two always agree.

Loading (no download; open_clip only reads the two files):

    import open_clip
    from dualprompt import world
    open_clip.add_model_config(world.CONFIG_PATH)
    model = open_clip.create_model(world.TINY_MODEL_NAME, pretrained=str(world.CHECKPOINT_PATH))
    tokenizer = world.build_tokenizer()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualprompt.world.tokenizer import WorldTokenizer

TINY_MODEL_NAME = "tiny-synthetic"
TINY_PRETRAINED_TAG = "synthetic"
CONFIG_PATH: Path = Path(__file__).with_name(f"{TINY_MODEL_NAME}.json")
CHECKPOINT_PATH: Path = Path(__file__).with_name(f"{TINY_MODEL_NAME}.safetensors")
PROVENANCE_PATH: Path = Path(__file__).with_name(f"{TINY_MODEL_NAME}.provenance.json")

# open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD, repeated here so that importing this package
# does not import open_clip; tests check they equal what open_clip attaches to the model.
IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "CHECKPOINT_PATH",
    "CONFIG_PATH",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "PROVENANCE_PATH",
    "TINY_MODEL_NAME",
    "TINY_PRETRAINED_TAG",
    "build_tokenizer",
]


def build_tokenizer() -> WorldTokenizer:
    """The tiny CLIP's tokenizer (imported on use: the catalogue imports this package without torch)."""
    from dualprompt.world.tokenizer import build_tokenizer as build

    return build()
