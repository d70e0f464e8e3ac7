"""Segment the shipped Online Retail customers on Spark: fit k-means on a DataFrame,
assign every customer, and write the model and the assignments.

    .venv/bin/python examples/spark_segment.py [OUT_DIR]

Runs on local[*] (pyspark from PyPI and Java 17); on a cluster, submit it with
spark-submit (docs/spark.md). The model file serves the CLI: `microseg profile`,
`drift`, `report`.
"""

import os
import pathlib
import sys

from pyspark.sql import SparkSession

import microseg

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "datasets" / "online_retail_customers.parquet"


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "spark-out")
    out.mkdir(parents=True, exist_ok=True)
    # The workers run this interpreter, whose environment has microseg.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = SparkSession.builder.master(os.environ.get("SPARK_MASTER", "local[*]")).appName("microseg").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    df = spark.read.parquet(str(DATA)).repartition(8)
    model = microseg.spark.fit(df, k=8, log1p=["monetary", "frequency"], seed=0)
    model.save(out / "model.json")
    assigned = microseg.spark.assign(df, model, id_col="subscriber_id")
    assigned.write.mode("overwrite").parquet(str(out / "segments"))
    r = model.report
    print(
        f"{r['n_rows']} customers in {r['k']} segments: {r['iterations']} iterations on "
        f"{r['spark']['tasks']} tasks, inertia {r['inertia']:.6g}; wrote {out / 'model.json'} and {out / 'segments'}"
    )
    assigned.groupBy("segment").count().orderBy("segment").show()
    spark.stop()


if __name__ == "__main__":
    main()
