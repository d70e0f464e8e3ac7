"""The Python package against the command line on the same data: the same model file
byte for byte, the same assignments, the same messages for bad input."""

import json
import os
import pathlib
import subprocess
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import microseg

REPO = pathlib.Path(__file__).resolve().parents[2]
RETAIL = REPO / "datasets" / "online_retail_customers.parquet"
CLI = pathlib.Path(os.environ.get("MICROSEG_BIN", REPO / "target" / "release" / "microseg"))


def cli(*args, cwd):
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def table():
    return pq.read_table(RETAIL)


@pytest.fixture(scope="module", autouse=True)
def cli_built():
    if not CLI.exists():
        pytest.fail(f"the microseg binary is not built at {CLI}: run cargo build --release first")


def test_fit_from_a_table_is_the_cli_model_byte_for_byte(table, tmp_path):
    opts = ["--k", "8", "--log1p", "monetary,frequency", "--seed", "3"]
    r = cli("fit", RETAIL, *opts, "--model", "cli.json", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = microseg.fit(table, k=8, log1p=["monetary", "frequency"], seed=3)
    model.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert model.report["k"] == 8 and model.report["n_rows"] == table.num_rows
    assert model.fingerprint.startswith("sha256:")


def test_every_cpu_kernel_gives_the_same_model(table, tmp_path):
    files = {}
    for kernel in ["auto", "gemm", "f32-avx2", "f32-avx512", "int8-avx2", "int8-vnni", "int8-amx"]:
        try:
            model = microseg.fit(table, k=12, log1p=["monetary", "frequency"], seed=4, backend="cpu", kernel=kernel)
        except microseg.InvalidInputError as e:
            # A kernel this CPU lacks is refused, saying so.
            assert "lacks" in str(e), e
            continue
        assert model.report["kernel"] in ("gemm", "f32-avx2", "f32-avx512", "int8-avx2", "int8-vnni", "int8-amx")
        model.save(tmp_path / f"{kernel}.json")
        files[kernel] = (tmp_path / f"{kernel}.json").read_bytes()
    assert {"auto", "gemm"} <= files.keys()
    assert len(set(files.values())) == 1, sorted(files)
    with pytest.raises(microseg.InvalidInputError, match="not a CPU kernel"):
        microseg.fit(table, k=3, kernel="int9")


def test_gaussian_mixture_is_the_cli_model_and_assignments(tmp_path):
    blobs = REPO / "tests" / "data" / "gmm_blobs.parquet"
    opts = ["--k", "4", "--method", "gmm", "--covariance", "full", "--seed", "2"]
    r = cli("fit", blobs, *opts, "--model", "cli.json", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(blobs)
    model = microseg.fit(t, k=4, method="gmm", covariance="full", seed=2)
    model.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert model.to_dict()["method"] == "gmm"
    r = cli("assign", "--model", "cli.json", blobs, "--out", "a.parquet", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = model.assign(t)
    theirs = pq.read_table(tmp_path / "a.parquet")
    assert "probability" in ours.schema.names and "log_likelihood" in ours.schema.names
    for name in ours.schema.names:
        assert ours.column(name).equals(theirs.column(name)), name
    with pytest.raises(microseg.InvalidInputError, match="covariance"):
        microseg.fit(t, k=4, method="gmm", covariance="round")


def test_assign_equals_the_cli_output(table, tmp_path):
    assert cli("fit", RETAIL, "--k", "6", "--model", "m.json", "--quiet", cwd=tmp_path).returncode == 0
    r = cli("assign", "--model", "m.json", RETAIL, "--out", "a.parquet", "--explain", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = microseg.load(tmp_path / "m.json")
    ours = model.assign(table, explain=True)
    theirs = pq.read_table(tmp_path / "a.parquet")
    assert ours.schema.names == ["subscriber_id", "segment", "distance", "margin", "explanation"]
    assert ours.schema.field("segment").type == pa.int32()
    for name in ours.schema.names:
        assert ours.column(name).equals(theirs.column(name)), name


def test_polars_pandas_numpy_and_readers_give_the_same_model(table):
    want = microseg.fit(table, k=5).to_json()
    pytest.importorskip("pandas")
    assert microseg.fit(table.to_pandas(), k=5).to_json() == want
    assert microseg.fit(table.to_reader(max_chunksize=999), k=5).to_json() == want
    pl = pytest.importorskip("polars")
    assert microseg.fit(pl.from_arrow(table), k=5).to_json() == want
    x = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    m = microseg.fit(x, k=4)
    assert m.features == ["x0", "x1", "x2"]
    assert m.assign(x).num_rows == 500
    assert m.centroids.shape == (4, 3)


def test_bad_input_raises_with_the_cli_message(table, tmp_path):
    cases = [
        (dict(k=3, features=["nope"]), ["--features", "nope"], "no column 'nope'"),
        (dict(k=5000), ["--k", "5000"], "more than the 4372 usable rows"),
        (dict(k=3, max_iter=0), ["--k", "3", "--max-iter", "0"], "--max-iter must be at least 1"),
        (dict(k=3, features=["country"]), ["--features", "country"], "country"),
    ]
    for kwargs, flags, needle in cases:
        with pytest.raises(microseg.InvalidInputError) as e:
            microseg.fit(table, **kwargs)
        assert needle in str(e.value)
        r = cli("fit", RETAIL, *(["--k", "3"] if "--k" not in flags else []), *flags, "--model", "x.json", cwd=tmp_path)
        assert r.returncode in (2, 3)
        # The same message after the file name the CLI puts first.
        assert str(e.value).split(": ", 1)[-1] in r.stderr, (str(e.value), r.stderr)
    assert issubclass(microseg.InvalidInputError, ValueError)
    with pytest.raises(ValueError):
        microseg.fit(table, k=3, scale="minmax")


def test_profile_drift_explain_and_round_trip(table, tmp_path):
    m = microseg.fit(table, k=4)
    p = m.profile(table, outcomes=["country"])
    assert p["format"] == "microseg-profile" and p["model_fingerprint"] == m.fingerprint
    assert sum(s["size"] for s in p["segments"]) == table.num_rows
    d = m.drift(table)
    assert d["verdict"] == "stable"
    named = m.assign(table.slice(0, 10), explain=True, profile=p)
    assert named.column("explanation")[0].as_py().startswith("you are in ")
    m.save(tmp_path / "m.json")
    again = microseg.load(tmp_path / "m.json")
    assert again.to_json() == m.to_json()
    other = microseg.fit(table, k=5)
    with pytest.raises(microseg.InvalidInputError, match="another model"):
        other.assign(table, explain=True, profile=p)


def test_the_gil_is_released_while_rust_works(table):
    big = pa.concat_tables([table] * 40)
    ticks = []
    done = threading.Event()

    def fit():
        try:
            # The table repeated: every id 40 times.
            microseg.fit(big, k=64, max_iter=30, tol=0.0, allow_duplicate_ids=True)
        finally:
            done.set()

    t = threading.Thread(target=fit)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    assert len(ticks) > 5, "the main thread could not run while the fit ran"


def test_neighbors_and_look_alikes_equal_the_cli(tmp_path):
    emb = REPO / "datasets" / "online_retail_descriptions_minilm_l6_v2.parquet"
    base = pq.read_table(emb)
    queries = base.slice(100, 20)
    pq.write_table(queries, tmp_path / "q.parquet")
    col = [f.name for f in base.schema if pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type)][0]
    r = cli("neighbors", "--base", emb, "--queries", "q.parquet", "--embedding", col, "--k", "5",
            "--out", "n.parquet", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = microseg.neighbors(base, queries, embedding=col, k=5)
    theirs = pq.read_table(tmp_path / "n.parquet")
    assert ours.num_rows == 100
    for name in ["query", "rank", "neighbor", "score"]:
        assert ours.column(name).equals(theirs.column(name)), name
    ids_col = base.schema.names[0]
    seed_ids = base.column(ids_col).slice(0, 3).to_pylist()
    (tmp_path / "seeds.txt").write_text("\n".join(map(str, seed_ids)) + "\n")
    r = cli("similar", "--input", emb, "--embedding", col, "--seed-ids", "seeds.txt", "--top", "7",
            "--id-col", ids_col, "--out", "s.parquet", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = microseg.similar(base, embedding=col, top=7, seed_ids=seed_ids, id_col=ids_col)
    assert ours.equals(pq.read_table(tmp_path / "s.parquet").replace_schema_metadata(None)) or all(
        ours.column(n).equals(pq.read_table(tmp_path / "s.parquet").column(n)) for n in ours.schema.names
    )
    with pytest.raises(microseg.InvalidInputError):
        microseg.similar(base, embedding=col, top=3)
