"""Result files outlive the code that wrote them: older schema versions and older Config shapes still load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import dualprompt
from dualprompt.config import Config
from dualprompt.results import SCHEMA_VERSION, ResultsError, load_results, read_results
from dualprompt.tables import summarise

REPO = Path(__file__).resolve().parent.parent
V1 = REPO / "tests" / "assets" / "results-v1"  # files of the first example sweep (schema version 1)
EXAMPLE = REPO / "results" / "base2new" / "example"


def test_version_1_files_are_upgraded_to_base_to_new_rows():
    rows = load_results(V1)
    assert set(rows["schema_version"]) == {1} and set(rows["protocol"]) == {"base2new"}  # as written; columns upgraded
    final = rows[rows["stage"] == "final"]
    assert set(final["variant"]) == {"zeroshot", "coop", "kgcoop", "best"}  # v1's final: best + baselines
    assert (final.loc[final["method"] == "dualprompt", "variant"] == "best").all()
    assert (rows["source_dataset"] == rows["dataset"]).all() and (rows["fold"] == 0).all()
    assert rows["prompt_file"].isna().all() and rows["n_test_base"].isna().all()  # v1 never measured these
    # They predate ctx_fill and were trained with the random fill, whatever today's default is.
    assert Config().prompt.ctx_fill == "words" and set(rows["ctx_fill"]) == {"random"}
    average = summarise(rows).set_index(["variant", "dataset"])["hm"]
    assert average[("coop", "average")] == pytest.approx(71.6, abs=0.05)  # the table v1's README printed
    assert average[("best", "average")] == pytest.approx(69.3, abs=0.05)


def test_files_from_a_newer_dualprompt_are_refused_in_one_sentence(tmp_path):
    table = pq.read_table(next(V1.glob("final-*.parquet")))
    newer = table.replace_schema_metadata({"dualprompt_schema_version": str(SCHEMA_VERSION + 1)})
    pq.write_table(newer, tmp_path / "final-x.parquet")
    with pytest.raises(ResultsError, match=f"version {SCHEMA_VERSION + 1}, newer than this dualprompt reads"):
        read_results(tmp_path)
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "final-x.parquet")
    with pytest.raises(ResultsError, match="has no dualprompt schema"):
        read_results(tmp_path)


# Run in a copy of the package whose OptimConfig has one more field: old files must load, with the default.
WITH_NEW_FIELD = textwrap.dedent("""
    import json, sys
    from dualprompt.config import FIELD_TYPE
    from dualprompt.results import load_results
    assert "label_smoothing" in FIELD_TYPE
    out = {}
    for folder in sys.argv[1:]:
        rows = load_results(folder)
        out[folder] = {"rows": len(rows), "values": sorted(set(rows["label_smoothing"].tolist()))}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("folder", [V1, EXAMPLE], ids=["v1-files", "committed-example"])
def test_adding_a_config_field_needs_no_regenerated_results(folder, tmp_path):
    package = tmp_path / "dualprompt"
    shutil.copytree(Path(dualprompt.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    config = package / "config.py"
    source = config.read_text()
    anchor = "    warmup_lr: float = 1e-5\n"
    assert anchor in source
    config.write_text(source.replace(anchor, anchor + "    label_smoothing: float = 0.1\n"))
    done = subprocess.run([sys.executable, "-c", WITH_NEW_FIELD, str(folder)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)[str(folder)]
    assert loaded == {"rows": len(read_results(folder)), "values": [0.1]}
