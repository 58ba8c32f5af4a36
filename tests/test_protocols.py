"""The protocols as data: leak-free searches, the jobs each stage runs, the pseudo-split folds, the objective's SE."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualprompt.data.errors import DataError
from dualprompt.data.sampling import pseudo_split
from dualprompt.data.types import DatasetSplits, Item
from dualprompt.evaluate import accuracy_se, harmonic_mean, harmonic_mean_se, mean_se
from dualprompt.experiment import evaluation_items
from dualprompt.protocols import Evaluation, Job, Scope, all_protocols, get_protocol
from dualprompt.protocols.few_shot import epochs_for

SCOPE = Scope(datasets=("a", "b"), seeds=(1, 2, 3), search_seeds=(1,), shots=(16,), search_shots=(16,), folds=2,
              targets=("t1", "t2"))


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: p.name)
def test_every_search_is_leak_free(protocol):
    """A search never evaluates a test image or a class the protocol treats as unseen, and never targets."""
    for evaluation in protocol.search.evaluations:
        assert evaluation.split in ("val", "heldout"), evaluation
        assert evaluation.classes != "new", evaluation
        if evaluation.split == "heldout":  # images of classes trained on would not be held out
            assert evaluation.classes != protocol.search.train_classes
    assert not protocol.search.evaluates_targets and not protocol.search.saves_prompt
    assert all(job.targets == () for job in protocol.jobs("search", SCOPE))


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: p.name)
def test_every_final_stage_keeps_its_prompts_and_tests_on_test_images(protocol):
    assert protocol.final.saves_prompt
    assert all(e.split == "test" for e in protocol.final.evaluations)
    assert protocol.final.objective in protocol.final.metric_columns


def test_base_to_new_trains_on_base_and_tests_base_and_new_separately():
    protocol = get_protocol("base2new")
    assert protocol.final.train_classes == "base"
    assert [(e.metric, e.classes, e.images_of) for e in protocol.final.evaluations] == [
        ("acc_test_base", "base", "all"), ("acc_test_new", "new", "all"),
        ("acc_test_new_first_half", "new", "first_half"), ("acc_test_new_second_half", "new", "second_half")]
    assert protocol.final.hm_of == ("acc_test_base", "acc_test_new") and protocol.final.objective == "hm_test"
    assert protocol.search.pool == "base" and protocol.search.train_classes == "pseudobase"


def test_a_half_scores_the_images_of_its_labels_among_every_class_of_the_set():
    # Five classes: ceil(5 / 2) = 3, so the first half is labels 0-2 and the second labels 3-4, the cut
    # subsample_classes makes between base and new.
    test = tuple(Item(f"/img/{label}-{i}.png", label, f"c{label}") for label in range(5) for i in range(2))
    splits = DatasetSplits("toy", tuple(f"c{label}" for label in range(5)), (), (), test)
    first, second = (Evaluation("acc", "new", "test", images_of=half) for half in ("first_half", "second_half"))
    assert [i.label for i in evaluation_items(splits, first)] == [0, 0, 1, 1, 2, 2]
    assert [i.label for i in evaluation_items(splits, second)] == [3, 3, 4, 4]
    assert evaluation_items(splits, Evaluation("acc", "new", "test")) == test
    with pytest.raises(ValueError, match="Evaluation 'acc': images_of 'middle' is not one of all, first_half"):
        Evaluation("acc", "new", "test", images_of="middle")
    with pytest.raises(ValueError, match="split 'train' is not one of test, val, heldout"):
        Evaluation("acc", "new", "train")


def test_jobs_of_each_stage():
    b2n, xd, fs = get_protocol("base2new"), get_protocol("cross_dataset"), get_protocol("few_shot")
    assert b2n.jobs("search", SCOPE) == tuple(Job(d, 1, 16, f) for d in ("a", "b") for f in (0, 1))
    assert b2n.jobs("final", SCOPE) == tuple(Job(d, s, 16) for d in ("a", "b") for s in (1, 2, 3))
    assert xd.jobs("final", SCOPE) == tuple(Job(d, s, 16, 0, ("t1", "t2")) for d in ("a", "b") for s in (1, 2, 3))
    curve = Scope(("a",), (1, 2), (1,), (1, 2, 4), (4,))
    assert fs.jobs("final", curve) == tuple(Job("a", s, k) for k in (1, 2, 4) for s in (1, 2))
    assert fs.jobs("search", curve) == (Job("a", 1, 4),)


def test_few_shot_epochs_keep_coops_ratios():
    """CoOp: 50 epochs for 1 shot, 100 for 2 and 4, 200 for 8 and 16 (its 16-shot budget is 200)."""
    assert [epochs_for(200, k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert epochs_for(10, 1) == 2 and epochs_for(3, 1) == 1  # rounded, never zero


def _splits(n_classes: int) -> DatasetSplits:
    names = tuple(f"class {i}" for i in range(n_classes))
    train = tuple(Item(f"/x/{i}_{j}.png", i, names[i]) for i in range(n_classes) for j in range(3))
    val = tuple(Item(f"/v/{i}.png", i, names[i]) for i in range(n_classes))
    return DatasetSplits("d", names, train, val, ())


def test_pseudo_split_folds_are_the_rule_and_its_swap():
    base = _splits(5)  # ceil(5/2) = 3 pseudo-base classes in fold 0
    pseudo_base, pseudo_new = pseudo_split(base, fold=0)
    assert pseudo_base.classnames == base.classnames[:3] and pseudo_new.classnames == base.classnames[3:]
    swapped_base, swapped_new = pseudo_split(base, fold=1)
    assert swapped_base.classnames == base.classnames[3:] and swapped_new.classnames == base.classnames[:3]
    assert [item.label for item in swapped_base.train] == [0, 0, 0, 1, 1, 1]  # relabelled within the part
    assert pseudo_base.test == () and swapped_new.test == ()
    with pytest.raises(DataError, match="fold 2 does not exist"):
        pseudo_split(base, fold=2)


def test_harmonic_mean_standard_error_matches_a_binomial_simulation():
    """The delta-method SE of HM(a, b) against the spread of HM over simulated validation sets."""
    rng = np.random.default_rng(0)
    a, n_a, b, n_b = 80.0, 100, 60.0, 50
    sim_a = 100 * rng.binomial(n_a, a / 100, 200_000) / n_a
    sim_b = 100 * rng.binomial(n_b, b / 100, 200_000) / n_b
    simulated = (2 * sim_a * sim_b / (sim_a + sim_b)).std()
    assert harmonic_mean_se(a, n_a, b, n_b) == pytest.approx(simulated, rel=0.03)
    assert accuracy_se(80.0, 100) == pytest.approx(4.0)  # sqrt(0.8 * 0.2 / 100) = 0.04
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean_se(100.0, 10, 100.0, 10) == 0.0 and math.isnan(accuracy_se(50.0, 0))
    assert mean_se([3.0, 4.0]) == pytest.approx(2.5)  # sqrt(9 + 16) / 2
