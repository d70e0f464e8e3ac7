"""``Model.update`` against ``microseg update`` on the same rows: the same model file
byte for byte, the same report; the input model unchanged; bad arguments refused."""

import json
import os
import pathlib
import subprocess

import pyarrow.parquet as pq
import pytest

import microseg

REPO = pathlib.Path(__file__).resolve().parents[2]
RETAIL = REPO / "datasets" / "online_retail_customers.parquet"
CLI = pathlib.Path(os.environ.get("MICROSEG_BIN", REPO / "target" / "release" / "microseg"))


def cli(*args, cwd):
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_update_matches_the_cli_byte_for_byte(tmp_path):
    table = pq.read_table(RETAIL)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), tmp_path / "old.parquet")
    pq.write_table(table.slice(half), tmp_path / "new.parquet")
    opts = ["--k", "6", "--log1p", "monetary,frequency", "--seed", "5"]
    assert cli("fit", "old.parquet", *opts, "--model", "m.json", "--quiet", cwd=tmp_path).returncode == 0
    r = cli(
        "update", "--model", "m.json", "new.parquet", "--decay", "0.8", "--out", "u.json", "--report", "r.json",
        "--quiet", cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    model = microseg.load(tmp_path / "m.json")
    before = model.to_json()
    updated = model.update(table.slice(half), decay=0.8)
    assert model.to_json() == before
    updated.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "u.json").read_bytes()
    report = json.loads((tmp_path / "r.json").read_text())
    assert updated.report == report
    assert updated.report["rows_used"] == table.num_rows - half
    assert [s["id"] for s in updated.to_dict()["segments"]] == [s["id"] for s in model.to_dict()["segments"]]


def test_update_refuses_two_forgetting_rules_and_a_mixture():
    table = pq.read_table(RETAIL)
    model = microseg.fit(table, k=3, seed=1)
    with pytest.raises(ValueError, match="one of decay"):
        model.update(table, decay=0.5, half_life_rows=100)
    with pytest.raises(ValueError, match="elapsed_days"):
        model.update(table, half_life_days=30)
    gmm = microseg.fit(table, k=3, method="gmm", seed=1)
    with pytest.raises(ValueError, match="k-means"):
        gmm.update(table)
