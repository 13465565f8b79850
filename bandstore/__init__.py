"""bandstore: an embedding store for recommendation models.

Rows read together share 4 KB blocks on a slow tier (NVM, NVMe), a DRAM cache sized by
miniature simulation sits in front, and numba kernels serve pooled lookups without the GIL.
Offline tuning (relayout, cache sizing, planning) is in :mod:`bandstore.tune`.
"""

from bandstore.errors import (
    BandstoreError,
    BudgetError,
    ClusterUnavailableError,
    ConcurrentWriteError,
    CorruptBlockError,
    CorruptDataError,
    CorruptFileError,
    CorruptLogError,
    CorruptUpdateError,
    DirectIOUnsupportedError,
    FormatMismatchError,
    FormatVersionError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
    MalformedRequestError,
    MissingDependencyError,
    NotAStoreError,
    PlanError,
    QueueFullError,
    ReadOnlyError,
    RequestTooLargeError,
    ShardUnavailableError,
    StorageFullError,
    StoreClosedError,
    StoreExistsError,
    StorePickleError,
    TableExistsError,
    TraceFormatError,
    UnknownTableError,
    WeightsFileError,
)
from bandstore.kernels.cache import NEVER
from bandstore.options import CacheOptions, ServeOptions
from bandstore.serve.store import Store, TableInfo, create, open
from bandstore.storage.origin import CountsOrigin
from bandstore.traces.trace import Trace

__version__ = "0.1.0"

__all__ = [
    "NEVER",
    "CacheOptions",
    "CountsOrigin",
    "ServeOptions",
    "Store",
    "TableInfo",
    "Trace",
    "create",
    "open",
    "BandstoreError",
    "InvalidArgumentError",
    "InvalidDtypeError",
    "InvalidShapeError",
    "IdOutOfRangeError",
    "InvalidOffsetsError",
    "UnknownTableError",
    "TableExistsError",
    "CorruptDataError",
    "CorruptBlockError",
    "CorruptFileError",
    "CorruptLogError",
    "CorruptUpdateError",
    "NotAStoreError",
    "StoreExistsError",
    "FormatVersionError",
    "FormatMismatchError",
    "StorageFullError",
    "ReadOnlyError",
    "StoreClosedError",
    "ConcurrentWriteError",
    "TraceFormatError",
    "BudgetError",
    "PlanError",
    "StorePickleError",
    "WeightsFileError",
    "DirectIOUnsupportedError",
    "MalformedRequestError",
    "RequestTooLargeError",
    "QueueFullError",
    "ShardUnavailableError",
    "MissingDependencyError",
    "ClusterUnavailableError",
]
