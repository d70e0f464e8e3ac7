"""microseg: subscriber tables to micro-segments.

Exact k-means (k-means++, Hamerly and triangle-inequality-pruned iterations) on the
CPU or a GPU, with models that explain, profile and track their segments. The same
engine as the ``microseg`` command line: a model fitted here is the same file, byte
for byte, as ``microseg fit`` writes for the same rows and options.

Data goes in as anything Arrow can stream without a copy (a ``pyarrow.Table`` or
``RecordBatchReader``, a polars ``DataFrame``, a DuckDB result: any object with
``__arrow_c_stream__``), or as a pandas ``DataFrame``, a dict of columns or a 2-D
numpy array (converted through pyarrow). Results come back as ``pyarrow.Table``.

>>> import microseg, pyarrow.parquet as pq
>>> table = pq.read_table("datasets/online_retail_customers.parquet")
>>> model = microseg.fit(table, k=8, log1p=["monetary", "frequency"])
>>> model.assign(table).num_rows
4372
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Optional, Sequence

# Probing for a GPU loads Vulkan drivers whose Wayland code prints
# "XDG_RUNTIME_DIR is invalid" on stderr when the variable is unset (containers, batch
# jobs); microseg draws no windows. Set before the native module starts any thread.
if "XDG_RUNTIME_DIR" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
    os.environ["XDG_RUNTIME_DIR"] = tempfile.gettempdir()

import numpy as np
import pyarrow as pa

from . import _native
from ._native import InvalidInputError

__version__ = _native.__version__
__all__ = ["fit", "features", "load", "loads", "neighbors", "similar", "Model", "InvalidInputError", "__version__"]


def _arrow(data: Any) -> Any:
    """Anything tabular as an object with ``__arrow_c_stream__`` (no copy when it has one);
    a path or URL (or a list of them) is passed on as text, read by the engine as the CLI
    reads it (Parquet files, directories, ``s3://`` / ``gs://`` / ``az://`` objects and prefixes)."""
    if hasattr(data, "__arrow_c_stream__"):
        return data
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, os.PathLike)) for p in data):
        return [os.fspath(p) for p in data]
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise InvalidInputError(f"a numpy array of features must be 2-D (rows × features), not {data.ndim}-D")
        return pa.table({f"x{j}": np.ascontiguousarray(data[:, j]) for j in range(data.shape[1])})
    if isinstance(data, dict):
        return pa.table(data)
    try:  # pandas, and anything else pyarrow understands
        return pa.Table.from_pandas(data, preserve_index=False)
    except Exception:  # noqa: BLE001 - fall through to a clear message
        pass
    raise InvalidInputError(
        f"cannot read {type(data).__name__} as a table: give a pyarrow Table or RecordBatchReader, "
        "a polars or pandas DataFrame, a dict of columns or a 2-D numpy array"
    )


class Model:
    """A fitted segmentation: features and their transforms, centroids, per-segment
    statistics, the training baseline for drift, and a manifest of how it was made."""

    def __init__(self, native: Any, report: Optional[dict] = None):
        self._native = native
        #: What the fit did (rows, iterations, inertia, timings), as ``--json`` prints it.
        self.report: Optional[dict] = report

    # -- contents -----------------------------------------------------------------
    def to_dict(self) -> dict:
        """The model file as a dict."""
        return json.loads(self._native.to_json())

    def to_json(self) -> str:
        """The model file's JSON text (what ``save`` writes)."""
        return self._native.to_json()

    @property
    def k(self) -> int:
        return self.to_dict()["k"]

    @property
    def features(self) -> list:
        """Feature names in model order (``column`` or ``column[i]`` for embeddings)."""
        return [f["name"] for f in self.to_dict()["features"]]

    @property
    def segment_ids(self) -> list:
        return [s["id"] for s in self.to_dict()["segments"]]

    @property
    def centroids(self) -> np.ndarray:
        """Centroids in model space (after log1p and scaling), shape (k, d)."""
        return np.asarray(self._native.centroids(), dtype=np.float32)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model's geometry; profiles and reports carry it."""
        return self._native.fingerprint()

    # -- jobs ---------------------------------------------------------------------
    def assign(
        self,
        data: Any,
        *,
        id_col: Optional[str] = None,
        explain: bool = False,
        profile: Optional[dict] = None,
        backend: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> pa.Table:
        """Every row's ``segment`` (int32), ``distance`` and ``margin`` (float32), with the
        id column (``id_col``, else the model's, else ``subscriber_id``, else ``row``
        numbers); ``explain=True`` adds an ``explanation`` column, naming segments from
        ``profile`` (a dict from :meth:`profile`) or the model."""
        reader = self._native.assign(
            _arrow(data),
            id_col=id_col,
            explain=explain,
            profile_json=None if profile is None else json.dumps(profile),
            backend_name=backend,
            allow_software_gpu=allow_software_gpu,
        )
        return reader.read_all()

    def profile(
        self,
        data: Any,
        *,
        outcomes: Sequence[str] = (),
        id_col: Optional[str] = None,
        backend: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> dict:
        """Per-segment profiles: size, share, each feature's mean and quantiles against the
        population, the features that set the segment apart, a generated name, and
        summaries of ``outcomes`` columns (as ``microseg profile`` writes them)."""
        return json.loads(
            self._native.profile(
                _arrow(data),
                outcomes=list(outcomes),
                id_col=id_col,
                backend_name=backend,
                allow_software_gpu=allow_software_gpu,
            )
        )

    def drift(
        self,
        data: Any,
        *,
        watch: float = 0.1,
        retrain: float = 0.25,
        backend: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> dict:
        """PSI of segment shares and of every feature against the training baseline, and a
        verdict: stable, watch, retrain or insufficient_data (as ``microseg drift``)."""
        return json.loads(
            self._native.drift(
                _arrow(data), watch=watch, retrain=retrain, backend_name=backend, allow_software_gpu=allow_software_gpu
            )
        )

    def update(
        self,
        data: Any,
        *,
        decay: Optional[float] = None,
        half_life_rows: Optional[float] = None,
        half_life_days: Optional[float] = None,
        elapsed_days: Optional[float] = None,
        as_of: Optional[str] = None,
        max_iter: int = 10,
        max_growth: float = 1.5,
        min_share: Optional[float] = None,
        backend: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> "Model":
        """Fold new rows into a k-means model without refitting (``microseg update``):
        segment ids and names are kept, the past is decayed by ``decay`` (1 keeps it all),
        ``half_life_rows`` or ``half_life_days`` (with ``elapsed_days``, or ``as_of`` after
        an update that recorded one). The new model's ``report`` says what moved and which
        segments grew too wide or too small. This model is not changed."""
        native, report = self._native.update(
            _arrow(data),
            decay=decay,
            half_life_rows=half_life_rows,
            half_life_days=half_life_days,
            elapsed_days=elapsed_days,
            as_of=as_of,
            max_iter=max_iter,
            max_growth=max_growth,
            min_share=min_share,
            backend_name=backend,
            allow_software_gpu=allow_software_gpu,
        )
        return Model(native, json.loads(report))

    def save(self, path: "os.PathLike[str] | str", *, overwrite: bool = True) -> None:
        """Write the model file atomically (a temporary file renamed into place)."""
        self._native.save(os.fspath(path), overwrite=overwrite)

    def __repr__(self) -> str:
        d = self.to_dict()
        return f"<microseg.Model k={d['k']} features={len(d['features'])} metric={d['metric']}>"


def fit(
    data: Any,
    k: int = 8,
    *,
    features: Optional[Iterable[str]] = None,
    exclude: Iterable[str] = (),
    log1p: Iterable[str] = (),
    scale: str = "standard",
    missing: str = "error",
    weight_col: Optional[str] = None,
    id_col: Optional[str] = None,
    init: Any = "k-means++",
    init_sample: int = 0,
    n_init: int = 1,
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    seed: int = 0,
    previous: Optional[Model] = None,
    allow_sensitive: bool = False,
    allow_duplicate_ids: bool = False,
    batch_size: int = 1024,
    max_no_improvement: int = 10,
    refine: int = 0,
    split_merge: int = 2,
    reassignment_ratio: float = 0.01,
    stream: bool = False,
    shuffle_rows: int = 1 << 20,
    metric: str = "euclidean",
    embedding_weight: Optional[float] = None,
    algorithm: str = "auto",
    backend: Optional[str] = None,
    allow_software_gpu: bool = False,
    method: str = "kmeans",
    covariance: str = "diag",
    reg_covar: float = 1e-6,
    kernel: Optional[str] = None,
) -> Model:
    """Fit k-means segments (or a Gaussian mixture) on a table; one keyword per flag of
    ``microseg fit``, same defaults.

    data: a pyarrow Table/RecordBatchReader, polars/pandas DataFrame, dict of columns,
        2-D numpy array, or a path or URL of Parquet data (a file, a directory, an
        ``s3://`` / ``gs://`` / ``az://`` object or prefix; see docs/object-storage.md).
    k: number of segments.
    features: feature columns (default: every numeric column but the id and weight
        columns). exclude: columns left out of that default.
    log1p: heavy-tailed columns transformed by ln(1 + x) before scaling.
    scale: "standard" (mean 0, sd 1, fitted here and stored in the model) or "none".
    missing: rows with null/NaN/inf features: "error", "drop" or "mean" (fill).
    weight_col: sample weights column. id_col: the id column carried into outputs.
    init: "k-means++", "k-means||", "random", a path to a centroids file, or an array of
        k × d initial centroids in model space.
    init_sample, n_init, max_iter, tol, seed: as the CLI (k-means: tol is relative to
        the mean feature variance, max_iter 300; gmm: tol is on the change of the mean
        log-likelihood, default 1e-3, max_iter 100, as scikit-learn).
    method: "kmeans", or "gmm" for a Gaussian mixture fitted by EM (start: the
        project's k-means, or ``init`` centroids); covariance: "full", "diag",
        "spherical" or "tied"; reg_covar: added to every covariance's diagonal.
    previous: a previous Model of the same features; segment ids and names are kept.
    metric: "euclidean" or "cosine" (spherical k-means).
    algorithm: "auto", "lloyd", "hamerly" or "pruned" (same model bit for bit), or "minibatch" (approximate, scikit-learn's MiniBatchKMeans; batch_size rows per step).
    refine: with "minibatch", then up to this many exact iterations; split_merge: in that many
        rounds, each started by split/merge moves (a centroid sharing a cluster moves to one
        that holds two), which reach a lower objective than the full fit in a fraction of its time.
    stream: with "minibatch", read the data in batches on every pass instead of loading
    it (data larger than memory; shuffle_rows rows in the shuffle buffer).
    backend: "auto", "cpu" or "gpu" (default: MICROSEG_BACKEND, else auto).
    kernel: the CPU distance kernel, "auto", "gemm", "f32-avx2", "f32-avx512",
        "int8-avx2", "int8-vnni" or "int8-amx" (default: MICROSEG_CPU_KERNEL, else auto); every kernel gives the
        same model byte for byte.

    Raises InvalidInputError (a ValueError) for bad data or arguments, with the
    command line's message. The GIL is released while the fit runs; Ctrl-C stops it
    between iterations (KeyboardInterrupt).
    """
    init_centroids = None
    if not isinstance(init, (str, os.PathLike)):
        init_centroids = np.asarray(init, dtype=np.float32).ravel().tolist()
        init = "k-means++"
    native, report = _native.fit(
        _arrow(data),
        k=k,
        features=None if features is None else list(features),
        exclude=list(exclude),
        log1p=list(log1p),
        scale=scale,
        missing=missing,
        weight_col=weight_col,
        id_col=id_col,
        init=os.fspath(init),
        init_centroids=init_centroids,
        init_sample=init_sample,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        previous=None if previous is None else previous._native,
        allow_sensitive=allow_sensitive,
        allow_duplicate_ids=allow_duplicate_ids,
        batch_size=batch_size,
        max_no_improvement=max_no_improvement,
        refine=refine,
        split_merge=split_merge,
        reassignment_ratio=reassignment_ratio,
        stream=stream,
        shuffle_rows=shuffle_rows,
        metric=metric,
        embedding_weight=embedding_weight,
        algorithm=algorithm,
        backend_name=backend,
        allow_software_gpu=allow_software_gpu,
        method=method,
        covariance=covariance,
        reg_covar=reg_covar,
        kernel=kernel,
    )
    return Model(native, json.loads(report))


def load(path: "os.PathLike[str] | str") -> Model:
    """Read a model file written by ``microseg fit`` or :meth:`Model.save`."""
    return Model(_native.load(os.fspath(path)))


def loads(text: str) -> Model:
    """A model from its JSON text."""
    return Model(_native.loads(text))


def neighbors(
    base: Any,
    queries: Any,
    *,
    embedding: str,
    k: int,
    metric: str = "cosine",
    id_col: Optional[str] = None,
    backend: Optional[str] = None,
    allow_software_gpu: bool = False,
) -> pa.Table:
    """Exact top-``k`` neighbours of every query row among the base rows, by ``"cosine"``
    or inner product (``"ip"``) over an embedding column (a fixed-length list of
    numbers): a table of ``query``, ``rank`` (int32, from 1), ``neighbor``, ``score``;
    ids keep their columns' types (row numbers without an id column). The result is a
    float64 brute force's, ties to the lower row (as ``microseg neighbors``)."""
    return _native.neighbors(
        _arrow(base), _arrow(queries), embedding, k, metric=metric, id_col=id_col,
        backend_name=backend, allow_software_gpu=allow_software_gpu,
    ).read_all()


def similar(
    data: Any,
    *,
    embedding: str,
    top: int,
    seeds: Any = None,
    seed_ids: Optional[Iterable[Any]] = None,
    mode: str = "max",
    metric: str = "cosine",
    id_col: Optional[str] = None,
    backend: Optional[str] = None,
    allow_software_gpu: bool = False,
) -> pa.Table:
    """A look-alike audience: the ``top`` rows of ``data`` most similar to the seeds
    (``seeds``: a table with the same embedding column; or ``seed_ids``: ids looked up in
    the id column), seeds left out; ``mode`` is ``"max"`` (the most similar seed),
    ``"mean"`` or ``"centroid"``. Returns id, ``rank`` (int32) and ``score``."""
    return _native.similar(
        _arrow(data), embedding, top,
        seeds=None if seeds is None else _arrow(seeds),
        seed_ids=None if seed_ids is None else [str(i) for i in seed_ids],
        mode=mode, metric=metric, id_col=id_col, backend_name=backend, allow_software_gpu=allow_software_gpu,
    ).read_all()


def features(
    events: Any,
    *,
    as_of: Any,
    id_col: Optional[str] = None,
    time_col: Optional[str] = None,
    type_col: Optional[str] = None,
    types: Optional[dict] = None,
    value_col: Optional[str] = None,
    category_col: Optional[str] = None,
    categories: int = 10,
    timezone_col: Optional[str] = None,
    timezone: str = "UTC",
    time_unit: str = "day",
    predict: bool = False,
    horizon: float = 90.0,
    discount_rate: float = 0.1,
    holdout_from: Any = None,
    event_type: Optional[str] = None,
    order_col: Optional[str] = None,
    skip_null_ids: bool = False,
    skip_negative_values: bool = False,
) -> "tuple[pa.Table, Optional[dict]]":
    """An event log (any Arrow table or stream: pyarrow, polars, DuckDB, pandas) to one
    feature row per subscriber, as ``microseg features`` (the same columns, see the
    README). ``as_of`` and ``holdout_from`` are dates or times (``datetime``/``date`` or
    ISO 8601 text). ``types`` maps a kind (``purchase``, ``send``, ``open``, ``click``,
    ``visit``, ``unsubscribe``, ``complaint``, ``bounce``, ``ignore``) to the names it
    has in the type column; ``event_type="purchase"`` reads a table of orders or order
    lines without a type column, with ``order_col`` (lines of one order count once in
    ``orders``), a ``value_col`` such as ``"Quantity*UnitPrice"``, ``skip_null_ids`` and
    ``skip_negative_values`` (refunds). With ``predict``, BG/NBD and Gamma-Gamma are fitted and their
    columns added; the second value is then the traits model (the ``--traits-out``
    JSON as a dict), else ``None``."""
    def text(t: Any) -> Optional[str]:
        if t is None or isinstance(t, str):
            return t
        return t.isoformat()

    reader, traits = _native.features(
        _arrow(events), text(as_of), id_col=id_col, time_col=time_col, type_col=type_col,
        types=None if types is None else {k: list(v) for k, v in types.items()},
        value_col=value_col, category_col=category_col, categories=categories, timezone_col=timezone_col,
        timezone=timezone, time_unit=time_unit, predict=predict, horizon=horizon, discount_rate=discount_rate,
        holdout_from=text(holdout_from), event_type=event_type, order_col=order_col,
        skip_null_ids=skip_null_ids, skip_negative_values=skip_negative_values,
    )
    return reader.read_all(), None if traits is None else json.loads(traits)


# microseg.spark: k-means on Spark DataFrames (pyspark is imported only when it is used).
from . import spark  # noqa: E402,F401
