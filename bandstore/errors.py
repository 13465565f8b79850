"""Every error bandstore raises.

Each class derives from :class:`BandstoreError` and from the built-in exception it refines, so
callers can catch either (``except KeyError`` still catches an unknown table). Each carries the
facts of the failure as attributes, and a message that names the problem.
"""

from __future__ import annotations

from typing import Any


class BandstoreError(Exception):
    """Base class of every error raised by bandstore."""


class InvalidArgumentError(BandstoreError, ValueError):
    """An argument has an invalid value (a mode, a rate, a size, a name...)."""

    def __init__(self, message: str, *, argument: str | None = None, value: Any = None):
        super().__init__(message)
        self.argument = argument
        self.value = value


class InvalidDtypeError(BandstoreError, TypeError):
    """An array has a dtype bandstore does not accept (float ids, complex data...)."""

    def __init__(self, message: str, *, argument: str, dtype: Any):
        super().__init__(message)
        self.argument = argument
        self.dtype = dtype


class InvalidShapeError(BandstoreError, ValueError):
    """An array has the wrong number of dimensions or the wrong length."""

    def __init__(self, message: str, *, argument: str, shape: tuple[int, ...]):
        super().__init__(message)
        self.argument = argument
        self.shape = shape


class IdOutOfRangeError(BandstoreError, IndexError):
    """An id is negative or not below the table's number of rows."""

    def __init__(self, table: str, position: int, value: int, rows: int):
        super().__init__(
            f"id {value} at position {position} is out of range for table {table!r} "
            f"(valid ids are 0 <= id < {rows})"
        )
        self.table = table
        self.position = position
        self.value = value
        self.rows = rows


class InvalidOffsetsError(BandstoreError, ValueError):
    """EmbeddingBag offsets that do not describe bags over the given indices."""

    def __init__(self, message: str, *, table: str | None = None, position: int | None = None):
        super().__init__(message)
        self.table = table
        self.position = position


class UnknownTableError(BandstoreError, KeyError):
    """A table name that the store (or trace) does not hold."""

    def __init__(self, table: str, known: list[str] | tuple[str, ...] = ()):
        known = sorted(known)
        super().__init__(f"unknown table {table!r}; the store has {known}")
        self.table = table
        self.known = known

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class TableExistsError(BandstoreError, ValueError):
    """add_table with a name the store already holds."""

    def __init__(self, table: str):
        super().__init__(f"table {table!r} already exists in this store")
        self.table = table


class CorruptDataError(BandstoreError, OSError):
    """Stored bytes do not match their checksum or are not in the expected format."""


class CorruptBlockError(CorruptDataError):
    """A block of a block file does not match its stored checksum."""

    def __init__(self, table: str, block: int, path: str, expected: int, actual: int):
        super().__init__(
            f"block {block} of table {table!r} is corrupt: checksum {actual:#018x} "
            f"!= stored {expected:#018x} ({path})"
        )
        self.table = table
        self.block = block
        self.path = path
        self.expected = expected
        self.actual = actual


class CorruptFileError(CorruptDataError):
    """A store file (block file header, layout file, trace, catalog record) is malformed."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CorruptUpdateError(CorruptDataError):
    """A record of the update log whose structure or checksum is wrong."""

    def __init__(
        self,
        table: str,
        seq: int,
        reason: str,
        expected: int | None = None,
        actual: int | None = None,
    ):
        super().__init__(f"update record {seq} of table {table!r}: {reason}")
        self.table = table
        self.seq = seq
        self.reason = reason
        self.expected = expected
        self.actual = actual


class CorruptLogError(CorruptDataError):
    """The update log's file is damaged before its end (not a torn last write, which is dropped):
    ``path`` and ``offset`` name the frame (or segment header) whose structure or checksum is
    wrong."""

    def __init__(
        self,
        path: str,
        offset: int,
        reason: str,
        expected: int | None = None,
        actual: int | None = None,
    ):
        super().__init__(f"{path}: update log frame at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason
        self.expected = expected
        self.actual = actual


class NotAStoreError(BandstoreError, FileNotFoundError):
    """The path does not hold a bandstore store."""

    def __init__(self, path: str, reason: str = "no bandstore catalog found"):
        super().__init__(f"{path} is not a bandstore store: {reason}")
        self.path = path
        self.reason = reason


class StoreExistsError(BandstoreError, FileExistsError):
    """create() on a path that already holds a store or other files."""

    def __init__(self, path: str):
        super().__init__(f"{path} already exists and is not empty")
        self.path = path


class FormatVersionError(BandstoreError, ValueError):
    """The store (or file) was written by a format version this code cannot read."""

    def __init__(self, path: str, found: int, supported: int):
        super().__init__(
            f"{path} has format version {found}; this bandstore reads format version {supported}"
        )
        self.path = path
        self.found = found
        self.supported = supported


class FormatMismatchError(BandstoreError, ValueError):
    """Reopening a store with a format argument that conflicts with the stored one."""

    def __init__(self, parameter: str, stored: Any, requested: Any):
        super().__init__(
            f"{parameter}={requested!r} conflicts with the store's stored {parameter}={stored!r}"
        )
        self.parameter = parameter
        self.stored = stored
        self.requested = requested


class StorageFullError(BandstoreError, OSError):
    """The filesystem holding the store has no room left for a write (ENOSPC).

    The write was abandoned: its partial files are removed and the store is as before."""

    def __init__(self, path: str, needed: int | None = None):
        what = f" for {needed} bytes" if needed is not None else ""
        super().__init__(
            f"no space left on the device{what} writing {path}; the store is unchanged"
        )
        self.path = path
        self.needed = needed


class ReadOnlyError(BandstoreError, PermissionError):
    """A write on a store opened for serving only."""


class StoreClosedError(BandstoreError, ValueError):
    """An operation on a closed store."""

    def __init__(self) -> None:
        super().__init__("operation on a closed store")


class ConcurrentWriteError(BandstoreError, RuntimeError):
    """Another writer committed a version since this writer started from its base."""

    def __init__(self, base: int, current: int):
        super().__init__(
            f"the store's current version is {current}, not {base} that this write started "
            "from; another writer committed in between. Retry from the new version."
        )
        self.base = base
        self.current = current


class TraceFormatError(BandstoreError, ValueError):
    """An access log or trace file that cannot be parsed."""

    def __init__(self, path: str, reason: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.reason = reason
        self.line = line


class BudgetError(BandstoreError, ValueError):
    """A DRAM budget that cannot hold what it must (smaller than the smallest useful cache)."""

    def __init__(self, message: str, *, budget: int, needed: int | None = None):
        super().__init__(message)
        self.budget = budget
        self.needed = needed


class PlanError(BandstoreError, ValueError):
    """An invalid plan: unknown strategy, bad worker count, a table assigned twice..."""

    def __init__(self, message: str, *, table: str | None = None):
        super().__init__(message)
        self.table = table


class StorePickleError(BandstoreError, TypeError):
    """Pickling a store handle that cannot be reopened as it stands (writable or closed).

    A Store pickles as its path and open options; only read-only handles from
    ``bandstore.open`` do (``TypeError``, as pickle raises for objects it cannot pickle).
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot pickle the store at {path}: {reason}")
        self.path = path
        self.reason = reason


class WeightsFileError(BandstoreError, ValueError):
    """A weights file to import (torch, safetensors, .npz, .npy) that cannot be read or holds
    nothing to import."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


class DirectIOUnsupportedError(BandstoreError, OSError):
    """``io="direct"`` on a file whose filesystem refuses ``O_DIRECT`` (tmpfs, some FUSE or
    network filesystems): open the store with ``io="mmap"``, or keep it on a block device."""

    def __init__(self, path: str, filesystem: str, reason: str):
        super().__init__(
            f"{path}: the {filesystem} filesystem refuses O_DIRECT reads ({reason}); "
            "open the store with io='mmap' or keep it on a filesystem over a block device"
        )
        self.path = path
        self.filesystem = filesystem
        self.reason = reason


class MalformedRequestError(BandstoreError, ValueError):
    """A request body (of ``bandstore serve``) that cannot be parsed or lacks a required field."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class RequestTooLargeError(BandstoreError, ValueError):
    """A request body larger than the server's limit."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"request body of {size} bytes or more exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class QueueFullError(BandstoreError, RuntimeError):
    """The server's request queue is full; retry later."""

    def __init__(self, depth: int, limit: int):
        super().__init__(f"the request queue is full ({depth} waiting, limit {limit}); retry later")
        self.depth = depth
        self.limit = limit


class ShardUnavailableError(BandstoreError, RuntimeError):
    """No replica of a shard answered within the router's retry window (a sharded server's
    503: the shard is down or still restarting)."""

    def __init__(self, shard: int, seconds: float, cause: str):
        super().__init__(
            f"shard {shard} did not answer within {seconds:g} s (every replica failed; last "
            f"error: {cause}); retry later"
        )
        self.shard = shard
        self.seconds = seconds
        self.cause = cause


class MissingDependencyError(BandstoreError, ImportError):
    """An optional dependency (an extra such as ``[serve]``) is not installed."""

    def __init__(self, extra: str, module: str):
        super().__init__(
            f"this needs the [{extra}] extra (module {module!r} is missing): "
            f"pip install 'bandstore[{extra}]'"
        )
        self.extra = extra
        self.module = module


class ClusterUnavailableError(BandstoreError, ConnectionError):
    """A compute cluster (Ray) could not be reached or started: nothing ran on it."""

    def __init__(self, address: str, cause: str):
        super().__init__(f"cannot reach the Ray cluster at {address!r}: {cause}")
        self.address = address
        self.cause = cause
