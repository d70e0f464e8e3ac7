"""microseg on Spark against Spark MLlib's KMeans and the single-node CLI, side by side:
the same rows, the same start, the same number of Lloyd iterations.

    .venv/bin/python benches/spark_mllib.py [ROWS] [DIMS] [K] [ITERATIONS] [REPEATS] [PARTITIONS]
    (default 10^6 32 256 20 5 8; PARTITIONS 0: the DataFrame as Spark reads the file)

Data: `microseg generate` (unscaled, --scale none everywhere so all three iterate on the
same values). The start: k rows drawn with a fixed seed. Spark on local[2]. Each Spark
side runs REPEATS times in one session, microseg's runs first (so its first run also pays
the Python workers' start); the ratios use the medians, the first runs are printed too.
Prints one JSON line per method and the ratios; microseg's line carries task 0's
phases (seconds receiving its rows, the start, converting, iterating, the final pass).
MLLIB=0 leaves MLlib out (for profiling microseg's side alone). With PARTITIONS 0 the
frame is the plain scan of the file, which microseg's tasks read themselves; READ=spark
makes Spark send the rows instead (the frame cached).
"""

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = REPO / "target" / "release" / "microseg"


def main() -> None:
    defaults = ["1000000", "32", "256", "20", "5", "8"]
    n, d, k, iters, repeats, partitions = (int(a) for a in (sys.argv[1:] + defaults[len(sys.argv[1:]):]))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="microseg-spark-bench-"))
    data = tmp / "x.parquet"
    subprocess.run([CLI, "generate", "--rows", str(n), "--dims", str(d), "--clusters", str(k), "--out", data, "--quiet"], check=True)
    table = pq.read_table(data)
    cols = [c for c in table.column_names if c not in ("subscriber_id", "true_segment")]
    x = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in cols])
    rng = np.random.default_rng(7)
    start = x[rng.choice(n, k, replace=False)].astype(np.float32)
    pd_start = tmp / "start.csv"
    np.savetxt(pd_start, start, delimiter=",", fmt="%.9g")
    out = {}

    # The single-node CLI.
    t0 = time.perf_counter()
    r = subprocess.run(
        [CLI, "fit", data, "--k", str(k), "--scale", "none", "--init", pd_start, "--max-iter", str(iters), "--tol", "0",
         "--algorithm", "lloyd", "--backend", "cpu", "--features", ",".join(cols), "--model", tmp / "cli.json", "--json", "--quiet"],
        capture_output=True, text=True, check=True,
    )
    rep = json.loads(r.stdout)
    out["cli"] = {"wall": time.perf_counter() - t0, "fit": rep["fit_seconds"], "iterations": rep["iterations"], "inertia": rep["inertia"]}

    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(str(data)).select(*cols)
    if partitions > 0:
        # Repartitioned rows come through Spark: cached, so each run pays only the
        # conversion to Arrow, not the shuffle.
        df = df.repartition(partitions).cache()
        df.count()
    # PARTITIONS 0: the plain scan of the file, which microseg's tasks read themselves
    # (read="auto"; READ=spark forces Spark's path, with the frame cached).
    elif os.environ.get("READ", "auto") == "spark":
        df = df.cache()
        df.count()
    partitions = df.rdd.getNumPartitions()

    import microseg

    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = microseg.spark.fit(df, k=k, scale="none", init=start, max_iter=iters, tol=0.0,
                               read=os.environ.get("READ", "auto"))
        walls.append(time.perf_counter() - t0)
    out["microseg_spark"] = {"wall": statistics.median(walls), "walls": walls, "iterations": m.report["iterations"],
                             "inertia": m.report["inertia"], "read": m.report["spark"]["read"],
                             "phases": m.report["spark"].get("phases")}
    if os.environ.get("MLLIB", "1") == "0":
        # Profiling microseg alone: MLLIB=0 skips the peer (no ratios against it).
        spark.stop()
        for name, v in out.items():
            print(json.dumps({"run": name, **v}))
        print(json.dumps({"microseg_spark_vs_cli_wall": out["microseg_spark"]["wall"] / out["cli"]["wall"]}))
        return

    from pyspark.mllib.clustering import KMeans, KMeansModel
    from pyspark.mllib.linalg import Vectors

    rdd = df.rdd.map(lambda row: Vectors.dense([float(v) for v in row])).cache()
    rdd.count()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = KMeans.train(rdd, k, maxIterations=iters, initialModel=KMeansModel([c.astype(np.float64) for c in start]),
                             epsilon=0.0)
        walls.append(time.perf_counter() - t0)
    out["mllib"] = {"wall": statistics.median(walls), "walls": walls, "inertia": float(model.computeCost(rdd))}
    spark.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    for name, v in out.items():
        print(json.dumps({"run": name, **v}))
    print(json.dumps({
        "microseg_spark_vs_mllib": out["microseg_spark"]["wall"] / out["mllib"]["wall"],
        "microseg_spark_vs_cli_wall": out["microseg_spark"]["wall"] / out["cli"]["wall"],
        "first_runs_vs_mllib": out["microseg_spark"]["walls"][0] / out["mllib"]["walls"][0],
        "n": n, "d": d, "k": k, "iterations": iters, "partitions": partitions,
    }))


if __name__ == "__main__":
    main()
