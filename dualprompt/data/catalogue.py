"""The dataset catalogue as data (folders, readers, split files, counts, templates) and its look-ups.

Every fact here comes from the CoOp-family protocol: folder and split-file names are those of CoOp's
`datasets/*.py`, the (train, val, test) counts are those of the CoOp paper's dataset table, and the
hand-crafted templates are the KgCoOp ones (the hand-crafted view of KgCoOp and CoPrompt).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from dualprompt.data.errors import DataError
from dualprompt.data.image_folder import FOLDER_PREFIX, SPLIT_FILE
from dualprompt.data.synthetic import SYNTHETIC_SPECS
from dualprompt.data.types import DatasetSpec

# The five readers of `dualprompt.data.readers` (checked by the tests).
READER_NAMES = ("split_json", "imagenet", "fgvc_aircraft", "imagenet_variant", "image_folder")

IMAGENET_TEMPLATE = "a photo of a {}."
# A folder of a user's own images: CLIP's generic prompt (`--set template=...` gives a better one).
FOLDER_TEMPLATE = "a photo of a {}."

# Raw folder name -> class name used in prompts. CoOp applied these when it wrote the split JSONs, so on
# the published JSONs they change nothing; they are kept so that a split file written from raw folder
# names still gives the published class names. Caltech101 also ignores the folders BACKGROUND_Google and
# Faces_easy (not classes); the published split has neither, which its class count of 100 checks.
CALTECH101_FIXES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
EUROSAT_FIXES = {
    "AnnualCrop": "Annual Crop Land",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "SeaLake": "Sea or Lake",
}


def _split_json(
    name: str, folder: str, image_dir: str, split_file: str, template: str, n_classes: int,
    counts: tuple[int, int, int], fixes: dict[str, str] | None = None,
) -> DatasetSpec:
    """A dataset read from a CoOp `split_zhou_*.json` file."""
    return DatasetSpec(
        name=name, folder=folder, reader="split_json", template=template, n_classes=n_classes,
        image_dir=image_dir, split_file=split_file, expected_counts=counts,
        classname_fixes=dict(fixes or {}),
    )


def _imagenet_variant(name: str, folder: str, image_dir: str, n_classes: int, n_test: int) -> DatasetSpec:
    """A test-only ImageNet variant: `<folder>/<image_dir>/<class folder>/*` plus `<folder>/classnames.txt`."""
    return DatasetSpec(
        name=name, folder=folder, reader="imagenet_variant", template=IMAGENET_TEMPLATE,
        n_classes=n_classes, image_dir=image_dir, split_file="classnames.txt",
        expected_counts=(None, None, n_test), test_only=True,
    )


REAL_DATASETS: dict[str, DatasetSpec] = {
    # ImageNet's official val folder is the test set; train is listed from the wnid folders.
    "imagenet": DatasetSpec(
        name="imagenet", folder="imagenet", reader="imagenet", template=IMAGENET_TEMPLATE,
        n_classes=1000, image_dir="images", split_file="classnames.txt",
        expected_counts=(1_281_167, None, 50_000),
    ),
    "caltech101": _split_json(
        "caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
        "a photo of a {}.", 100, (4_128, 1_649, 2_465), CALTECH101_FIXES,
    ),
    "oxford_pets": _split_json(
        "oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
        "a photo of a {}, a type of pet.", 37, (2_944, 736, 3_669),
    ),
    # The StanfordCars split JSON lists paths relative to the dataset folder itself (cars_train/...,
    # cars_test/...), and its class names already have the year first.
    "stanford_cars": _split_json(
        "stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json",
        "a photo of a {}.", 196, (6_509, 1_635, 8_041),
    ),
    "oxford_flowers": _split_json(
        "oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
        "a photo of a {}, a type of flower.", 102, (4_093, 1_633, 2_463),
    ),
    "food101": _split_json(
        "food101", "food-101", "images", "split_zhou_Food101.json",
        "a photo of {}, a type of food.", 101, (50_500, 20_200, 30_300),
    ),
    # The official variant-level split of the FGVC-Aircraft tarball's data/ folder (no split JSON).
    "fgvc_aircraft": DatasetSpec(
        name="fgvc_aircraft", folder="fgvc_aircraft", reader="fgvc_aircraft",
        template="a photo of a {}, a type of aircraft.", n_classes=100, image_dir="images",
        split_file="variants.txt", expected_counts=(3_334, 3_333, 3_333),
    ),
    # The SUN397 split JSON already holds the readable names (path parts reversed, e.g. "indoor ...").
    "sun397": _split_json(
        "sun397", "sun397", "SUN397", "split_zhou_SUN397.json",
        "a photo of a {}.", 397, (15_880, 3_970, 19_850),
    ),
    "dtd": _split_json(
        "dtd", "dtd", "images", "split_zhou_DescribableTextures.json",
        "a photo of a {}, a type of texture.", 47, (2_820, 1_128, 1_692),
    ),
    "eurosat": _split_json(
        "eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json",
        "a centered satellite photo of {}.", 10, (13_500, 5_400, 8_100), EUROSAT_FIXES,
    ),
    "ucf101": _split_json(
        "ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
        "a photo of a person doing {}.", 101, (7_639, 1_898, 3_783),
    ),
    # ImageNetV2 names its class folders 0..999 (ImageNet label order), not by wnid.
    "imagenetv2": _imagenet_variant(
        "imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val", 1000, 10_000,
    ),
    "imagenet_sketch": _imagenet_variant("imagenet_sketch", "imagenet-sketch", "images", 1000, 50_889),
    "imagenet_a": _imagenet_variant("imagenet_a", "imagenet-adversarial", "imagenet-a", 200, 7_500),
    "imagenet_r": _imagenet_variant("imagenet_r", "imagenet-rendition", "imagenet-r", 200, 30_000),
}

CATALOGUE: dict[str, DatasetSpec] = {**REAL_DATASETS, **SYNTHETIC_SPECS}


def get_spec(name: str) -> DatasetSpec:
    """Return the catalogue entry of `name` (or of a `folder:<path>` dataset), or raise DataError.

    An unknown name's error suggests the closest valid names.
    """
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith(FOLDER_PREFIX):
        return folder_spec(name)
    close = difflib.get_close_matches(name, list(CATALOGUE), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else (
        f"valid names are {', '.join(sorted(CATALOGUE))}, or folder:<path> for a folder of class folders."
    )
    raise DataError(f"Unknown dataset {name!r}; {hint}")


def folder_spec(name: str) -> DatasetSpec:
    """The entry of `folder:<path>`: a folder of class folders, relative to the data root unless absolute.

    Its classes are only known on reading the folder, hence `n_classes=0`.
    """
    path = name[len(FOLDER_PREFIX):].strip()
    if not path:
        raise DataError(f"Dataset {name!r} names no folder; write folder:<path to a folder of class folders>, "
                        "e.g. folder:/data/my_photos (see 'Your own images' in DATASETS.md).")
    return DatasetSpec(name=name, folder=str(Path(path).expanduser()), reader="image_folder",
                       template=FOLDER_TEMPLATE, n_classes=0, split_file=SPLIT_FILE)


def needs_data_root(name: str) -> bool:
    """Whether reading dataset `name` needs the data root: all but folder: datasets named by an absolute path."""
    spec = get_spec(name)
    return spec.reader != "image_folder" or not Path(spec.folder).is_absolute()


def default_data_root() -> Path:
    """The data root used when none is given: $DUALPROMPT_DATA_ROOT, else ~/.cache/dualprompt/data."""
    from_env = os.environ.get("DUALPROMPT_DATA_ROOT")
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "dualprompt" / "data"
