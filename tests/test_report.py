"""Summaries and the report command on small hand-built result tables (CPU, a few seconds)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dualprompt.config import Config
from dualprompt.results import (ResultRow, ResultsError, best_search_trials, load_results, rows_to_table,
                                side_by_side, summarise, write_rows)


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def final(method: str, dataset: str, seed: int, base: float, new: float, failed: bool = False,
          sweep: str = "demo", **cfg) -> ResultRow:
    config = Config().replace(method=method, dataset=dataset, seed=seed, **cfg)
    if failed:
        return ResultRow(sweep, "final", f"f-{method}", config, status="failed", error="RuntimeError: boom")
    return ResultRow(sweep, "final", f"f-{method}", config, train_s=2.0, eval_s=0.5, feature_s=1.0,
                     ray_startup_s=0.5, wall_s=4.0, trial_wall_s=20.0,
                     metrics={"acc_test_base": base, "acc_test_new": new, "hm_test": hm(base, new)})


def search(trial: int, mi_weight: float, n_ctx: int, variant: str, score: float) -> ResultRow:
    config = Config().replace(dataset="synthetic_a", seed=1, mi_weight=mi_weight, n_ctx=n_ctx, aug_variant=variant)
    metrics = {"acc_val_pseudobase": score + 5, "acc_val_pseudonew": score - 5, "hm_val": score}
    return ResultRow("demo", "search", f"s{trial:02d}", config, metrics=metrics, train_s=3.0, feature_s=1.0,
                     eval_s=0.2, ray_startup_s=1.0, wall_s=5.0, trial_wall_s=6.0)


def frame(rows: list[ResultRow]):
    return load_results_from_table(rows_to_table(rows))


def load_results_from_table(table):
    return table.to_pandas()


def test_average_row_is_hm_of_averages_not_mean_of_hms():
    # Dataset a: base 90, new 10 (HM 18); dataset b: base 10, new 90 (HM 18). Mean of HMs = 18,
    # HM of averages = HM(50, 50) = 50: the conventions differ by 32 points.
    table = summarise(frame([final("coop", "a", 1, 90.0, 10.0), final("coop", "b", 1, 10.0, 90.0)]))
    average = table.set_index(["dataset", "method"]).loc[("average", "coop")]
    assert average["base"] == pytest.approx(50.0) and average["new"] == pytest.approx(50.0)
    assert average["hm"] == pytest.approx(50.0)
    assert table["dataset"].iloc[-1] == "average"


def test_std_over_seeds_and_failed_rows_excluded_but_counted():
    rows = [final("coop", "a", 1, 80.0, 40.0), final("coop", "a", 2, 90.0, 50.0), final("coop", "a", 3, 0, 0, True)]
    row = summarise(frame(rows)).set_index(["dataset", "method"]).loc[("a", "coop")]
    assert row["base"] == pytest.approx(85.0) and row["new"] == pytest.approx(45.0)  # failed seed left out
    assert row["base_std"] == pytest.approx(math.sqrt(50.0))  # sample std (ddof=1) of 80, 90
    assert row["hm"] == pytest.approx(hm(85.0, 45.0))
    assert row["hm_std"] == pytest.approx(abs(hm(80, 40) - hm(90, 50)) / math.sqrt(2))
    assert row["n_seeds"] == 2 and row["n_failed"] == 1


def test_one_seed_has_no_std_rather_than_zero():
    row = summarise(frame([final("coop", "a", 1, 80.0, 40.0)])).iloc[0]
    assert math.isnan(row["base_std"]) and math.isnan(row["new_std"]) and math.isnan(row["hm_std"])
    from dualprompt.report import table_markdown
    text = table_markdown(summarise(frame([final("coop", "a", 1, 80.0, 40.0)])), quoted=False)
    assert "±" not in text and "80.00" in text


def test_methods_side_by_side_and_best_search_trials():
    rows = [final(m, d, 1, 70.0 + i, 60.0 + i) for i, m in enumerate(("zeroshot", "coop")) for d in ("a", "b")]
    wide = side_by_side(summarise(frame(rows)))
    assert list(wide.index) == ["a", "b", "average"]
    assert wide[("coop", "base")].tolist() == [71.0, 71.0, 71.0]
    trials = [search(i, 0.1 * (i + 1), 2 + i, "mix", 50.0 + i) for i in range(4)]
    best = best_search_trials(frame(trials), k=2)
    assert best["trial_id"].tolist() == ["s03", "s02"]
    assert {"mi_weight", "n_ctx"} <= set(best.columns) and best["mi_weight"].iloc[0] == pytest.approx(0.4)


def test_mixed_backbones_are_refused():
    rows = [final("coop", "a", 1, 80.0, 40.0),
            final("coop", "b", 1, 80.0, 40.0, backbone="ViT-B-16", pretrained="openai")]
    with pytest.raises(ResultsError, match="mix backbones"):
        summarise(frame(rows))


def test_load_results_is_typed_and_reads_many_sweeps(tmp_path):
    write_rows([final("coop", "a", 1, 80.0, 40.0)], tmp_path / "one", "final-1.parquet")
    write_rows([final("coop", "a", 1, 70.0, 40.0, sweep="two")], tmp_path / "two", "final-1.parquet")
    rows = load_results([str(tmp_path / "one"), str(tmp_path / "two")])
    assert len(rows) == 2 and set(rows["sweep"]) == {"demo", "two"}
    assert str(rows["seed"].dtype) == "Int64" and str(rows["acc_test_base"].dtype) == "float64"
    assert str(rows["finished_at"].dtype).startswith("datetime64")


def sweep_dir(root, sweep: str = "demo"):
    """A small results folder in the shape the sweep writes: search trials, then a final stage."""
    folder = root / sweep
    variants = ("mix", "virtual")
    for i in range(8):
        write_rows([search(i, 0.05 * 2 ** i, 2 + i, variants[i % 2], 40.0 + 3 * math.sin(i) + i)], folder,
                   f"search-{i:02d}.parquet")
    for k, m in enumerate(("zeroshot", "coop", "kgcoop", "dualprompt")):
        rows = [final(m, d, s, 60.0 + 5 * k + s, 70.0 - 4 * k + s + j) for j, d in enumerate(("synthetic_a",
                "synthetic_b")) for s in (1, 2)]
        if m == "coop":
            rows.append(final(m, "synthetic_a", 3, 0, 0, failed=True))
        write_rows(rows, folder, f"final-{m}.parquet")
    (folder / "_ray").mkdir()  # the sweep's saved plan: declared bounds give Optuna the true distributions
    (folder / "_ray" / "sweep.json").write_text(json.dumps(
        {"bounds": {"mi_weight": [0.05, 10.0, "log"], "n_ctx": [2, 16, "int"]},
         "choices": {"aug_variant": ["mix", "virtual"]}, "num_samples": 8}))
    return folder


def report(*args: str):
    return subprocess.run([sys.executable, "-m", "dualprompt.report", *args], capture_output=True, text=True,
                          timeout=120)


def test_report_command_writes_markdown_and_every_figure(tmp_path):
    from dualprompt.report import FIGURES
    folder = sweep_dir(tmp_path)
    done = report(str(folder))
    assert done.returncode == 0, done.stderr
    out = folder / "_report"
    text = (out / "REPORT.md").read_text()
    for name in FIGURES:
        assert (out / name).stat().st_size > 5000, name
        assert f"({name})" in text
    assert "**Average**" in text and "±" in text and "8 search trials (of 8 requested)" in text and "hm_val" in text
    assert "CoOp on synthetic_a: 1 failed" in text
    assert "quoted, not reproduced" not in text  # synthetic datasets get no published reference rows
    assert "outside training" in text and "mi_weight in [0.05, 10] (log)" in text
    assert "Importance: Optuna fANOVA importance" in text
    assert "Best complete search trials" in text and "| s07 |" in text
    import pandas as pd
    assert len(pd.read_parquet(folder)) == 8 + 4 * 4 + 1  # the report does not disturb plain pandas reads


def test_report_quotes_published_numbers_for_real_datasets(tmp_path):
    folder = tmp_path / "real"
    write_rows([final(m, "dtd", 1, 70.0, 60.0) for m in ("coop", "dualprompt")], folder, "final-x.parquet")
    done = report(str(folder))
    assert done.returncode == 0, done.stderr
    text = (folder / "_report" / "REPORT.md").read_text()
    assert "quoted, not reproduced" in text and "79.97" in text and "71.70" in text


def one_sentence_exit_2(done) -> str:
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(".")
    return lines[0]


def test_bad_inputs_exit_2_with_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "No Parquet result files" in one_sentence_exit_2(report(str(tmp_path / "empty")))

    old = tmp_path / "old"
    old.mkdir()
    table = rows_to_table([final("coop", "a", 1, 80.0, 40.0)])
    pq.write_table(table.replace_schema_metadata({"dualprompt_schema_version": "0"}), old / "final-x.parquet")
    assert "schema version 0" in one_sentence_exit_2(report(str(old)))

    write_rows([final("coop", "a", 1, 80.0, 40.0)], tmp_path / "tiny", "final-x.parquet")
    write_rows([final("coop", "a", 1, 80.0, 40.0, sweep="big", backbone="ViT-B-16", pretrained="openai")],
               tmp_path / "big", "final-x.parquet")
    message = one_sentence_exit_2(report(str(tmp_path / "tiny"), str(tmp_path / "big")))
    assert "mix backbones" in message and "not comparable" in message


README = Path(__file__).resolve().parent.parent / "results" / "README.md"
EXAMPLE = README.parent / "base2new" / "example"


def test_results_readme_documents_every_column():
    from dualprompt.results import SCHEMA
    text = README.read_text()
    assert [n for n in SCHEMA.names if f"| `{n}` |" not in text] == []
    assert "python sweeps/base2new.py --num-samples 64 --name example" in text


def test_results_readme_snippets_run_on_the_example():
    import pandas as pd
    if not list(EXAMPLE.glob("final-*.parquet")):
        pytest.skip("the example sweep has no final rows yet")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 4
    assert len(pd.read_parquet(EXAMPLE)) > 0
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120,
                              cwd=README.parent.parent)
        assert done.returncode == 0, done.stderr
