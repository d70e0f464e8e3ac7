"""microseg.spark on a real Spark (pyspark, local[2]): from a given start the fit equals
the single-node fit (same labels, centroids within 1e-6 relative) on a DataFrame of 8
partitions, in barrier mode and with one job per iteration; assign on Spark equals the
CLI's assignments row for row; the model file serves the CLI."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import microseg

pyspark = pytest.importorskip("pyspark", reason="pip install pyspark (scripts/test.sh installs it)")

REPO = pathlib.Path(__file__).resolve().parents[2]
RETAIL = REPO / "datasets" / "online_retail_customers.parquet"
CLI = pathlib.Path(os.environ.get("MICROSEG_BIN", REPO / "target" / "release" / "microseg"))


@pytest.fixture(scope="module")
def spark():
    import sys

    from pyspark.sql import SparkSession

    # The workers run this interpreter (its environment has microseg and pyarrow).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    s = (
        SparkSession.builder.master("local[2]")
        .appName("microseg-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        # A barrier stage that cannot start fails at once instead of retrying for minutes.
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "1")
        .getOrCreate()
    )
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def table():
    return pq.read_table(RETAIL)


def start_centroids(table, k, seed, **options):
    """A k-means++ start in model space, as the single-node fit draws it."""
    opts = {"k": k, "log1p": ["monetary", "frequency"], "seed": seed, "init_centroids": None, **options}
    plan = microseg._native.SparkPlan(table, json.dumps(opts))
    scaling = plan.scaling([plan.moments(table)])
    c = np.asarray(plan.initial_centroids(scaling, table), dtype=np.float32)
    return c.reshape(k, -1)


def assignments_by_id(t):
    t = t.sort_by("subscriber_id") if "subscriber_id" in t.column_names else t
    return t


@pytest.mark.parametrize("barrier,exchange", [(True, "driver"), (True, "allgather"), (False, "driver")])
def test_spark_fit_equals_the_single_node_fit_from_the_same_start(spark, table, barrier, exchange):
    k = 7
    start = start_centroids(table, k, seed=4)
    single = microseg.fit(table, k=k, log1p=["monetary", "frequency"], init=start)
    df = spark.read.parquet(str(RETAIL)).repartition(8)
    assert df.rdd.getNumPartitions() == 8
    dist = microseg.spark.fit(df, k=k, log1p=["monetary", "frequency"], init=start, barrier=barrier, exchange=exchange)
    assert_same_model(dist, single, table)
    spark_report = dict(dist.report["spark"])
    phases = spark_report.pop("phases", None)
    assert spark_report == {
        "partitions": 8, "tasks": 2 if barrier else 8, "barrier": barrier, "exchange": exchange if barrier else "jobs",
        "read": "spark", "delivery": "arrow-batches" if barrier else "mapInArrow",
    }
    if barrier:
        # Task 0's timings of the barrier stage, in the order they happen.
        assert list(phases) == ["receive", "start", "convert", "iterations", "final"]
        assert all(isinstance(v, float) and v >= 0 for v in phases.values())
    else:
        assert phases is None


def test_a_kmeanspp_start_and_assign_on_spark_match_the_cli(spark, table, tmp_path):
    df = spark.read.parquet(str(RETAIL)).repartition(8)
    model = microseg.spark.fit(df, k=5, log1p=["monetary", "frequency"], seed=3)
    assert model.report["converged"]
    # The start is drawn inside the barrier stage from a seeded sample of every
    # partition: the same seed gives the same model.
    again = microseg.spark.fit(df, k=5, log1p=["monetary", "frequency"], seed=3)
    assert [s["centroid"] for s in again.to_dict()["segments"]] == [s["centroid"] for s in model.to_dict()["segments"]]
    model.save(tmp_path / "m.json")
    r = subprocess.run(
        [str(CLI), "assign", "--model", "m.json", str(RETAIL), "--id-col", "subscriber_id", "--out", "cli.parquet", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    cli = pq.read_table(tmp_path / "cli.parquet").sort_by("subscriber_id")
    out = microseg.spark.assign(df, model, id_col="subscriber_id").toArrow().sort_by("subscriber_id")
    assert out.column_names == cli.column_names
    assert out.column("subscriber_id").to_pylist() == cli.column("subscriber_id").to_pylist()
    assert out.column("segment").to_pylist() == cli.column("segment").to_pylist()
    np.testing.assert_allclose(
        out.column("distance").to_numpy(), cli.column("distance").to_numpy(), rtol=1e-6
    )
    # The CLI's later commands read the model.
    r = subprocess.run(
        [str(CLI), "profile", "--model", "m.json", str(RETAIL), "--out", "p.json", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr


def test_bad_options_are_refused_before_any_job(spark):
    df = spark.read.parquet(str(RETAIL))
    with pytest.raises(ValueError, match="nope"):
        microseg.spark.fit(df, k=3, features=["nope"])
    with pytest.raises(ValueError):
        microseg.spark.fit(df, k=0)
    with pytest.raises(ValueError, match="exchange"):
        microseg.spark.fit(df, k=3, exchange="carrier pigeon")
    with pytest.raises(ValueError, match="read"):
        microseg.spark.fit(df, k=3, read="telepathy")


def assert_same_model(dist, single, table):
    """The same iterations, sizes, objective and labels; centroids within 1e-6."""
    a, b = dist.to_dict(), single.to_dict()
    assert a["manifest"]["iterations"] == b["manifest"]["iterations"]
    assert a["manifest"]["rows_used"] == b["manifest"]["rows_used"] == table.num_rows
    for sa, sb in zip(a["segments"], b["segments"]):
        assert sa["size"] == sb["size"]
        np.testing.assert_allclose(sa["centroid"], sb["centroid"], rtol=1e-6, atol=1e-6)
    assert abs(a["manifest"]["objective"] / b["manifest"]["objective"] - 1) < 1e-6
    la = pa.Table.from_batches(list(dist._native.assign(table, id_col="subscriber_id")))
    lb = pa.Table.from_batches(list(single._native.assign(table, id_col="subscriber_id")))
    # The same label for every subscriber.
    assert la.column("segment").to_pylist() == lb.column("segment").to_pylist()


def test_a_plain_parquet_scan_is_read_by_the_tasks_and_fits_as_on_one_machine(spark, table, tmp_path):
    # Three files of several row groups each: the tasks share the row groups out in
    # file and group order (the files' names sort as the rows run).
    parts = tmp_path / "parts"
    parts.mkdir()
    third = table.num_rows // 3 + 1
    for i in range(3):
        pq.write_table(table.slice(i * third, third), parts / f"part-{i}.parquet", row_group_size=400)
    k = 6
    start = start_centroids(table, k, seed=8)
    single = microseg.fit(table, k=k, log1p=["monetary", "frequency"], init=start)
    df = spark.read.parquet(str(parts))
    direct = microseg.spark.fit(df, k=k, log1p=["monetary", "frequency"], init=start)
    assert direct.report["spark"]["read"] == "parquet"
    assert direct.report["spark"]["tasks"] == 2
    assert_same_model(direct, single, table)
    # The same frame with Spark sending the rows, and frames that are not a plain scan
    # (a filter, a cached frame, a computed column): the same model, through Spark.
    for other in [
        dict(df=df, read="spark"),
        dict(df=df.filter("frequency >= 0")),
        dict(df=df.cache()),
        dict(df=df.withColumn("monetary", df.monetary * 1.0)),
    ]:
        m = microseg.spark.fit(other["df"], k=k, log1p=["monetary", "frequency"], init=start,
                               read=other.get("read", "auto"))
        assert m.report["spark"]["read"] == "spark", other
        assert_same_model(m, single, table)
    df.unpersist()
    # Spark's batches after a filter are stricter than the frame's schema (frequency
    # not null): assign takes them too.
    out = microseg.spark.assign(df.filter("frequency >= 0"), direct, id_col="subscriber_id").toArrow()
    assert out.num_rows == table.num_rows


def test_rows_spark_sends_fit_the_same_as_its_arrow_batches_or_through_mapinarrow(spark, tmp_path, monkeypatch):
    # An embedding (array<float>) beside scalars and a weight: Spark's own Arrow batches
    # of the rows (shuffled from 8 partitions into the 2 tasks), and mapInArrow where
    # those are not available (Spark Connect), give the single-node model.
    rng = np.random.default_rng(11)
    n = 3000
    emb = rng.normal(size=(n, 4)).astype(np.float32) + rng.integers(0, 3, size=(n, 1)).astype(np.float32)
    t = pa.table({
        "subscriber_id": np.arange(n),
        "spend": rng.gamma(2.0, 30.0, size=n),
        "visits": rng.poisson(4, size=n),
        "vec": pa.array(list(emb), type=pa.list_(pa.float32())),
        "w": rng.uniform(0.5, 2.0, size=n),
    })
    pq.write_table(t, tmp_path / "e.parquet")
    opts = dict(features=["spend", "visits", "vec"], weight_col="w", log1p=["spend"])
    start = start_centroids(t, 4, 5, **opts)
    opts.update(k=4, init=start)
    single = microseg.fit(t, **opts)
    df = spark.read.parquet(str(tmp_path / "e.parquet")).repartition(8)
    got = {}
    for delivery in ["arrow-batches", "mapInArrow"]:
        if delivery == "mapInArrow":
            monkeypatch.setattr(microseg.spark, "_arrow_batches", lambda sdf, slots: None)
        m = microseg.spark.fit(df, **opts)
        assert m.report["spark"]["delivery"] == delivery
        assert m.report["spark"]["tasks"] == 2
        got[delivery] = m
    for m in got.values():
        a, b = m.to_dict(), single.to_dict()
        assert a["manifest"]["rows_used"] == n
        assert [s["size"] for s in a["segments"]] == [s["size"] for s in b["segments"]]
        for sa, sb in zip(a["segments"], b["segments"]):
            np.testing.assert_allclose(sa["centroid"], sb["centroid"], rtol=1e-5, atol=1e-5)
    # Assignments of the embedding frame on Spark are the model's own, row for row.
    m = got["arrow-batches"]
    out = microseg.spark.assign(df, m, id_col="subscriber_id").toArrow().sort_by("subscriber_id")
    local = pa.Table.from_batches(list(m._native.assign(t, id_col="subscriber_id")))
    assert out.column("segment").to_pylist() == local.column("segment").to_pylist()
    np.testing.assert_allclose(out.column("distance").to_numpy(), local.column("distance").to_numpy(), rtol=1e-6)


def test_assign_without_an_id_numbers_rows_across_partitions_as_the_cli(spark, table, tmp_path):
    plain = table.drop(["subscriber_id"])
    pq.write_table(plain, tmp_path / "plain.parquet")
    model = microseg.fit(plain, k=4, log1p=["monetary", "frequency"], seed=1)
    model.save(tmp_path / "m.json")
    r = subprocess.run(
        [str(CLI), "assign", "--model", "m.json", "plain.parquet", "--out", "cli.parquet", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    cli = pq.read_table(tmp_path / "cli.parquet")
    # A DataFrame of several partitions in the file's order.
    df = spark.createDataFrame(plain.to_pandas())
    assert df.rdd.getNumPartitions() > 1
    out = microseg.spark.assign(df, model).toArrow().sort_by("row")
    assert out.column_names == cli.column_names
    assert out.column("row").to_pylist() == list(range(plain.num_rows))
    assert out.column("segment").to_pylist() == cli.column("segment").to_pylist()
