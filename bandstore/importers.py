"""Weights in: embedding tables from torch, safetensors and numpy files, without unpickling.

:func:`read_tensors` lists the 2-D floating point tensors of one file as lazy arrays (their rows
are read chunk by chunk while a table is written); :func:`import_weights` adds every such tensor
of several files to a store (``bandstore import``); :func:`add_to_store` is the atomic step both
it and :func:`bandstore.torch.export_embeddings` end with.

Naming: a tensor's key without a trailing ``.weight`` names its table (``user.weight`` ->
``user``, ``emb.user.weight`` -> ``emb.user``: other dots are kept, so the table is named by the
module path that :func:`bandstore.torch.swap_embedding_bags` looks for). Nested dicts of a torch
file are flattened with dotted keys; a ``.npy`` file's key is its file name without ``.npy``.
``match`` is a regular expression searched (``re.search``) in the key.

Files are read in ways that cannot execute code: ``torch.load(weights_only=True, mmap=True)``,
``safetensors.safe_open``, ``np.load(allow_pickle=False)``. A ``.npy`` file is memory-mapped, a
torch file mapped (zip format; the legacy format is loaded whole), safetensors tensors read by
slices: none is copied whole into RAM. A ``.npz`` member is loaded whole while its table is
written (zip members cannot be mapped), one member at a time.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, WeightsFileError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".npz", ".npy")
_SAFETENSORS_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class LazyArray:
    """A 2-D float tensor of a file: ``shape``, ``dtype`` (of the rows it gives) and row slices
    ``a[start:stop]`` read from the file as numpy arrays, as ``Store.add_tables`` takes."""

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: Any,
        read: Callable[[int, int], np.ndarray],
        source: str,
        key: str,
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self.ndim = 2
        self.dtype = np.dtype(dtype)
        self.source = source
        self.key = key
        self._read = read

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise InvalidArgumentError(
                "a LazyArray reads contiguous row slices only", argument="index", value=index
            )
        start, stop, _ = index.indices(self.shape[0])
        try:
            rows = np.asarray(self._read(start, max(start, stop)))
        except Exception as exc:  # a file truncated or damaged past its header
            raise WeightsFileError(self.source, f"cannot read tensor {self.key!r}: {exc}") from exc
        return rows.astype(self.dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyArray({self.source}:{self.key}, shape={self.shape}, dtype={self.dtype})"


@dataclass
class ImportReport:
    """What an import wrote: per table its source file and key, rows, dim and codec; the
    tensors left out (not 2-D float, or not matching) with the reason; the committed version."""

    store: str
    version: int
    created: bool
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "version": self.version,
            "created": self.created,
            "tables": self.tables,
            "skipped": self.skipped,
        }


def table_name(key: str) -> str:
    """The table a tensor key names: the key without a trailing ``.weight``."""
    return key[: -len(".weight")] if key.endswith(".weight") and key != ".weight" else key


def read_tensors(
    path: str | os.PathLike,
    match: str | re.Pattern | None = None,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> Iterator[tuple[str, LazyArray]]:
    """``(table name, LazyArray)`` for each 2-D floating point tensor of the file at ``path``
    whose key matches ``match`` (all when None). The file is opened (and its header checked)
    before the first item; a file that cannot be read raises :class:`WeightsFileError` naming
    it. Tensors left out are appended to ``skipped`` as ``{file, key, reason}``."""
    path = Path(path)
    pattern = re.compile(match) if isinstance(match, str) else match
    tensors = _open_file(path)  # eager: a bad file fails here, before any table is written
    return _select(path, tensors, pattern, skipped)


def _select(
    path: Path,
    tensors: list[tuple[str, tuple[int, ...], str, Any]],
    pattern: re.Pattern | None,
    skipped: list[dict[str, str]] | None,
) -> Iterator[tuple[str, LazyArray]]:
    for key, shape, kind, make in tensors:
        reason = None
        if pattern is not None and not pattern.search(key):
            reason = f"key does not match {pattern.pattern!r}"
        elif kind != "f":
            reason = "not floating point"
        elif len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            reason = f"shape {tuple(shape)} is not a non-empty 2-D table"
        if reason is not None:
            if skipped is not None:
                skipped.append({"file": str(path), "key": key, "reason": reason})
            continue
        yield table_name(key), make()


def _open_file(path: Path) -> list[tuple[str, tuple[int, ...], str, Callable[[], LazyArray]]]:
    """(key, shape, dtype kind, make LazyArray) of every tensor of the file."""
    if not path.is_file():
        raise WeightsFileError(str(path), "no such file")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return _torch_tensors(path)
    if suffix == ".safetensors":
        return _safetensors_tensors(path)
    if suffix == ".npz":
        return _npz_tensors(path)
    if suffix == ".npy":
        return _npy_tensors(path)
    raise WeightsFileError(
        str(path), f"unknown file type {suffix or '(none)'!r}; expected one of {list(SUFFIXES)}"
    )


def _npy_tensors(path: Path) -> list:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise WeightsFileError(str(path), f"not a readable .npy array ({exc})") from exc
    key = path.name[: -len(".npy")]

    def make() -> LazyArray:
        return LazyArray(array.shape, array.dtype, lambda a, b: array[a:b], str(path), key)

    return [(key, array.shape, array.dtype.kind, make)]


def _npz_tensors(path: Path) -> list:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        headers = {key: _npz_header(npz, key) for key in npz.files}
    except WeightsFileError:
        raise
    except Exception as exc:
        raise WeightsFileError(str(path), f"not a readable .npz archive ({exc})") from exc
    out = []
    for key, (shape, dtype) in headers.items():

        def make(key: str = key, shape: tuple = shape, dtype: Any = dtype) -> LazyArray:
            held: dict[str, np.ndarray] = {}

            def read(a: int, b: int) -> np.ndarray:
                # A member is loaded when its first rows are asked for and let go after its
                # last: one member in RAM at a time while a store writes table after table.
                if "rows" not in held:
                    held["rows"] = npz[key]
                rows = held["rows"][a:b]
                if b >= shape[0]:
                    held.clear()
                return rows

            return LazyArray(shape, dtype, read, str(path), key)

        out.append((key, shape, np.dtype(dtype).kind, make))
    return out


def _npz_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npz member from its .npy header, without reading its data."""
    with npz.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise WeightsFileError(str(npz.fid.name if npz.fid else key), f"{key!r} holds objects")
    return tuple(shape), dtype


def _safetensors_tensors(path: Path) -> list:
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise WeightsFileError(
            str(path), "reading safetensors needs the safetensors package (pip install safetensors)"
        ) from exc
    try:
        handle = safe_open(str(path), framework="numpy")
        keys = list(handle.keys())
        info = {}
        for k in keys:
            sl = handle.get_slice(k)
            info[k] = (tuple(sl.get_shape()), sl.get_dtype())
    except Exception as exc:
        raise WeightsFileError(str(path), f"not a readable safetensors file ({exc})") from exc
    out: list[tuple[Any, tuple[Any, ...], str, Any]] = []
    for key, (shape, st_dtype) in info.items():
        if st_dtype in _SAFETENSORS_FLOATS:
            dtype = _SAFETENSORS_FLOATS[st_dtype]

            def make(key: str = key, shape: tuple = shape, dtype: Any = dtype) -> LazyArray:
                sl = handle.get_slice(key)  # (keeps the file handle alive)
                return LazyArray(shape, dtype, lambda a, b: sl[a:b], str(path), key)

            out.append((key, shape, "f", make))
        elif st_dtype == "BF16":  # numpy has no bfloat16: read through torch, as float32

            def make_bf16(key: str = key, shape: tuple = shape, dtype: Any = None) -> LazyArray:
                try:
                    import torch  # noqa: F401
                except ImportError as exc:
                    raise WeightsFileError(
                        str(path), f"{key!r} is bfloat16, which reading needs torch for"
                    ) from exc
                sl = safe_open(str(path), framework="pt").get_slice(key)
                return LazyArray(
                    shape, np.float32, lambda a, b: sl[a:b].float().numpy(), str(path), key
                )

            out.append((key, shape, "f", make_bf16))
        else:
            out.append((key, shape, "other", None))
    return out


def _torch_tensors(path: Path) -> list:
    try:
        import torch
    except ImportError as exc:
        raise WeightsFileError(
            str(path), "reading torch files needs torch (bandstore[torch])"
        ) from exc
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # The legacy (non-zip) format cannot be mapped: load it whole.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(
            str(path), f"not a torch file loadable with weights_only=True ({exc})"
        ) from exc
    flat: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        flat[table_name(path.stem)] = obj
    elif isinstance(obj, Mapping):
        _flatten(obj, "", flat, torch.Tensor)
    else:
        raise WeightsFileError(
            str(path), f"holds a {type(obj).__name__}, not a tensor or a dict of tensors"
        )
    out = []
    for key, t in flat.items():
        kind = "f" if t.is_floating_point() else "other"

        def make(key: str = key, t: Any = t) -> LazyArray:
            t = t.detach()
            exact = t.dtype in (torch.float16, torch.float32, torch.float64)
            dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(t.dtype, np.float32)
            if exact:
                return LazyArray(t.shape, dtype, lambda a, b: t[a:b].numpy(), str(path), key)
            return LazyArray(
                t.shape, np.float32, lambda a, b: t[a:b].float().numpy(), str(path), key
            )

        out.append((key, tuple(t.shape), kind, make))
    return out


def _flatten(obj: Mapping, prefix: str, out: dict[str, Any], tensor_type: type) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, tensor_type):
            out[key] = v
        elif isinstance(v, Mapping):
            _flatten(v, key + ".", out, tensor_type)


def collect_tables(
    files: list[str | os.PathLike] | tuple, match: str | None = None
) -> tuple[dict[str, LazyArray], list[dict[str, str]]]:
    """Every importable tensor of ``files`` by table name, and the tensors left out. Raises
    :class:`WeightsFileError` on an unreadable file, a table name given by two tensors, or
    when no tensor qualifies."""
    if not files:
        raise InvalidArgumentError("give at least one file to import", argument="files")
    try:
        pattern = re.compile(match) if match is not None else None
    except re.error as exc:
        raise InvalidArgumentError(
            f"--match {match!r} is not a regular expression ({exc})", argument="match"
        ) from exc
    tables: dict[str, LazyArray] = {}
    skipped: list[dict[str, str]] = []
    for f in files:
        for name, arr in read_tensors(f, pattern, skipped=skipped):
            if name in tables:
                prev = tables[name]
                raise WeightsFileError(
                    str(f),
                    f"tensor {arr.key!r} names table {name!r}, as {prev.key!r} of "
                    f"{prev.source} does",
                )
            tables[name] = arr
    if not tables:
        what = "2-D floating point tensors" + (f" with a key matching {match!r}" if match else "")
        raise WeightsFileError(", ".join(str(f) for f in files), f"no {what} found")
    return tables, skipped


def add_to_store(
    path: str | os.PathLike,
    tables: Mapping[str, Any],
    *,
    codec: str | Mapping[str, str] = "float32",
    block_size: int = 4096,
    progress: bool | None = None,
    note: str | None = None,
) -> tuple[int, bool]:
    """Add ``tables`` to the store at ``path`` in one new version, creating the store if there
    is none (``block_size`` then applies). On any error the store is left as it was, and a store
    this call created is removed with every directory it made. Returns (version, created)."""
    import bandstore

    root = Path(path)
    if (root / "catalog").is_dir():
        with bandstore.open(root, writable=True, cache_bytes=0, plan=False) as s:
            s.add_tables(tables, codec=codec, progress=progress, note=note)
            return s.version, False
    # The first directory this call makes (the store or an ancestor): removed on failure.
    made = root.absolute()
    while not made.parent.exists():
        made = made.parent
    existed = made.exists()
    store = bandstore.create(root, block_size=block_size)
    try:
        store.add_tables(tables, codec=codec, progress=progress, note=note)
        version = store.version
    except BaseException:
        store.close()
        if existed:  # an empty directory given as the store: empty again
            for child in made.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(made, ignore_errors=True)
        raise
    store.close()
    return version, True


def import_weights(
    store: str | os.PathLike,
    files: list[str | os.PathLike] | tuple,
    *,
    codec: str = "float32",
    match: str | None = None,
    block_size: int = 4096,
    progress: bool | None = None,
) -> ImportReport:
    """Add every 2-D floating point tensor of ``files`` (whose key matches ``match``) to the
    store at ``store`` as a table (see the module docstring for names), all in one version; the
    store is created if missing. A failed import leaves the store exactly as it was (and no
    store where there was none): see :func:`add_to_store`."""
    tables, skipped = collect_tables(list(files), match)
    version, created = add_to_store(
        store,
        tables,
        codec=codec,
        block_size=block_size,
        progress=progress,
        note="import " + " ".join(Path(f).name for f in files),
    )
    report = ImportReport(str(store), version, created, skipped=skipped)
    for name, arr in tables.items():
        report.tables[name] = {
            "file": arr.source,
            "key": arr.key,
            "rows": arr.shape[0],
            "dim": arr.shape[1],
            "codec": codec,
        }
    return report


__all__ = [
    "ImportReport",
    "LazyArray",
    "add_to_store",
    "collect_tables",
    "import_weights",
    "read_tensors",
    "table_name",
]
