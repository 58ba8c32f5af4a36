"""Cross-dataset and domain generalisation on the real datasets' layouts (fake trees, random-weight CLIP):
ImageNet with all 1,000 classes as the source, the other datasets and ImageNet's variants as targets,
A and R with their 200-class subsets. The offline miniatures are tested in test_sweep_protocols.py."""

from __future__ import annotations

import pytest
from fake_trees import write_imagenet, write_imagenet_variant, write_split_json_dataset

from dualprompt.config import Config
from dualprompt.data.catalogue import REAL_DATASETS
from dualprompt.experiment import Experiment
from dualprompt.protocols import get_protocol

SUBSET = list(range(0, 1000, 5))  # 200 of ImageNet's classes, as ImageNet-A and -R keep


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_imagenet(root, n_classes=1000, train_per_class=2, test_per_class=1)
    write_split_json_dataset(root, "caltech101", (2, 1, 1))
    write_split_json_dataset(root, "eurosat", (2, 1, 1))
    write_imagenet_variant(root, "imagenetv2", list(range(1000)), per_class=1, numeric_folders=True)
    write_imagenet_variant(root, "imagenet_sketch", list(range(1000)), per_class=1)
    write_imagenet_variant(root, "imagenet_a", SUBSET, per_class=1)
    write_imagenet_variant(root, "imagenet_r", SUBSET, per_class=1)
    return root


def source_config(data_root, tmp_path) -> Config:
    return Config().replace(backbone="test-clip", pretrained="random", data_root=str(data_root),
                            cache_dir=str(tmp_path / "features"), dataset="imagenet", method="coop", shots=1,
                            epochs=1, warmup_epochs=0, n_views=1, seed=1)


@pytest.mark.slow
def test_cross_dataset_trains_on_all_imagenet_classes_and_evaluates_targets_untouched(test_clip, data_root,
                                                                                     tmp_path):
    prompt = tmp_path / "imagenet.safetensors"
    result = Experiment(test_clip).run(source_config(data_root, tmp_path), "final", "cross_dataset",
                                       targets=("caltech101", "eurosat"), prompt_path=str(prompt))
    assert result.n_train_classes == 1000 and result.n_train_images == 1000  # all classes, 1 shot each
    assert result.steps > 0 and prompt.is_file()
    assert result.counts == {"n_test": 1000}  # the source's own test set: all 1,000 classes
    assert set(result.targets) == {"caltech101", "eurosat"}
    for name, target in result.targets.items():
        assert target.counts == {"n_test": REAL_DATASETS[name].n_classes}  # every class, 1 test image each
        assert 0.0 <= target.metrics["acc_test"] <= 100.0


@pytest.mark.slow
def test_domain_generalization_evaluates_the_variants_with_the_200_class_subsets(test_clip, data_root, tmp_path):
    protocol = get_protocol("domain_generalization")
    result = Experiment(test_clip).run(source_config(data_root, tmp_path), "final", protocol.name,
                                       targets=protocol.default_real_targets,
                                       prompt_path=str(tmp_path / "imagenet.safetensors"))
    assert set(result.targets) == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    counts = {name: target.counts["n_test"] for name, target in result.targets.items()}
    assert counts == {"imagenetv2": 1000, "imagenet_sketch": 1000, "imagenet_a": 200, "imagenet_r": 200}
