"""Readers that turn public access logs into :class:`~bandstore.traces.trace.Trace` objects.

Each reader is ``read_X(path, **options) -> Trace``; :data:`FORMATS` maps a format name to its
reader and :func:`convert` dispatches by name (for the CLI and the benchmarks). Files are read
as bytes and parsed with numpy in bulk (one ``astype`` over all tokens, ``np.unique`` for dense
remapping); only when the bulk parse fails is the file walked line by line, to name the first
bad line in a :class:`~bandstore.errors.TraceFormatError`.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, TraceFormatError
from bandstore.traces.trace import Trace, take_bags

__all__ = [
    "FORMATS",
    "convert",
    "read_avazu",
    "read_criteo",
    "read_csv",
    "read_lastfm",
    "read_lightgcn",
    "read_movielens",
    "write_csv",
]

PathLike = str | os.PathLike[str]
_HEX = re.compile(rb"[0-9a-fA-F]+")


# ----------------------------------------------------------------------------- helpers
def _read_lines(path: PathLike, limit: int | None = None) -> list[tuple[int, bytes]]:
    """Non-blank lines of ``path`` with their 1-based line numbers (CRLF and a BOM tolerated).

    With ``limit``, at most that many non-blank lines are read (the file is streamed).
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        if limit is None:
            raw = f.read().splitlines()
        else:
            raw = list(itertools.islice(f, 2 * limit + 1024))  # blank lines are rare
            raw = [line.rstrip(b"\r\n") for line in raw]
    if raw and raw[0].startswith(b"\xef\xbb\xbf"):
        raw[0] = raw[0][3:]
    out = [(i + 1, line) for i, line in enumerate(raw) if line.strip()]
    if limit is not None:
        out = out[:limit]
    return out


def _check_limit(limit: int | None) -> None:
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0
    ):
        raise InvalidArgumentError(
            f"limit must be a non-negative integer or None, got {limit!r}",
            argument="limit",
            value=limit,
        )


def _split_fields(
    path: PathLike, lines: list[tuple[int, bytes]], sep: bytes | None, ncols: int
) -> np.ndarray:
    """``lines`` split into an ``(n, ncols)`` array of bytes fields (``sep=None``: whitespace).

    Raises TraceFormatError naming the first line with another number of fields.
    """
    if sep is None:
        parts = [line.split() for _, line in lines]
        bad = next((k for k, p in enumerate(parts) if len(p) != ncols), None)
        flat = list(itertools.chain.from_iterable(parts))
    else:
        bad = next((k for k, (_, ln) in enumerate(lines) if ln.count(sep) != ncols - 1), None)
        flat = sep.join(ln for _, ln in lines).split(sep) if lines else []
    if bad is not None:
        lineno, line = lines[bad]
        found = len(line.split()) if sep is None else line.count(sep) + 1
        raise TraceFormatError(
            os.fspath(path), f"expected {ncols} fields, found {found}: {_show(line)}", lineno
        )
    if not flat:
        return np.zeros((0, ncols), dtype="S1")
    return np.array(flat, dtype=np.bytes_).reshape(-1, ncols)


def _show(line: bytes | str, width: int = 80) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return repr(text if len(text) <= width else text[:width] + "...")


def _parse_column(
    path: PathLike,
    fields: np.ndarray,
    linenos: Callable[[], list[int]],
    what: str,
    dtype: type = np.int64,
    non_negative: bool = False,
) -> np.ndarray:
    """Parse a column of bytes fields as ``dtype``; on failure name the first bad line."""
    try:
        values: np.ndarray = fields.astype(dtype)
    except (ValueError, OverflowError):
        conv = int if dtype is np.int64 else float
        for k, tok in enumerate(fields.tolist()):
            try:
                v = conv(tok)
                if conv is int and not -(2**63) <= v < 2**63:
                    raise OverflowError
            except (ValueError, OverflowError):
                raise TraceFormatError(
                    os.fspath(path), f"{what} {_show(tok)} is not a valid number", linenos()[k]
                ) from None
        raise  # pragma: no cover - numpy and Python disagree on a token
    if dtype is np.float64 and values.size and not np.isfinite(values).all():
        k = int(np.argmax(~np.isfinite(values)))
        raise TraceFormatError(os.fspath(path), f"{what} is not finite", linenos()[k])
    if non_negative and values.size and values.min() < 0:
        k = int(np.argmax(values < 0))
        raise TraceFormatError(
            os.fspath(path), f"{what} {int(values[k])} is negative", linenos()[k]
        )
    return values


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense ids ``0..k-1`` for ``values`` in order of first appearance.

    Returns ``(ids, uniques_in_id_order, first_position_of_each_id)``.
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), values[:0], np.zeros(0, dtype=np.int64)
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank[inverse.reshape(-1)], uniq[order], first[order]


def _csr_from_groups(
    group: np.ndarray, values: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR pair of ``values`` grouped by ``group`` (0..n_groups-1), file order kept in a group."""
    order = np.argsort(group, kind="stable")
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=n_groups), out=offsets[1:])
    return values[order], offsets


def _one_per_query(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ids.astype(np.int64, copy=False), np.arange(ids.size + 1, dtype=np.int64)


def _looks_numeric(fields: list[bytes]) -> bool:
    try:
        for f in fields:
            float(f)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- readers
def _check_lightgcn_shape(path: str, lines: list[tuple[int, bytes]]) -> None:
    hint = (
        "LightGCN lists are 'user item item ...' per line (integers, space separated); for "
        "Last.fm's user_artists.dat use the `lastfm` format, for other column files `csv`"
    )
    if not lines:
        return  # an empty list is a trace of no queries (``convert`` refuses it)
    first_no, first = lines[0]
    if not _looks_numeric(first.split()):
        raise TraceFormatError(
            path, f"not a lightgcn interaction list: line {first_no} looks like a header "
            f"({first[:60]!r}). {hint}", line=first_no,
        )  # fmt: skip
    head = lines[:1000]
    if len(head) >= 2 and all(ln.count(b"\t") == 2 and len(ln.split()) == 3 for _, ln in head):
        raise TraceFormatError(
            path, "not a lightgcn interaction list: every line has exactly three tab-separated "
            f"fields, the shape of a weighted 'user item weight' log. {hint}",
        )  # fmt: skip


def read_lightgcn(path: PathLike, *, table: str = "item") -> Trace:
    """LightGCN-style interaction lists (amazon-book ``train.txt`` / ``test.txt``).

    Each non-blank line is ``user item item ...`` (whitespace separated, non-negative integer
    ids); it becomes one query reading its items from one table, in file order. A line with a
    user and no item is a query that reads nothing. ``num_rows`` is ``max item + 1``.

    The shape of the input is checked first: a header line, or a file whose
    every line is ``a<TAB>b<TAB>c`` (a weighted ``user item weight`` log such as Last.fm's
    ``user_artists.dat``, whose weights would be read as item ids) raise TraceFormatError.
    """
    spath = os.fspath(path)
    lines = _read_lines(spath)
    _check_lightgcn_shape(spath, lines)
    parts = [line.split() for _, line in lines]
    sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    flat = np.array(list(itertools.chain.from_iterable(parts)), dtype=np.bytes_)

    def linenos() -> list[int]:
        return np.repeat([n for n, _ in lines], sizes).tolist()

    values = _parse_column(spath, flat, linenos, "id", non_negative=True)
    starts = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    is_item = np.ones(values.size, dtype=bool)
    is_item[starts[:-1]] = False  # the first token of a line is the user
    offsets = np.zeros_like(starts)
    np.cumsum(sizes - 1, out=offsets[1:])
    return Trace({table: (values[is_item], offsets)})


def read_lastfm(
    path: PathLike, *, top: int | None = 50, table: str = "artist", header: bool | None = None
) -> Trace:
    """HetRec 2011 Last.fm ``user_artists.dat``: ``userID artistID weight`` (tab separated).

    One query per user, in order of first appearance: the user's ``top`` artists by weight
    (play count), heaviest first, ties in file order (``top=None`` keeps all). Artist ids are
    remapped to ``0..n-1`` in order of first appearance in the file, so ``num_rows`` counts
    every artist of the file even if ``top`` drops some. ``header=None`` detects a header line
    (the HetRec original has one; some copies do not).
    """
    spath = os.fspath(path)
    if top is not None and (
        isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1
    ):
        raise InvalidArgumentError(
            f"top must be a positive integer or None, got {top!r}", argument="top", value=top
        )
    lines = _read_lines(spath)
    if lines and (header or (header is None and not _looks_numeric(lines[0][1].split()))):
        lines = lines[1:]
    fields = _split_fields(spath, lines, None, 3)

    def linenos() -> list[int]:
        return [n for n, _ in lines]

    users = _parse_column(spath, fields[:, 0], linenos, "userID")
    artists = _parse_column(spath, fields[:, 1], linenos, "artistID")
    weight = _parse_column(spath, fields[:, 2], linenos, "weight", np.float64)
    artist_ids, uniq_artists, _ = _dense_ids(artists)
    user_rank, uniq_users, _ = _dense_ids(users)
    order = np.lexsort((-weight, user_rank))  # stable: ties keep file order
    grouped_users = user_rank[order]
    offsets = np.zeros(uniq_users.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(grouped_users, minlength=uniq_users.size), out=offsets[1:])
    ids = artist_ids[order]
    if top is not None:
        pos_in_user = np.arange(ids.size, dtype=np.int64) - offsets[grouped_users]
        keep = pos_in_user < top
        ids = ids[keep]
        offsets = np.zeros_like(offsets)
        np.cumsum(np.bincount(grouped_users[keep], minlength=uniq_users.size), out=offsets[1:])
    return Trace({table: (ids, offsets)}, {table: int(uniq_artists.size)})


def read_movielens(
    path: PathLike, *, session_gap: float | None = 3600, table: str = "movie"
) -> Trace:
    """GroupLens MovieLens ``ratings.csv``: header ``userId,movieId,rating,timestamp``.

    Each user's ratings are sorted by timestamp and cut into sessions wherever two consecutive
    ratings are more than ``session_gap`` seconds apart (``None``: one session per user). Each
    session is a query reading its movies in time order. Queries are ordered by session start
    time over all users (ties by user id), so splitting the trace by position splits it by time.
    Movie ids are remapped to ``0..n-1`` in order of first appearance in the file.
    """
    spath = os.fspath(path)
    if session_gap is not None and (
        isinstance(session_gap, bool)
        or not isinstance(session_gap, (int, float, np.integer, np.floating))
        or not session_gap >= 0
    ):
        raise InvalidArgumentError(
            f"session_gap must be a non-negative number of seconds or None, got {session_gap!r}",
            argument="session_gap",
            value=session_gap,
        )
    lines = _read_lines(spath)
    if not lines:
        raise TraceFormatError(spath, "empty file; expected a userId,movieId,... header")
    head_no, head = lines[0]
    columns = [c.strip().decode("utf-8", "replace") for c in head.split(b",")]
    need = ("userId", "movieId", "timestamp")
    missing = [c for c in need if c not in columns]
    if missing:
        raise TraceFormatError(
            spath, f"header {columns} lacks column(s) {missing}; expected {list(need)}", head_no
        )
    lines = lines[1:]
    fields = _split_fields(spath, lines, b",", len(columns))

    def linenos() -> list[int]:
        return [n for n, _ in lines]

    def col(name: str, dtype: type = np.int64) -> np.ndarray:
        return _parse_column(spath, fields[:, columns.index(name)], linenos, name, dtype)

    users = col("userId")
    movies = col("movieId")
    stamps = col("timestamp")
    if "rating" in columns:
        col("rating", np.float64)  # validated, not used
    movie_ids, uniq_movies, _ = _dense_ids(movies)
    order = np.lexsort((stamps, users))  # per user (by id), by time; stable
    u, t = users[order], stamps[order]
    new = np.ones(u.size, dtype=bool)
    if u.size > 1:
        new[1:] = u[1:] != u[:-1]
        if session_gap is not None:
            new[1:] |= (t[1:] - t[:-1]) > session_gap
    session_start = np.flatnonzero(new)
    offsets = np.append(session_start, u.size).astype(np.int64)
    by_start = np.argsort(t[session_start], kind="stable")  # ties: user id order
    ids, offsets = take_bags(movie_ids[order], offsets, by_start)
    return Trace({table: (ids, offsets)}, {table: int(uniq_movies.size)})


def read_criteo(
    path: PathLike, *, limit: int | None = None, label: bool = True, prefix: str = "C"
) -> Trace:
    """Criteo display-advertising logs (``train.txt`` style): tab separated, no header.

    Columns are ``label I1..I13 C1..C26`` (``label=False`` for the unlabelled test files). Each
    line is one query reading one row from each of the 26 tables ``C1..C26``: the dense id of its
    value within the column, in order of first appearance starting at 1; an empty value reads the
    dedicated row 0 ("missing"), which every table has. Categorical values must be hexadecimal.
    ``limit`` reads only the first lines of a (large) file.
    """
    spath = os.fspath(path)
    _check_limit(limit)
    lines = _read_lines(spath, limit)
    n_int, n_cat = 13, 26
    first_cat = n_int + (1 if label else 0)
    fields = _split_fields(spath, lines, b"\t", first_cat + n_cat)

    def linenos() -> list[int]:
        return [n for n, _ in lines]

    if label:
        _parse_column(spath, fields[:, 0], linenos, "label")
    tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    num_rows: dict[str, int] = {}
    for c in range(n_cat):
        name = f"{prefix}{c + 1}"
        column = fields[:, first_cat + c]
        present = column != b""
        ids = np.zeros(column.size, dtype=np.int64)
        dense, uniq, first = _dense_ids(column[present])
        for value, pos in zip(uniq.tolist(), first.tolist(), strict=True):
            if not _HEX.fullmatch(value):
                lineno = linenos()[int(np.flatnonzero(present)[pos])]
                raise TraceFormatError(
                    spath, f"column {name} value {_show(value)} is not hexadecimal", lineno
                )
        ids[present] = dense + 1
        tables[name] = _one_per_query(ids)
        num_rows[name] = int(uniq.size) + 1
    return Trace(tables, num_rows)


def read_avazu(
    path: PathLike,
    *,
    limit: int | None = None,
    exclude: tuple[str, ...] = ("id", "click", "hour"),
) -> Trace:
    """Avazu CTR logs: comma separated with a header ``id,click,hour,C1,banner_pos,...``.

    Every column except ``exclude`` is a categorical table named by its header; each line is one
    query reading one row from each: the value's dense id within its column, ``0..n-1`` in order
    of first appearance (values are opaque strings). ``limit`` reads only the first lines.
    """
    spath = os.fspath(path)
    _check_limit(limit)
    lines = _read_lines(spath, None if limit is None else limit + 1)
    if not lines:
        raise TraceFormatError(spath, "empty file; expected a header line")
    head_no, head = lines[0]
    columns = [c.strip().decode("utf-8", "replace") for c in head.split(b",")]
    if len(set(columns)) != len(columns) or "" in columns:
        raise TraceFormatError(spath, f"header has empty or repeated column names: {columns}", 1)
    keep = [k for k, c in enumerate(columns) if c not in set(exclude)]
    if not keep:
        raise TraceFormatError(spath, f"no categorical column in header {columns}", head_no)
    lines = lines[1:]
    fields = _split_fields(spath, lines, b",", len(columns))
    tables = {}
    for k in keep:
        ids, _, _ = _dense_ids(fields[:, k])
        tables[columns[k]] = _one_per_query(ids)
    return Trace(tables)


def read_csv(path: PathLike, *, num_rows: Mapping[str, int] | None = None) -> Trace:
    """Generic lookups: CSV with header ``query,table,id``, one lookup per line.

    ``query`` is any label; queries are numbered in order of first appearance (lines of a query
    need not be adjacent). Tables are ordered by first appearance; ids are used as given and
    must be non-negative integers. Within a query and table, ids keep file order. A query can
    only exist here if it reads something. ``num_rows`` declares table sizes (else max id + 1).
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceFormatError(spath, f"not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    linenos: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [c.strip() for c in row]
                if sorted(header) != ["id", "query", "table"]:
                    raise TraceFormatError(
                        spath, f"header must be query,table,id, got {header}", reader.line_num
                    )
                continue
            if len(row) != 3:
                raise TraceFormatError(
                    spath, f"expected 3 fields (query,table,id), found {len(row)}", reader.line_num
                )
            rows.append(row)
            linenos.append(reader.line_num)
    except csv.Error as exc:
        raise TraceFormatError(spath, f"bad CSV ({exc})", reader.line_num) from None
    if header is None:
        raise TraceFormatError(spath, "empty file; expected a query,table,id header")
    q_col, t_col, i_col = header.index("query"), header.index("table"), header.index("id")
    if not rows:
        return Trace({})
    arr = np.array(rows, dtype=np.str_)
    ids = _parse_column(spath, arr[:, i_col], lambda: linenos, "id", non_negative=True)
    tables_raw = np.char.strip(arr[:, t_col])
    if (tables_raw == "").any():
        k = int(np.argmax(tables_raw == ""))
        raise TraceFormatError(spath, "empty table name", linenos[k])
    query, _, _ = _dense_ids(arr[:, q_col])
    table, names, _ = _dense_ids(tables_raw)
    n_queries = int(query.max()) + 1
    out = {}
    for t, name in enumerate(names.tolist()):
        mine = table == t
        out[name] = _csr_from_groups(query[mine], ids[mine], n_queries)
    return Trace(out, num_rows)


def write_csv(trace: Trace, path: PathLike) -> None:
    """Write ``trace`` in the generic ``query,table,id`` format (query = its position).

    Lines are in query order, then table order, then bag order. Queries that read nothing and
    the declared ``num_rows`` cannot be represented and are not written.
    """
    for name in trace.table_names:
        if any(ch in name for ch in ',"\r\n'):
            raise InvalidArgumentError(
                f"table name {name!r} cannot be written to CSV unquoted",
                argument="trace",
                value=name,
            )
    parts_q, parts_t, parts_i = [], [], []
    for k, name in enumerate(trace.table_names):
        idx, off = trace.table(name)
        parts_q.append(np.repeat(np.arange(trace.n_queries, dtype=np.int64), np.diff(off)))
        parts_t.append(np.full(idx.size, k, dtype=np.int64))
        parts_i.append(idx)
    if parts_q:
        q, t, i = (np.concatenate(p) for p in (parts_q, parts_t, parts_i))
    else:
        q = t = i = np.zeros(0, dtype=np.int64)
    order = np.lexsort((t, q))  # stable: bag order kept
    names = trace.table_names
    with open(os.fspath(path), "w", encoding="utf-8", newline="\n") as f:
        f.write("query,table,id\n")
        for chunk in range(0, order.size, 1 << 16):
            sel = order[chunk : chunk + (1 << 16)]
            f.writelines(
                f"{a},{names[b]},{c}\n"
                for a, b, c in zip(q[sel].tolist(), t[sel].tolist(), i[sel].tolist(), strict=True)
            )


# ----------------------------------------------------------------------------- dispatch
FORMATS: dict[str, Callable[..., Trace]] = {
    "lightgcn": read_lightgcn,
    "lastfm": read_lastfm,
    "movielens": read_movielens,
    "criteo": read_criteo,
    "avazu": read_avazu,
    "csv": read_csv,
}


def convert(format: str, input_path: PathLike, **options: Any) -> Trace:
    """Read ``input_path`` with the reader of ``format`` (a key of :data:`FORMATS`).

    Raises InvalidArgumentError for an unknown format or an option the reader does not take,
    TraceFormatError (with path and line) for a malformed file or one with no queries,
    FileNotFoundError if missing.
    """
    reader = FORMATS.get(format)
    if reader is None:
        raise InvalidArgumentError(
            f"unknown trace format {format!r}; known formats: {', '.join(sorted(FORMATS))}",
            argument="format",
            value=format,
        )
    params = inspect.signature(reader).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidArgumentError(
            f"format {format!r} has no option(s) {unknown}; it takes {accepted}",
            argument="options",
            value=unknown,
        )
    trace = reader(Path(input_path), **options)
    if trace.n_queries == 0:
        raise TraceFormatError(
            os.fspath(input_path), f"the input is empty: no {format} queries in it"
        )
    return trace
