"""Class draws of the offline world (`python -m dualprompt.world.draws`): other choices of base blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dualprompt.config import Config
from dualprompt.data.errors import DataError
from dualprompt.data.sampling import pseudo_split, subsample_classes
from dualprompt.data.synthetic import BASE_TO_NEW_DATASETS, DATASETS
from dualprompt.data.types import DatasetSplits
from dualprompt.errors import DualpromptError
from dualprompt.experiment import Experiment
from dualprompt.tables import best_search_trials
from dualprompt.world import draws

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "results" / "base2new" / "example"


def _names_only(name: str) -> DatasetSplits:
    return DatasetSplits(name, DATASETS[name].classnames, train=(), val=(), test=())


def _words(classnames) -> set[str]:
    return {word for name in classnames for word in name.split()}


@pytest.mark.parametrize("draw", draws.DRAWS)
@pytest.mark.parametrize("name", BASE_TO_NEW_DATASETS)
def test_every_draw_keeps_the_protocols_word_disjoint_splits(name, draw):
    splits = draws.relabel_for(draw)(_names_only(name))
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    pseudo_base, pseudo_new = pseudo_split(base)
    assert sorted(splits.classnames) == sorted(DATASETS[name].classnames)
    assert not _words(base.classnames) & _words(new.classnames)
    assert not _words(pseudo_base.classnames) & _words(pseudo_new.classnames)
    # The draw's first block is pseudo-base in fold 0: the committed world's labels of that block.
    first = "ABCD".index(draw[0]) * draws.CLASSES_PER_BLOCK
    assert pseudo_base.classnames == DATASETS[name].classnames[first:first + draws.CLASSES_PER_BLOCK]


def test_draw_ab_is_the_committed_world_and_cd_swaps_base_and_new():
    assert draws.block_order("AB") == list(range(36))
    committed = _names_only("synthetic_faded")
    swapped = draws.relabel_for("CD")(committed)
    assert subsample_classes(swapped, "base").classnames == subsample_classes(committed, "new").classnames
    assert subsample_classes(swapped, "new").classnames == subsample_classes(committed, "base").classnames


@pytest.mark.parametrize("draw, block, kept", [("AB", (2, 2), (0, 1, 3, 4)), ("BD", (2, 2), (0, 1, 3, 4)),
                                               ("AC", (2, 3), (0, 1, 2, 3, 4, 5))])
def test_smaller_blocks_keep_their_first_colours_by_shapes_and_every_split_property(draw, block, kept):
    splits = draws.relabel_for(draw, block)(_names_only("synthetic_noisy"))
    assert len(splits.classnames) == 4 * len(kept)
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    pseudo_base, pseudo_new = pseudo_split(base, fold=0)
    assert not _words(base.classnames) & _words(new.classnames)
    assert not _words(pseudo_base.classnames) & _words(pseudo_new.classnames)
    for part in (pseudo_base, pseudo_new, *pseudo_split(new, fold=0)):  # every kept class of one block
        colours, shapes = {n.split()[0] for n in part.classnames}, {n.split()[1] for n in part.classnames}
        assert (len(colours), len(shapes)) == block and len(part.classnames) == len(kept)
    # Each kept class is one of its block's: the first colours x first shapes, in label order.
    first = "ABCD".index(draw[0]) * draws.CLASSES_PER_BLOCK
    full = DATASETS["synthetic_noisy"].classnames
    assert pseudo_base.classnames == tuple(full[first + i] for i in kept)


def test_a_dataset_of_another_size_is_refused_with_one_sentence():
    splits = DatasetSplits("flowers", tuple(f"class {i}" for i in range(10)), (), (), ())
    with pytest.raises(DataError, match="flowers has 10 classes, not the 36 .* base-to-new synthetic datasets only"):
        draws.relabel_for("AC")(splits)


def test_zero_shot_base_of_draw_cd_is_zero_shot_new_of_the_committed_world(isolated_dirs, tiny_clip):
    """The same images and classes under the swapped draw: the two 18-way problems trade places exactly."""
    cfg = Config().replace(method="zeroshot", dataset="synthetic_blurry")
    committed = Experiment(tiny_clip).run(cfg, "final").metrics
    swapped = Experiment(tiny_clip, draws.relabel_for("CD")).run(cfg, "final").metrics
    assert swapped["acc_test_base"] == committed["acc_test_new"]
    assert swapped["acc_test_new"] == committed["acc_test_base"]


def test_configurations_come_from_the_sweep_at_evenly_spaced_objective_ranks():
    configs = draws.sweep_configs(str(EXAMPLE), 3)
    assert list(configs) == ["defaults", "rank 1", "rank 33", "rank 64"]
    from dualprompt.results import load_results

    rows = load_results(str(EXAMPLE))
    best = best_search_trials(rows, k=1).iloc[0]
    assert configs["rank 1"]["n_ctx"] == best["n_ctx"] and configs["rank 1"]["mi_weight"] == best["mi_weight"]
    final_defaults = rows[(rows["stage"] == "final") & (rows["variant"] == "defaults")].iloc[0]
    assert configs["defaults"]["n_ctx"] == final_defaults["n_ctx"] == 4
    for fields in configs.values():  # every job runs with the sweep's own settings, never this machine's paths
        assert fields["epochs"] == 40 and fields["method"] == "dualprompt"
        assert "data_root" not in fields and "dataset" not in fields
        Config.from_flat(fields)


def test_the_defaults_own_search_trial_is_not_a_second_configuration():
    """When the evenly spaced ranks include the example's defaults (its first search trial), they are trained
    (and counted in the Spearman) once, as "defaults"."""
    from dualprompt.results import load_results
    from dualprompt.tables import evenly_spaced_ranks, search_trials

    trials = search_trials(load_results(str(EXAMPLE)))
    ranked = trials[trials["complete"].astype(bool)].sort_values("objective", ascending=False)
    defaults_rank = 1 + [i for i, p in enumerate(ranked[["n_ctx", "mi_weight"]].itertuples(index=False))
                         if (p.n_ctx, p.mi_weight) == (4, Config().method.mi_weight)][0]
    k = next(k for k in range(2, len(ranked)) if defaults_rank - 1 in evenly_spaced_ranks(len(ranked), k))
    configs = draws.sweep_configs(str(EXAMPLE), k)
    assert f"rank {defaults_rank}" not in configs and len(configs) == k
    assert list(configs)[:2] == ["defaults", "rank 1"]
    searched = ("n_ctx", "mi_weight", "mi_temperature", "aug_strength")
    assert len({tuple(c[p] for p in searched) for c in configs.values()}) == len(configs)


@pytest.mark.parametrize("args, message", [
    ([], "--sweep: name a finished base-to-new sweep's folder"),
    (["--sweep", "no/such/folder"], "--sweep: no/such/folder is not a folder"),
    (["--smoke", "--draws", "AB,XY"], "--draws: 'XY' is not a draw"),
    (["--smoke", "--seeds", "0"], "must be at least 1"),
    (["--smoke", "--datasets", "synthetic_source"], "--datasets: synthetic_source has no class blocks"),
    (["--smoke", "--block", "1x3"], "--block: '1x3' is not COLOURSxSHAPES with each between 2 and 3"),
    (["--smoke", "--block", "3"], "--block: '3' is not COLOURSxSHAPES"),
    (["--smoke", "--from-json", "x.json"], "--from-json: it re-reads finished runs; drop --sweep, --smoke and --set"),
    (["--smoke", "--set", "mi_wieght=2"], "--set: mi_wieght: not a configuration field. Did you mean mi_weight"),
    (["--smoke", "--set", "ctx_fill"], "--set: ctx_fill: expected KEY=VALUE"),
    (["--smoke", "--set", "seed=3"], "--set: dataset and seed are what the draws vary; use --datasets and --seeds."),
    (["--smoke", "--set", "cache_dir=/x"], "--set: data_root and cache_dir are this machine's, not a configuration's"),
    (["--from-json", "no/such.json"], "--from-json: no/such.json is not a file"),
    (["--smoke", "--objective-seeds", "1,x"], "--objective-seeds: '1,x' is not a comma-separated list"),
    (["--smoke", "--objective-seeds", "2"], "--objective-seeds: 2 is more seeds than the run trains"),
])
def test_bad_arguments_are_one_sentence_before_any_work(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        draws.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_set_overrides_every_configuration_taken_from_the_sweep():
    args = draws.parse_args(["--sweep", str(EXAMPLE), "--configs", "2", "--set", "ctx_fill=random",
                             "--set", "epochs=7"])
    configs = draws.configurations(args)
    plain = draws.sweep_configs(str(EXAMPLE), 2)
    assert list(configs) == list(plain) and len(configs) >= 2
    for name, fields in configs.items():  # everything else as the sweep's rows recorded it
        assert fields == {**plain[name], "ctx_fill": "random", "epochs": 7}


def _hand_jobs(step: float) -> list[dict]:
    """Three configurations x two seeds, one dataset: objective (mean of two folds) 50 + step * i - d_i on
    seed 1 and 50 + step * i + d_i + 3 on seed 2, d = (1, -1, 0). The configurations' means have variance
    step^2; seed 2's 3 points for all reorder nothing, the interaction (residuals +-1, +-1, 0 over 2 degrees
    of freedom: variance 2) gives a two-seed mean noise 1. The final HM (base = new) has the same spread and
    noise, 10 points higher."""
    jobs = []
    for i, variant in enumerate(("defaults", "rank 1", "rank 2")):
        d = (1.0, -1.0, 0.0)[i]
        for seed, shift in ((1, -d), (2, d + 3.0)):
            jobs += [{"variant": variant, "dataset": "d", "seed": seed, "stage": "search", "fold": f,
                      "acc_val_pseudobase": 70.0, "acc_val_pseudonew": 40.0, "hm_val": 50.0 + step * i + shift}
                     for f in (0, 1)]
            jobs.append({"variant": variant, "dataset": "d", "seed": seed, "stage": "final",
                         "acc_test_base": 60.0 + step * i + shift, "acc_test_new": 60.0 + step * i + shift})
    return jobs


def test_draw_reliability_by_hand():
    out = draws.draw_reliability(_hand_jobs(step=4.0))  # spread 16, noise 1
    assert out["reliability_objective"] == pytest.approx(15 / 16)
    assert out["reliability_final"] == pytest.approx(15 / 16)
    assert out["noise_ceiling"] == pytest.approx(15 / 16)


def test_objective_seed_validity_by_hand():
    # Final HM 60, 64, 68 over three configurations; the objective ranks them 1,2,3 under seed 1 (Spearman 1)
    # and 3,1,2 under seed 2 (-0.5): one seed predicts 0.25 on average; both seeds' mean (52, 51, 53, ranks
    # 2,1,3) predicts 0.5.
    jobs = []
    for i, variant in enumerate(("defaults", "rank 1", "rank 2")):
        for seed, objective in ((1, (50.0, 52.0, 54.0)[i]), (2, (54.0, 50.0, 52.0)[i])):
            jobs += [{"variant": variant, "dataset": "d", "seed": seed, "stage": "search", "fold": f,
                      "acc_val_pseudobase": 70.0, "acc_val_pseudonew": 40.0, "hm_val": objective} for f in (0, 1)]
            jobs.append({"variant": variant, "dataset": "d", "seed": seed, "stage": "final",
                         "acc_test_base": 60.0 + 4 * i, "acc_test_new": 60.0 + 4 * i})
    assert draws.objective_seed_validity(jobs, 1) == pytest.approx(0.25)
    assert draws.objective_seed_validity(jobs, 2) == pytest.approx(0.5)


def test_pooled_reliability_averages_spread_and_noise_before_dividing():
    # Spreads 16 and 4, noise 1 in both: pooled 1 - 1 / 10, not the mean of 15/16 and 3/4.
    out = draws.pooled_reliability({"AB": _hand_jobs(step=4.0), "CD": _hand_jobs(step=2.0)})
    assert out["reliability_objective"] == pytest.approx(0.9)
    assert out["noise_ceiling"] == pytest.approx(0.9)


def _draw_jobs(objectives: tuple[float, ...], finals: tuple[float, ...]) -> list[dict]:
    """One seed, one dataset: configuration i has objective objectives[i] (both folds) and final HM finals[i]."""
    jobs = []
    for i, (objective, final_hm) in enumerate(zip(objectives, finals, strict=True)):
        jobs += [{"variant": f"c{i}", "dataset": "d", "seed": 1, "stage": "search", "fold": f,
                  "acc_val_pseudobase": 70.0, "acc_val_pseudonew": 40.0, "hm_val": objective} for f in (0, 1)]
        jobs.append({"variant": f"c{i}", "dataset": "d", "seed": 1, "stage": "final",
                     "acc_test_base": final_hm, "acc_test_new": final_hm})
    return jobs


def test_between_draws_compares_each_pair_of_draws_by_hand():
    # Both draws' objectives rank c0 < c1 < c2; AB's final HM agrees (ranks 1, 2, 3), CD's ranks them 2, 3, 1:
    # squared rank differences 6, Spearman 1 - 6 x 6 / (3 x 8) = -0.5. Averaged over the draws the objective
    # still ranks c0 < c1 < c2 and the final HM is 61, 62, 61 (ranks 1.5, 3, 1.5): Spearman 0.
    out = draws.between_draws({"AB": draws.draw_table(_draw_jobs((50.0, 52.0, 54.0), (60.0, 61.0, 62.0))),
                               "CD": draws.draw_table(_draw_jobs((40.0, 45.0, 50.0), (62.0, 63.0, 60.0)))})
    assert out["final_hm_draw_vs_draw"] == pytest.approx(-0.5)
    assert out["objective_draw_vs_draw"] == pytest.approx(1.0)
    assert out["mean_objective_vs_mean_final_hm"] == pytest.approx(0.0, abs=1e-12)


def test_folds_agreement_compares_the_two_held_out_blocks_rankings():
    jobs = _draw_jobs((50.0, 52.0, 54.0), (60.0, 61.0, 62.0))  # both folds score a configuration alike
    assert draws.folds_agreement(jobs) == pytest.approx(1.0)
    for job in jobs:  # fold 1 reverses the ranking: 110 - objective
        if job["stage"] == "search" and job["fold"] == 1:
            job["hm_val"] = 110.0 - job["hm_val"]
    assert draws.folds_agreement(jobs) == pytest.approx(-1.0)


def _write_draws(path: Path, jobs_by_draw: dict[str, list[dict]], seeds=(1, 2)) -> str:
    rows = [{"draw": draw, **job} for draw, jobs in jobs_by_draw.items() for job in jobs]
    record = {"configs": {"defaults": {"n_ctx": 4}}, "datasets": ["d"], "seeds": list(seeds), "rows": rows}
    path.write_text(json.dumps(record))
    return str(path)


def test_from_json_summarises_draws_from_several_files_without_training(tmp_path):
    first = _write_draws(tmp_path / "ab.json", {"AB": _hand_jobs(step=4.0)})
    second = _write_draws(tmp_path / "cd.json", {"CD": _hand_jobs(step=2.0)})
    result = subprocess.run([sys.executable, "-m", "dualprompt.world.draws", "--from-json", second, first,
                             "--objective-seeds", "1"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.index("Draw AB (base = blocks A + B)") < out.index("Draw CD (base = blocks C + D)")
    assert "Over 2 draws (mean ± std)" in out
    # Both draws rank the three configurations alike on both measures: Spearman 1 in each.
    summary = next(line for line in out.splitlines() if line.strip().startswith("spearman_objective_final_hm"))
    assert "+1.00 ± 0.00" in summary and "AB +1.00" in summary and "CD +1.00" in summary
    pooled = next(line for line in out.splitlines() if line.startswith("Pooled over the draws"))
    assert "noise_ceiling 0.90" in pooled
    assert out.splitlines()[-1] == ("Between draws (mean Spearman over the 1 pairs): final_hm_draw_vs_draw +1.00; "
                                    "objective_draw_vs_draw +1.00; mean_objective_vs_mean_final_hm +1.00")
    one_seed = next(line for line in out.splitlines() if line.strip().startswith("spearman_objective_1_seeds"))
    assert "AB +1.00" in one_seed  # both seeds rank the configurations alike


def test_from_json_refuses_more_objective_seeds_than_the_files_hold(tmp_path):
    path = _write_draws(tmp_path / "ab.json", {"AB": _hand_jobs(step=4.0)})
    result = subprocess.run([sys.executable, "-m", "dualprompt.world.draws", "--from-json", path,
                             "--objective-seeds", "3"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "--objective-seeds: 3 is more seeds than the files hold (2)" in result.stderr


@pytest.mark.parametrize("setup, message", [
    ("duplicate", "draw AB is in both"),
    ("other seeds", "ran different configurations, datasets or seeds"),
    ("not json", "is not a file that `world.draws --json` wrote"),
    ("missing draw", "--draws: BC is in none of the --from-json files"),
    ("bad draw", "holds rows whose draw is 'XY', not one of AB,AC"),
])
def test_from_json_bad_files_are_one_sentence(tmp_path, setup, message):
    paths = [_write_draws(tmp_path / "a.json", {"AB": _hand_jobs(step=4.0)})]
    wanted = None
    if setup == "duplicate":
        paths.append(_write_draws(tmp_path / "b.json", {"AB": _hand_jobs(step=2.0)}))
    elif setup == "other seeds":
        paths.append(_write_draws(tmp_path / "b.json", {"CD": _hand_jobs(step=2.0)}, seeds=(1, 2, 3)))
    elif setup == "not json":
        (tmp_path / "b.json").write_text("rows: none")
        paths.append(str(tmp_path / "b.json"))
    elif setup == "bad draw":
        paths.append(_write_draws(tmp_path / "b.json", {"XY": _hand_jobs(step=2.0)}))
    else:
        wanted = ("AB", "BC")
    with pytest.raises(DualpromptError, match="--") as error:
        draws.read_jobs(paths, wanted)
    assert message in str(error.value)


def test_draws_smoke_prints_each_draw_and_the_summary_over_draws(isolated_dirs):
    jobs_file = isolated_dirs / "out" / "draws.json"
    result = subprocess.run(
        [sys.executable, "-m", "dualprompt.world.draws", "--smoke", "--data-root", str(isolated_dirs / "data"),
         "--cache-dir", str(isolated_dirs / "features"), "--json", str(jobs_file)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Draw AB (base = blocks A + B" in out and "Draw CD (base = blocks C + D" in out
    assert out.count("| defaults |") == 2 and "Over 2 draws" in out
    for key in ("spearman_objective_final_hm", "spearman_pseudo_new_final_new", "best_minus_defaults_final_hm"):
        summary = next(line for line in out.splitlines() if line.strip().startswith(key))
        assert "AB " in summary and "CD " in summary
    assert out.count("95% interval of Spearman(objective, final HM) over 3 configurations") == 2
    assert "noise_ceiling" in out  # NaN with the smoke's one seed; draw_reliability is tested by hand
    # Every job is in the JSON: 2 draws x 3 configurations x 1 seed x 1 dataset x (2 search folds + 1 final).
    rows = pd.DataFrame(json.loads(jobs_file.read_text())["rows"])
    assert len(rows) == 18 and set(rows["draw"]) == {"AB", "CD"}
    expected = {(d, v, s): n for d in ("AB", "CD") for v in ("defaults", "other 1", "other 2")
                for s, n in (("final", 1), ("search", 2))}
    assert rows.groupby(["draw", "variant", "stage"]).size().to_dict() == expected
    assert rows.loc[rows["stage"] == "search", "hm_val"].notna().all()
    assert rows.loc[rows["stage"] == "final", "acc_test_new"].notna().all()
    # Re-read from that file, every draw's table and summary line is the one the run printed.
    again = subprocess.run([sys.executable, "-m", "dualprompt.world.draws", "--from-json", str(jobs_file)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    for draw in ("AB", "CD"):  # the table's header, rule and 3 configurations, then 2 summary lines
        assert _draw_lines(again.stdout, draw) == _draw_lines(out, draw) and len(_draw_lines(out, draw)) == 7


def _draw_lines(out: str, draw: str) -> list[str]:
    """A draw's table and summary lines, without the header that says how long the run had taken."""
    block = out.split(f"Draw {draw} (", 1)[1].split("\nDraw ", 1)[0].split("\nOver ", 1)[0]
    return [line for line in block.splitlines() if line.startswith(("|", f"  draw {draw}"))]
