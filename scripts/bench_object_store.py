"""Reading from an S3 API server on loopback against reading the same file from disk.

Usage: .venv/bin/python scripts/bench_object_store.py [ROWS] [DIMS] [REPEATS]
(default 10⁶ × 32, 5 repeats). Needs the release CLI (cargo build --release) and moto
(pip install 'moto[server]'), both installed by scripts/test.sh.

It generates the table with `microseg generate`, starts moto in server mode, uploads the
file, and runs `microseg fit --max-iter 1 --json` on the local file and on its s3:// URL
in alternation; `read_seconds` of the report is the time to read and convert the feature
columns into the matrix (the fit itself is left out). The disk side reads from the page
cache after the first run, so this compares the store's path against the fastest disk.
"""

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

import boto3

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python" / "tests"))
import moto_server  # noqa: E402 - the test suite's helper
CLI = pathlib.Path(os.environ.get("MICROSEG_BIN", REPO / "target" / "release" / "microseg"))
EXTRA = os.environ.get("BENCH_FIT_ARGS", "").split()


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    dims = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    work = pathlib.Path(tempfile.mkdtemp(prefix="microseg-bench-s3-"))
    data = work / "table.parquet"
    subprocess.run([str(CLI), "generate", "--rows", str(rows), "--dims", str(dims), "--clusters", "64",
                    "--seed", "1", "--out", str(data), "--quiet"], check=True)
    server, endpoint = moto_server.start()
    try:
        creds = dict(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1")
        client = boto3.client("s3", endpoint_url=endpoint, **creds)
        client.create_bucket(Bucket="bench")
        client.upload_file(str(data), "bench", "table.parquet")
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1")

        def read_seconds(src):
            out = subprocess.run([str(CLI), "fit", src, "--k", "8", "--max-iter", "1", "--backend", "cpu", "--json", *EXTRA,
                                  "--quiet", "--force", "--model", str(work / "m.json")],
                                 env=env, capture_output=True, text=True, check=True)
            return json.loads(out.stdout)["read_seconds"]

        read_seconds(str(data))  # warm the page cache
        disk, remote = [], []
        for _ in range(repeats):
            disk.append(read_seconds(str(data)))
            remote.append(read_seconds("s3://bench/table.parquet"))
        d, r = statistics.median(disk), statistics.median(remote)
        size = data.stat().st_size / 1e6
        print(f"{rows} × {dims}, file {size:.0f} MB; median of {repeats} (read_seconds of fit --json)")
        print(f"disk (page cache): {d:.3f} s   s3 (moto on loopback): {r:.3f} s   ratio {r / d:.2f}×")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
