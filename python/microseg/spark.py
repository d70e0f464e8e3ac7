"""k-means on Spark DataFrames, and assignments through ``mapInArrow``.

``fit`` runs the single-node fit's Lloyd iterations over the DataFrame's partitions, all
in one barrier stage whose tasks exchange small messages through a gather the driver
serves (or ``BarrierTaskContext.allGather``):

1. each task receives its rows once: Spark's own Arrow batches of its partition (made in
   the JVM by ``toArrowBatchRdd``, shuffled as whole batches where the frame has more
   partitions than task slots; ``mapInArrow`` where that method is missing, as on Spark
   Connect), or, where the DataFrame is a plain scan of Parquet files, its share of their
   row groups, read by the task itself with pyarrow. It sends its moments (count, mean, squared
   deviations: a few numbers per feature); every task merges them in partition order
   into the same scaling;
2. the start is the given centroids, or k-means++ on a seeded sample that every task
   draws from its rows and sends; every task runs the same k-means++ on it;
3. every iteration the tasks exchange their partition's statistics (k·d sums, weights,
   squared errors: kilobytes), merge them in partition order (the same on every task)
   and update the centroids with the library's code. Empty clusters take the farthest
   rows of all partitions, as on one machine;
4. a last pass gives the segments' statistics and the drift baseline's sample, returned
   to the driver as each task's row of the stage's result.

Where barrier mode is not available (dynamic allocation), ``barrier=False`` runs a job
for the moments, ``df.sample`` for the start and one job per iteration.

The result is the same model file as ``microseg.fit`` writes, usable by the CLI
(``assign``, ``profile``, ``drift``, ``report``). From a given start it equals the
single-node fit's (same labels, centroids within rounding). The Rust work of each task
releases the GIL and runs on ``spark.task.cpus`` threads.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

import pyarrow as pa

from . import Model, _native


def _arrow_schema(df) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema)


def _empty(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([], schema=schema)


def _table(batches, schema: pa.Schema) -> pa.Table:
    """A task's batches as one table of ``schema``. Spark's batches can be stricter than
    the DataFrame's schema: after ``filter("x >= 0")`` the optimiser knows x is not null
    and sends it so."""
    batches = list(batches)
    if not batches:
        return _empty(schema)
    t = pa.Table.from_batches(batches)
    return t if t.schema.equals(schema) else t.cast(schema)


def _lists(schema: pa.Schema):
    return [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]


def _template(df, schema: pa.Schema) -> pa.Table:
    """What a plan is built from: no rows, or where the frame has list columns
    (``array<float>`` embeddings), one row holding each list column's first non-empty
    value (the other columns null): the plan reads an embedding's width from its
    values, as the single-node fit does from the file's first rows."""
    lists = _lists(schema)
    if not lists:
        return _empty(schema)
    from pyspark.sql import functions as F

    columns = {}
    for name in lists:
        got = df.select(df[name]).where(F.size(df[name]) > 0).limit(1).toArrow()
        columns[name] = got.column(0).cast(schema.field(name).type) if got.num_rows else pa.nulls(1, schema.field(name).type)
    return pa.table([columns.get(f.name, pa.nulls(1, f.type)) for f in schema], schema=schema)


class _TaskPlan:
    """What a task rebuilds the plan from: the options and the template of the columns."""

    def __init__(self, template: pa.Table, options: str):
        self.template, self.options = template, options

    def build(self):
        return _native.SparkPlan(self.template, self.options)


def _task_partition(ctx, batches, schema, task_options, scaling, offsets):
    """A task's partition in model space, from its plan rebuilt in the task."""
    pid = ctx.partitionId()
    plan = task_options.build()
    return pid, plan.partition(scaling, _table(batches, schema), offsets[pid], _cpus(ctx))


class _Gather:
    """A gather served by the driver over TCP: in each round every task sends one text
    and receives every task's text, in partition order (what ``allGather`` does, in
    milliseconds instead of about a second per call on local[2]). The barrier stage
    guarantees the tasks run at once; the server holds no state but the round."""

    def __init__(self, tasks: int, host: str):
        import socket
        import threading

        self.tasks = tasks
        self.sock = socket.create_server((host, 0))
        self.address = (host, self.sock.getsockname()[1])
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conns = []
        try:
            while len(conns) < self.tasks:
                c, _ = self.sock.accept()
                conns.append(c)
            files = [c.makefile("rwb") for c in conns]
            while True:
                got = []
                for f in files:
                    line = f.readline()
                    if not line:
                        return
                    got.append(json.loads(line))
                reply = (json.dumps([t for _, t in sorted(got, key=lambda m: m[0])]) + "\n").encode()
                for f in files:
                    f.write(reply)
                    f.flush()
        except BaseException as e:  # noqa: BLE001 - reported by close()
            self.error = e
        finally:
            for c in conns:
                c.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


def _connect(address):
    import socket

    conn = socket.create_connection(tuple(address))
    f = conn.makefile("rwb")

    def gather(pid, text):
        f.write((json.dumps([pid, text]) + "\n").encode())
        f.flush()
        line = f.readline()
        if not line:
            raise RuntimeError("microseg.spark: the driver's gather channel closed")
        return json.loads(line)

    return conn, gather


def _arrow_batches(sdf, slots: int):
    """``sdf``'s rows as Spark's own Arrow record batches (an RDD of IPC messages, made
    by the JVM from the rows without a Python worker), shuffled into ``slots``
    partitions where it has more, and the Arrow schema they are written in; None where
    the session has no JVM (Spark Connect) or the internal method is missing: then
    ``mapInArrow`` sends the rows. Measured on local[2] (docs/benchmarks.md): half the
    seconds of ``mapInArrow``, and a shuffle of these batches costs far less than a
    shuffle of the rows before ``mapInArrow``."""
    try:
        from pyspark.rdd import RDD
        from pyspark.serializers import NoOpSerializer
        from pyspark.sql.pandas.types import to_arrow_schema

        session = sdf.sparkSession
        conf = session.conf
        written = to_arrow_schema(
            sdf.schema,
            timezone=conf.get("spark.sql.session.timeZone"),
            prefers_large_types=str(conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")).lower() == "true",
        )
        jrdd = sdf._jdf.toArrowBatchRdd().toJavaRDD()
        if jrdd.getNumPartitions() > slots:
            jrdd = jrdd.repartition(slots)
        return RDD(jrdd, session.sparkContext, NoOpSerializer()), written
    except Exception:  # noqa: BLE001 - no JVM or no such method: mapInArrow instead
        return None


def _read_messages(messages, written: pa.Schema):
    """The record batches of ``_arrow_batches``' IPC messages, checked against the
    schema they were written in."""
    for m in messages:
        b = pa.ipc.read_record_batch(pa.py_buffer(m), written)
        b.validate()
        yield b


def _cpus(ctx) -> int:
    try:
        return max(1, int(ctx.cpus()))
    except Exception:  # noqa: BLE001 - older Spark: one core per task
        return 1


def _parquet_shares(sdf, tasks: int, schema: pa.Schema):
    """Where ``sdf`` is a plain scan of Parquet files (columns selected, no filter, no
    partition columns, not cached), the files' row groups split into at most ``tasks``
    contiguous shares of about equal rows, for the barrier tasks to read themselves
    with pyarrow: Spark's own path converts every row to Arrow in the JVM and streams it
    to the Python worker, which takes longer than the whole fit (measured in
    docs/benchmarks.md). None where the plan is anything else or a file cannot be
    opened or cast to the DataFrame's schema: Spark then sends the rows."""
    try:
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        def kind(o) -> str:
            return str(o.getClass().getSimpleName())

        node = sdf._jdf.queryExecution().optimizedPlan()
        if kind(node) == "Project":
            exprs = node.projectList()
            if any(kind(exprs.apply(i)) != "AttributeReference" for i in range(exprs.size())):
                return None
            node = node.child()
        if kind(node) != "LogicalRelation":
            return None
        rel = node.relation()
        if kind(rel) != "HadoopFsRelation" or kind(rel.fileFormat()) != "ParquetFileFormat":
            return None
        if rel.partitionSchema().length() > 0:
            return None
        files = sorted(sdf.inputFiles())
        units = []
        for uri in files:
            fs, path = pafs.FileSystem.from_uri(uri)
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            have = meta.schema.to_arrow_schema()
            if not all(n in have.names for n in schema.names):
                return None
            # Fails where a column's type cannot be cast to the DataFrame's.
            _empty(pa.schema([have.field(n) for n in schema.names])).cast(schema)
            units += [(uri, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    except Exception:  # noqa: BLE001 - anything unexpected: Spark sends the rows
        return None
    total = sum(u[2] for u in units)
    if total == 0:
        return None
    shares = [[] for _ in range(tasks)]
    seen = 0
    for u in units:
        shares[min(tasks - 1, seen * tasks // total)].append(u)
        seen += u[2]
    return [sh for sh in shares if sh]


def _read_share(share, schema: pa.Schema, cpus: int):
    """A share's row groups as record batches of ``schema``, in file and group order."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    batches = []
    i = 0
    while i < len(share):
        uri = share[i][0]
        groups = []
        while i < len(share) and share[i][0] == uri:
            groups.append(share[i][1])
            i += 1
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_file(path) as f:
            t = pq.ParquetFile(f).read_row_groups(groups, columns=schema.names, use_threads=cpus > 1)
        batches += t.select(schema.names).cast(schema).to_batches()
    return batches


def fit(
    df,
    *,
    k: int = 8,
    features: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    log1p: Sequence[str] = (),
    scale: str = "standard",
    missing: str = "error",
    weight_col: Optional[str] = None,
    id_col: Optional[str] = None,
    init: str = "k-means++",
    init_centroids: Any = None,
    init_sample: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    metric: str = "euclidean",
    embedding_weight: Optional[float] = None,
    allow_sensitive: bool = False,
    barrier: bool = True,
    num_workers: Optional[int] = None,
    exchange: str = "driver",
    read: str = "auto",
) -> Model:
    """Fit k-means on a Spark DataFrame; the options are ``microseg.fit``'s. The model's
    ``report`` says what the fit did (iterations, inertia, seconds).

    barrier: run the iterations in one barrier stage of ``num_workers`` tasks (default:
    the task slots, ``defaultParallelism / spark.task.cpus``; more partitions are
    repartitioned into that many, one shuffle). False: one job per iteration over the DataFrame's
    own partitions, for clusters where barrier mode is unavailable (dynamic allocation).

    exchange: how the barrier tasks exchange their statistics each iteration: "driver"
    (a gather the driver serves over TCP: the tasks must reach ``spark.driver.host``) or
    "allgather" (``BarrierTaskContext.allGather``, about a second per call).

    read: "auto" lets the barrier tasks read a plain scan of Parquet files themselves
    (``spark.read.parquet(...)``, columns selected and nothing else; the files' row groups
    split among the tasks), which skips Spark's row-by-row conversion to Arrow; any other
    DataFrame, and ``read="spark"``, has Spark send the rows."""
    if exchange not in ("driver", "allgather"):
        raise ValueError(f"exchange={exchange!r}: use 'driver' or 'allgather'")
    if read not in ("auto", "spark"):
        raise ValueError(f"read={read!r}: use 'auto' or 'spark'")
    if not isinstance(init, str):
        init_centroids, init = init, "k-means++"
    options = {
        "k": k,
        "features": list(features) if features is not None else None,
        "exclude": list(exclude),
        "log1p": list(log1p),
        "scale": scale,
        "missing": missing,
        "weight_col": weight_col,
        "id_col": id_col,
        "init": init,
        "init_centroids": None if init_centroids is None else [float(v) for row in init_centroids for v in row],
        "init_sample": init_sample,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        "metric": metric,
        "embedding_weight": embedding_weight,
        "allow_sensitive": allow_sensitive,
    }
    full = _arrow_schema(df)
    template = _template(df, full)
    plan = _native.SparkPlan(template, json.dumps(options))
    sdf = df.select(*plan.columns())
    partitions = tasks = sdf.rdd.getNumPartitions()
    schema = _arrow_schema(sdf)
    template = template.select(schema.names).cast(schema)
    shares = None
    arrow = None
    if barrier:
        # A barrier stage starts all its tasks at once: no more tasks than task slots.
        # (coalesce is not allowed before a barrier stage; repartition shuffles once.)
        # The count of tasks is known here: asking the repartitioned frame would run its
        # shuffle once more under adaptive execution.
        sc = df.sparkSession.sparkContext
        cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        slots = num_workers or max(1, sc.defaultParallelism // max(cpus, 1))
        if read == "auto":
            shares = _parquet_shares(sdf, slots, schema)
        if shares is None:
            arrow = _arrow_batches(sdf, slots)
        if shares is not None:
            tasks = len(shares)
        elif arrow is not None:
            tasks = arrow[0].getNumPartitions()
        elif partitions > slots:
            sdf = sdf.repartition(slots)
            tasks = slots
    task_options = _TaskPlan(template, plan.task_options())
    dim = plan.dim()

    want = None if init_centroids is not None else (init_sample or max(64 * k, 10_000))
    if barrier:
        # Moments, the start and the iterations in one barrier stage: one conversion of
        # each partition, no job before it.
        result = _fit_barrier(sdf, tasks, schema, task_options, dim, metric, max_iter, seed, want, exchange, shares,
                              arrow)
        scaling = result["scaling"]
    else:
        scaling, offsets, total, tol_scaled = _moments_job(sdf, schema, task_options, plan)
        if want is None:
            start = plan.initial_centroids(scaling)
        else:
            fraction = min(1.0, 1.2 * want / max(total, 1))
            sample = sdf.sample(withReplacement=False, fraction=fraction, seed=seed).toArrow()
            start = plan.initial_centroids(scaling, sample)
        t0 = time.perf_counter()
        result = _fit_jobs(sdf, schema, task_options, scaling, start, dim, metric, tol_scaled, max_iter, offsets, total)
        result["seconds"] = time.perf_counter() - t0
        result["tasks"] = len(offsets)
    native, report = plan.assemble(
        scaling,
        result["centroids"],
        result["finals"],
        result["iterations"],
        result["converged"],
        result["relocations"],
        result["seconds"],
    )
    report = json.loads(report)
    report["spark"] = {
        "partitions": partitions, "tasks": result["tasks"], "barrier": barrier,
        "exchange": exchange if barrier else "jobs", "read": "parquet" if shares is not None else "spark",
        # How the rows reach the tasks: the tasks read the files, Spark's own Arrow
        # batches (made in the JVM), or mapInArrow.
        "delivery": "files" if shares is not None else "arrow-batches" if arrow is not None else "mapInArrow",
    }
    if "phases" in result:
        # Task 0's seconds: waiting for its rows (Spark reading and sending them), the
        # moments and the start, converting its rows, the iterations, the final pass.
        report["spark"]["phases"] = result["phases"]
    return Model(native, report)


def _moments_job(sdf, schema, task_options, plan):
    """One job: each partition's moments (one small row each), merged on the driver in
    partition order into the scaling. Returns the scaling, each partition's first row,
    the rows used and the scaled tolerance."""

    def moments(batches):
        from pyspark import TaskContext

        pid = TaskContext.get().partitionId()
        p = task_options.build()
        yield pa.RecordBatch.from_pydict({"pid": [pid], "m": [p.moments(_table(batches, schema))]})

    rows = sorted(sdf.mapInArrow(moments, "pid long, m string").collect(), key=lambda r: r.pid)
    scaling = plan.scaling([r.m for r in rows])
    offsets, total = _offsets([json.loads(r.m) for r in rows])
    return scaling, offsets, total, json.loads(scaling)["tol_scaled"]


def _offsets(moments):
    """Each partition's first row in the whole input, and the rows used, from the
    partitions' moments in partition order."""
    used = [m["rows_used"] for m in moments]
    return [sum(used[:i]) for i in range(len(used))], sum(used)


def _sample_text(table: pa.Table, fraction: float, seed: int, pid: int) -> str:
    """A seeded Bernoulli sample of a partition's rows, as Arrow IPC in base64 text."""
    import base64

    import numpy as np

    keep = np.random.default_rng([seed, pid]).random(table.num_rows) < fraction
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.filter(pa.array(keep)))
    return base64.b64encode(sink.getvalue().to_pybytes()).decode()


def _sample_table(texts, schema: pa.Schema) -> pa.Table:
    import base64

    tables = [pa.ipc.open_stream(base64.b64decode(t)).read_all() for t in texts]
    return pa.concat_tables(tables) if tables else _empty(schema)


def _fit_barrier(sdf, tasks, schema, task_options, dim, metric, max_iter, seed, want, exchange="driver", shares=None,
                 arrow=None):
    """Everything in one barrier stage. Every task converts its partition (or, with
    ``shares``, reads its share of the Parquet files) once, then exchanges: the moments (every task merges them in partition order into the same
    scaling); when no start is given (``want`` is the sample size), a seeded sample of
    its rows (every task draws the same k-means++ start from the same gathered sample);
    and each iteration's statistics."""
    address = None
    server = None
    if exchange == "driver":
        conf = sdf.sparkSession.sparkContext.getConf()
        server = _Gather(tasks, conf.get("spark.driver.host", "127.0.0.1"))
        address = server.address

    def train(batches):
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        pid = ctx.partitionId()
        clock = [time.perf_counter()]

        def lap():
            clock.append(time.perf_counter())
            return clock[-1] - clock[-2]
        if address is not None:
            conn, channel = _connect(address)

            def gather(text):
                return channel(pid, text)
        else:
            conn = None

            def gather(text):
                # allGather orders the messages by partition; the id makes it certain.
                got = [json.loads(m) for m in ctx.allGather(json.dumps([pid, text]))]
                return [t for _, t in sorted(got, key=lambda m: m[0])]

        plan = task_options.build()
        table = _table(batches, schema)
        phases = {"receive": lap()}
        moments = gather(plan.moments(table))
        scaling = plan.scaling(moments)
        offsets, total = _offsets([json.loads(m) for m in moments])
        tol_scaled = json.loads(scaling)["tol_scaled"]
        if want is None:
            start = plan.initial_centroids(scaling)
        else:
            fraction = min(1.0, 1.2 * want / max(total, 1))
            sample = _sample_table(gather(_sample_text(table, fraction, seed, pid)), schema)
            start = plan.initial_centroids(scaling, sample)
        phases["start"] = lap()
        part = plan.partition(scaling, table, offsets[pid], _cpus(ctx))
        del table
        phases["convert"] = lap()

        t0 = time.perf_counter()
        c, iterations, converged, relocations = list(start), 0, False, 0
        while iterations < max_iter:
            merged = _native.spark_merge(gather(part.step(c, dim)))
            empty = _native.spark_empty(merged)
            if empty:
                merged, moved = _native.spark_relocate(merged, gather(part.candidates(empty)))
                relocations += moved
            c, _, converged = _native.spark_update(merged, c, dim, metric, tol_scaled)
            iterations += 1
            if converged:
                break
        seconds = time.perf_counter() - t0
        phases["iterations"] = lap()
        if conn is not None:
            conn.close()
        # The final pass goes to the driver only, as this task's row of the result.
        final = part.finish(c, dim, total)
        phases["final"] = lap()
        texts = [final]
        if pid == 0:
            texts.append(json.dumps({"centroids": c, "iterations": iterations, "converged": converged,
                                     "relocations": relocations, "scaling": scaling, "tasks": len(moments),
                                     "seconds": seconds, "phases": phases}))
        yield pa.RecordBatch.from_pydict({"pid": [pid] * len(texts), "part": list(range(len(texts))),
                                          "text": texts})

    def read_and_train(_):
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()

        def batches():
            # Read when train asks for its rows, so that its "receive" phase times it.
            yield from _read_share(shares[ctx.partitionId()], schema, _cpus(ctx))

        for b in train(batches()):
            yield from zip(*b.to_pydict().values())

    written = arrow[1] if arrow is not None else None  # not the RDD: tasks cannot hold one

    def receive_and_train(messages):
        for b in train(_read_messages(messages, written)):
            yield from zip(*b.to_pydict().values())

    try:
        if shares is not None:
            sc = sdf.sparkSession.sparkContext
            got = sc.parallelize(range(tasks), tasks).barrier().mapPartitions(read_and_train).collect()
        elif arrow is not None:
            got = arrow[0].barrier().mapPartitions(receive_and_train).collect()
        else:
            got = None
            rows = sdf.mapInArrow(train, "pid long, part long, text string", barrier=True).toArrow()
        if got is not None:
            rows = pa.table({name: [r[i] for r in got] for i, name in enumerate(["pid", "part", "text"])})
    finally:
        if server is not None:
            server.close()
    rows = rows.sort_by([("pid", "ascending"), ("part", "ascending")]).to_pydict()
    finals = [t for p, t in zip(rows["part"], rows["text"]) if p == 0]
    result = json.loads([t for i, p, t in zip(rows["pid"], rows["part"], rows["text"]) if i == 0 and p == 1][0])
    result["finals"] = finals
    return result


def _fit_jobs(sdf, schema, task_options, scaling, start, dim, metric, tol_scaled, max_iter, offsets, total):
    """One Spark job per iteration (no barrier mode): each task converts its partition
    again and assigns it to the previous centroids first, to count changed labels."""

    def run(what, previous, c, m=0):
        def task(batches):
            from pyspark import TaskContext

            pid, part = _task_partition(TaskContext.get(), batches, schema, task_options, scaling, offsets)
            if previous is not None:
                part.step(previous, dim)
            if what == "step":
                out = part.step(c, dim)
            elif what == "candidates":
                part.step(c, dim)
                out = part.candidates(m)
            else:
                out = part.finish(c, dim, total)
            yield pa.RecordBatch.from_pydict({"pid": [pid], "out": [out]})

        rows = sdf.mapInArrow(task, "pid long, out string").collect()
        return [r.out for r in sorted(rows, key=lambda r: r.pid)]

    c, previous, iterations, converged, relocations = list(start), None, 0, False, 0
    while iterations < max_iter:
        merged = _native.spark_merge(run("step", previous, c))
        empty = _native.spark_empty(merged)
        if empty:
            merged, moved = _native.spark_relocate(merged, run("candidates", previous, c, empty))
            relocations += moved
        previous = c
        c, _, converged = _native.spark_update(merged, c, dim, metric, tol_scaled)
        iterations += 1
        if converged:
            break
    finals = run("finish", None, c)
    return {"centroids": c, "finals": finals, "iterations": iterations, "converged": converged,
            "relocations": relocations}


def assign(df, model: Model, *, id_col: Optional[str] = None, explain: bool = False, profile: Optional[dict] = None):
    """Every row of ``df`` through ``model``: a DataFrame of the id, ``segment``,
    ``distance`` and ``margin`` (and ``explanation`` on request), as ``microseg assign``
    writes them. Runs as ``mapInArrow``. Without an id column the rows are numbered in a
    ``row`` column across the whole DataFrame (a first job counts each partition's rows),
    as the CLI numbers the rows of its input."""
    from pyspark.sql.pandas.types import from_arrow_schema

    text = model.to_json()
    profile_json = None if profile is None else json.dumps(profile)
    schema = _arrow_schema(df)
    probe = model._native.assign(_empty(schema), id_col=id_col, explain=explain, profile_json=profile_json)
    out_schema = probe.schema
    numbered = out_schema.names[0] == "row" and "row" not in schema.names
    offsets = _row_offsets(df) if numbered else {}
    if numbered:
        # Spark has no unsigned integers: the row numbers are a long column.
        out_schema = out_schema.set(0, pa.field("row", pa.int64(), nullable=False))

    def task(batches):
        from pyspark import TaskContext

        first = offsets.get(TaskContext.get().partitionId(), 0)
        m = _native.loads(text)
        reader = m.assign(_table(batches, schema), id_col=id_col, explain=explain, profile_json=profile_json)
        for b in reader:
            if numbered:
                import pyarrow.compute as pc

                rows = pc.add(b.column(0).cast(pa.int64()), pa.scalar(first, pa.int64()))
                b = pa.RecordBatch.from_arrays([rows] + b.columns[1:], schema=out_schema)
            yield b

    return df.mapInArrow(task, from_arrow_schema(out_schema))


def _row_offsets(df) -> dict:
    """Each partition's first row in the whole DataFrame, from a job counting rows."""

    def count(batches):
        from pyspark import TaskContext

        n = sum(b.num_rows for b in batches)
        yield pa.RecordBatch.from_pydict({"pid": [TaskContext.get().partitionId()], "n": [n]})

    rows = sorted(df.mapInArrow(count, "pid long, n long").collect(), key=lambda r: r.pid)
    offsets, at = {}, 0
    for r in rows:
        offsets[r.pid] = at
        at += r.n
    return offsets
