"""Synthetic traces with controlled popularity skew and co-access structure.

The model, per table of ``R`` rows:

* The rows are shuffled and cut into ``ceil(R / community_size)`` *communities*: random sets of
  rows that tend to be read together (a topic, a user segment). They are not runs of
  consecutive ids, so the identity layout gets no co-access for free.
* Communities have Zipf popularity (exponent ``zipf``): community ``c`` (0-based) has weight
  ``(c + 1) ** -zipf``. Inside a community, members have Zipf weights too (member ``m`` of the
  shuffled community: ``(m + 1) ** -zipf``), so a community's rows are not equally hot and
  sorting rows by frequency does not recover the communities.
* The popularity of a row is ``P(community) * P(member | community)``. A query picks
  ``communities_per_query`` communities by popularity; each of its lookups is, with probability
  ``co_access``, a member of one of them (chosen uniformly), drawn by member weight, and
  otherwise a row drawn from the global popularity. Both branches draw from the same marginal
  distribution, so ``co_access`` changes *which rows are read together* and nothing else: the
  access counts (skew, cache behaviour without co-access) are the same for every ``co_access``.

Generation is vectorized numpy, in chunks of queries (bounded working memory), and
deterministic given ``seed``. Each table has its own random streams derived from ``seed`` and
its name, so a table's lookups do not change when other tables are added or removed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError
from bandstore.traces.trace import Trace

__all__ = ["synth", "dlrm_like", "communities", "BAG_SIZES", "DLRM_TABLES"]

#: Distributions of bag sizes (lookups of one query in one table) accepted by :func:`synth`.
BAG_SIZES = ("poisson", "geometric", "fixed")

_CHUNK_LOOKUPS = 1 << 21  # lookups generated per chunk (about 2M: ~100 MB of temporaries)
_STRUCTURE, _SIZES, _QUERIES = 0, 1, 2  # purposes of the per-table random streams


def _per_table(value: Any, names: list[str], argument: str) -> dict[str, Any]:
    """Expand a scalar or a per-table mapping to one value per table."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        missing = [n for n in names if n not in value]
        if unknown or missing:
            raise InvalidArgumentError(
                f"{argument} per table must name exactly the tables {names}; "
                f"unknown {unknown}, missing {missing}",
                argument=argument,
                value=value,
            )
        return {n: value[n] for n in names}
    return {n: value for n in names}


def _number(value: Any, argument: str, *, lo: float, hi: float = math.inf, integer=False) -> Any:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InvalidArgumentError(
            f"{argument} must be {kind} in [{lo}, {hi}], got {value!r}",
            argument=argument,
            value=value,
        )
    return int(value) if integer else float(value)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative (unnormalized) Zipf weights ``(k + 1) ** -exponent`` for ``k < n``."""
    return np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -exponent)


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """``size`` draws of ``0..len(cdf)-1`` with the weights behind ``cdf`` (inverse CDF)."""
    out = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    np.minimum(out, cdf.size - 1, out=out)
    return out


def _bag_sizes(rng: np.random.Generator, n: int, mean: float, mode: str, table: str) -> np.ndarray:
    if mode == "fixed":
        if not float(mean).is_integer():
            raise InvalidArgumentError(
                f"pooling of table {table!r} must be an integer with bag_sizes='fixed', got {mean}",
                argument="pooling",
                value=mean,
            )
        return np.full(n, int(mean), dtype=np.int64)
    if mode == "poisson":
        return 1 + rng.poisson(mean - 1.0, size=n).astype(np.int64)
    return rng.geometric(1.0 / mean, size=n).astype(np.int64)  # support 1, 2, ..., mean `mean`


def _table_rng(seed: int, table: str, purpose: int, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(table.encode("utf-8")), purpose, chunk])


def synth(
    tables: Mapping[str, int],
    n_queries: int,
    *,
    pooling: float | Mapping[str, float] = 20,
    zipf: float | Mapping[str, float] = 1.05,
    community_size: int | Mapping[str, int] = 64,
    co_access: float | Mapping[str, float] = 0.8,
    communities_per_query: int | Mapping[str, int] = 1,
    bag_sizes: str = "poisson",
    seed: int = 0,
) -> Trace:
    """Generate a trace of ``n_queries`` queries over ``tables`` (see the module docstring).

    Args:
        tables: table name -> number of rows (>= 1). Every query reads every table.
        n_queries: number of queries (>= 0).
        pooling: mean number of lookups per query per table (>= 1); a number or a per-table
            mapping. The actual bag sizes are drawn around it according to ``bag_sizes``.
        zipf: popularity exponent (>= 0; 0 is uniform), used both across communities and
            across the members of a community; a number or a per-table mapping. Larger is more
            skewed (see :func:`dlrm_like` for figures).
        community_size: rows per community (>= 1), i.e. how many rows are read together; a
            number or a per-table mapping. The last community of a table may be smaller.
        co_access: probability in [0, 1] that a lookup is drawn from one of the query's
            communities rather than from the global popularity. 0 gives independent lookups
            (no co-access structure beyond popularity); close to 1, queries read almost only
            within their communities. Does not change the access counts' distribution.
        communities_per_query: communities a query draws from in each table (>= 1).
        bag_sizes: ``"poisson"`` (``1 + Poisson(pooling - 1)``: sizes close to the mean),
            ``"geometric"`` (support 1, 2, ... with mean ``pooling``: many small bags, a long
            tail of large ones, as in production pooling factors) or ``"fixed"`` (every bag has
            exactly ``pooling`` ids; ``pooling`` must be an integer).
        seed: non-negative integer; the same arguments and seed give the same trace.

    Returns:
        A Trace whose ``num_rows`` are the given table sizes. Bags may repeat an id.
    """
    if not isinstance(tables, Mapping) or not tables:
        raise InvalidArgumentError(
            "tables must be a non-empty mapping of name -> rows", argument="tables", value=tables
        )
    names = list(tables)
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"table names must be non-empty strings, got {name!r}",
                argument="tables",
                value=name,
            )
    rows = {n: _number(tables[n], f"tables[{n!r}]", lo=1, integer=True) for n in names}
    n_queries = _number(n_queries, "n_queries", lo=0, integer=True)
    seed = _number(seed, "seed", lo=0, integer=True)
    if bag_sizes not in BAG_SIZES:
        raise InvalidArgumentError(
            f"bag_sizes must be one of {BAG_SIZES}, got {bag_sizes!r}",
            argument="bag_sizes",
            value=bag_sizes,
        )
    params = {
        "pooling": _per_table(pooling, names, "pooling"),
        "zipf": _per_table(zipf, names, "zipf"),
        "community_size": _per_table(community_size, names, "community_size"),
        "co_access": _per_table(co_access, names, "co_access"),
        "communities_per_query": _per_table(communities_per_query, names, "communities_per_query"),
    }
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        out[name] = _synth_table(
            name,
            rows[name],
            n_queries,
            pooling=_number(params["pooling"][name], "pooling", lo=1),
            zipf=_number(params["zipf"][name], "zipf", lo=0, hi=20),
            community_size=_number(
                params["community_size"][name], "community_size", lo=1, integer=True
            ),
            co_access=_number(params["co_access"][name], "co_access", lo=0, hi=1),
            communities_per_query=_number(
                params["communities_per_query"][name], "communities_per_query", lo=1, integer=True
            ),
            bag_sizes=bag_sizes,
            seed=seed,
        )
    return Trace._trusted(out, rows, n_queries)


def communities(name: str, rows: int, *, community_size: int = 64, seed: int = 0) -> np.ndarray:
    """The community of every row of table ``name`` as :func:`synth` draws them (int64[rows]).

    Community 0 is the most popular. For analysis and oracle baselines: a layout that packs
    each community into consecutive slots is the best a co-access layout could hope for.
    """
    rows = _number(rows, "rows", lo=1, integer=True)
    community_size = _number(community_size, "community_size", lo=1, integer=True)
    seed = _number(seed, "seed", lo=0, integer=True)
    csize = min(community_size, rows)
    perm = _table_rng(seed, name, _STRUCTURE).permutation(rows)
    out = np.empty(rows, dtype=np.int64)
    out[perm] = np.arange(rows, dtype=np.int64) // csize
    return out


def _synth_table(
    name: str,
    rows: int,
    n_queries: int,
    *,
    pooling: float,
    zipf: float,
    community_size: int,
    co_access: float,
    communities_per_query: int,
    bag_sizes: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    csize = min(community_size, rows)
    n_comm = -(-rows // csize)
    last_size = rows - (n_comm - 1) * csize  # == csize unless rows % csize
    id_dtype = np.int32 if rows <= np.iinfo(np.int32).max else np.int64
    # member m of community c is row perm[c * csize + m]: random sets, random member ranks
    perm = _table_rng(seed, name, _STRUCTURE).permutation(rows).astype(id_dtype, copy=False)
    comm_cdf = _zipf_cdf(n_comm, zipf)
    member_cdf = _zipf_cdf(csize, zipf)
    last_cdf = _zipf_cdf(last_size, zipf)

    sizes = _bag_sizes(_table_rng(seed, name, _SIZES), n_queries, pooling, bag_sizes, name)
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    indices = np.empty(int(offsets[-1]), dtype=np.int64)
    k = communities_per_query
    chunk_queries = max(1, int(_CHUNK_LOOKUPS // pooling))
    for chunk, q0 in enumerate(range(0, n_queries, chunk_queries)):
        q1 = min(q0 + chunk_queries, n_queries)
        lo, hi = int(offsets[q0]), int(offsets[q1])
        m = hi - lo
        if m == 0:
            continue
        rng = _table_rng(seed, name, _QUERIES, chunk)
        query_comm = _draw(rng, comm_cdf, (q1 - q0) * k).reshape(q1 - q0, k)
        local_q = np.repeat(np.arange(q1 - q0), sizes[q0:q1])
        if k > 1:
            comm = query_comm[local_q, rng.integers(0, k, size=m)]
        else:
            comm = query_comm[local_q, 0]
        del local_q
        fresh = rng.random(m) >= co_access
        n_fresh = int(np.count_nonzero(fresh))
        if n_fresh:
            comm[fresh] = _draw(rng, comm_cdf, n_fresh)
        del fresh
        member = _draw(rng, member_cdf, m)
        if last_size != csize:
            # the short last community draws its members from its own Zipf weights
            short = comm == n_comm - 1
            n_short = int(np.count_nonzero(short))
            if n_short:
                member[short] = _draw(rng, last_cdf, n_short)
        comm *= csize
        comm += member
        indices[lo:hi] = perm[comm]
    return indices, offsets


#: Tables of :func:`dlrm_like`: name -> (rows, mean pooling). A mix of sizes and pooling
#: factors as in production models, with rows / pooling constant (25,000) so that every table
#: has about the same per-batch statistics as Meta's average table (~1M lookups per batch).
DLRM_TABLES: dict[str, tuple[int, int]] = {
    "t0": (800_000, 32),
    "t1": (400_000, 16),
    "t2": (400_000, 16),
    "t3": (200_000, 8),
    "t4": (200_000, 8),
    "t5": (100_000, 4),
    "t6": (50_000, 2),
    "t7": (25_000, 1),
}


def dlrm_like(n_queries: int = 65_536, *, seed: int = 0, **overrides: Any) -> Trace:
    """A trace whose skew resembles Meta's public DLRM embedding-lookup statistics.

    ``shared/data/dlrm-locality-stats`` states, per batch of 65,536 samples (856 tables in
    2021, 788 in 2022, all tables pooled): rows read in a batch are read 6.9 / 7.6 / 12.7 times
    on average (2021 / 2021 shards / 2022), 47.3% / 42.3% / 34.2% of them exactly once, and
    from the histograms the most-read 1% of them take about 43% / 47% / 46% of the lookups
    (the README rounds this to 46%). Meta's average table gets ~15.8 lookups per sample.

    The preset: the 8 tables of :data:`DLRM_TABLES` (87 lookups per query in all), geometric
    bag sizes, ``zipf=0.98``, communities of 64 rows, ``co_access=0.8``. ``overrides`` go to
    :func:`synth` (``tables=`` a name -> rows mapping replaces the tables, with
    ``pooling=`` then defaulting to 16).

    Measured on one batch of 65,536 queries (seed 0, all tables pooled, as Meta states them):
    5.70M lookups, rows read 6.93 times on average, 48.5% of the rows read once, top 1% of
    rows 46.2% of the lookups (per table 33-49%: the small tables with pooling 1-2 are less
    skewed; seed 1 gives the same figures to 0.1%). With ``co_access=0``: 6.49 reads per row,
    50.6% once, 46.8% top 1% (co-access repeats ids within a query, so fewer distinct rows).
    ``tests/test_synth.py::test_dlrm_like_matches_meta_skew`` checks these figures.
    """
    kwargs: dict[str, Any] = {
        "zipf": 0.98,
        "community_size": 64,
        "co_access": 0.8,
        "communities_per_query": 1,
        "bag_sizes": "geometric",
    }
    if "tables" in overrides:
        kwargs["pooling"] = 16
        tables = overrides.pop("tables")
    else:
        tables = {name: rows for name, (rows, _) in DLRM_TABLES.items()}
        kwargs["pooling"] = {name: pool for name, (_, pool) in DLRM_TABLES.items()}
    kwargs.update(overrides)
    return synth(tables, n_queries, seed=seed, **kwargs)
