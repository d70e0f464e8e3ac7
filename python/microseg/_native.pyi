"""Type stubs of the compiled module (the documented API is in microseg/__init__.py)."""

from typing import Any, Optional, Sequence, Tuple

__version__: str

class InvalidInputError(ValueError): ...

class NativeModel:
    def to_json(self) -> str: ...
    def save(self, path: str, overwrite: bool = True) -> None: ...
    def fingerprint(self) -> str: ...
    def centroids(self) -> list[list[float]]: ...
    def assign(
        self,
        data: Any,
        id_col: Optional[str] = None,
        explain: bool = False,
        profile_json: Optional[str] = None,
        backend_name: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> Any: ...
    def profile(
        self,
        data: Any,
        outcomes: Sequence[str] = (),
        id_col: Optional[str] = None,
        backend_name: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> str: ...
    def drift(
        self,
        data: Any,
        watch: float = 0.1,
        retrain: float = 0.25,
        backend_name: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> str: ...
    def update(
        self,
        data: Any,
        decay: Optional[float] = None,
        half_life_rows: Optional[float] = None,
        half_life_days: Optional[float] = None,
        elapsed_days: Optional[float] = None,
        as_of: Optional[str] = None,
        max_iter: int = 10,
        max_growth: float = 1.5,
        min_share: Optional[float] = None,
        backend_name: Optional[str] = None,
        allow_software_gpu: bool = False,
    ) -> Tuple[NativeModel, str]: ...

def load(path: str) -> NativeModel: ...
def loads(text: str) -> NativeModel: ...
def fit(
    data: Any,
    k: int = 8,
    features: Optional[list[str]] = None,
    exclude: list[str] = ...,
    log1p: list[str] = ...,
    scale: str = "standard",
    missing: str = "error",
    weight_col: Optional[str] = None,
    id_col: Optional[str] = None,
    init: str = "k-means++",
    init_centroids: Optional[list[float]] = None,
    init_sample: int = 0,
    n_init: int = 1,
    max_iter: Optional[int] = None,
    tol: Optional[float] = None,
    seed: int = 0,
    previous: Optional[NativeModel] = None,
    allow_sensitive: bool = False,
    allow_duplicate_ids: bool = False,
    batch_size: int = 1024,
    max_no_improvement: int = 10,
    refine: int = 0,
    split_merge: int = 2,
    reassignment_ratio: float = 0.01,
    stream: bool = False,
    shuffle_rows: int = 1048576,
    metric: str = "euclidean",
    embedding_weight: Optional[float] = None,
    algorithm: str = "auto",
    backend_name: Optional[str] = None,
    allow_software_gpu: bool = False,
    method: str = "kmeans",
    covariance: str = "diag",
    reg_covar: float = 1e-6,
    kernel: Optional[str] = None,
) -> tuple[NativeModel, str]: ...
def neighbors(
    base: Any,
    queries: Any,
    embedding: str,
    k: int,
    metric: str = "cosine",
    id_col: Optional[str] = None,
    backend_name: Optional[str] = None,
    allow_software_gpu: bool = False,
) -> Any: ...
def similar(
    data: Any,
    embedding: str,
    top: int,
    seeds: Any = None,
    seed_ids: Optional[list[str]] = None,
    mode: str = "max",
    metric: str = "cosine",
    id_col: Optional[str] = None,
    backend_name: Optional[str] = None,
    allow_software_gpu: bool = False,
) -> Any: ...
def features(
    events: Any,
    as_of: str,
    id_col: Optional[str] = None,
    time_col: Optional[str] = None,
    type_col: Optional[str] = None,
    types: Optional[dict[str, list[str]]] = None,
    value_col: Optional[str] = None,
    category_col: Optional[str] = None,
    categories: int = 10,
    timezone_col: Optional[str] = None,
    timezone: str = "UTC",
    time_unit: str = "day",
    predict: bool = False,
    horizon: float = 90.0,
    discount_rate: float = 0.1,
    holdout_from: Optional[str] = None,
) -> tuple[Any, Optional[str]]: ...
