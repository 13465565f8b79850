"""Options of bandstore's functions: frozen dataclasses, every default in this one module.

- :class:`ServeOptions` (with :class:`CacheOptions`): how :func:`bandstore.open` serves.
- :class:`SimOptions`: what a miniature cache simulation covers (``bandstore.tune.sim``).
- :class:`SizingOptions`: how ``bandstore.tune.size_cache`` simulates and chooses.
- :class:`RelayoutOptions`: how ``bandstore.tune.relayout`` builds and chooses layouts.

"Never admit a block's neighbours" has one spelling: :data:`NEVER` in Python, ``"never"`` in
JSON and on the command line (:func:`threshold_to_json`, :func:`threshold_from_json`). ``None``
and negative thresholds are refused with an error naming ``NEVER``.

The options validate themselves when built: a bad value raises InvalidArgumentError naming the
field. This module imports nothing of bandstore but its errors and the ``NEVER`` constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bandstore.errors import InvalidArgumentError
from bandstore.kernels.cache import NEVER

__all__ = [
    "APPLY_COUNTS",
    "AUTO_COLDS",
    "AUTO_HALF_LIVES",
    "AUTO_METHODS",
    "BATCH_SIZE",
    "DEFAULT_PINNED_SHARES",
    "DEFAULT_THRESHOLDS",
    "ESTIMATORS",
    "NEVER",
    "RELAYOUT_METHODS",
    "RELAYOUT_PINNED_SHARES",
    "RELAYOUT_THRESHOLDS",
    "SAMPLINGS",
    "CacheOptions",
    "RelayoutOptions",
    "ServeOptions",
    "SimOptions",
    "SizingOptions",
    "check_threshold",
    "check_thresholds",
    "threshold_from_json",
    "threshold_to_json",
]

# ---- never ----------------------------------------------------------------------------------
#: The JSON / command-line spelling of :data:`NEVER`.
NEVER_JSON = "never"


def check_threshold(value: Any, argument: str = "threshold") -> int:
    """An admission threshold as the kernels take it: an integer >= 0, at most :data:`NEVER`
    (``NEVER``: never admit neighbours). Refuses None, negatives, booleans and fractions."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and value < 0):  # fmt: skip
        raise InvalidArgumentError(
            f"{argument} must be an integer >= 0, or bandstore.NEVER to never admit neighbours "
            f"('never' in JSON and on the command line), got {value!r}",
            argument=argument,
            value=value,
        )
    try:
        ok = not isinstance(value, (bool, str, bytes)) and float(value).is_integer()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"{argument} must be an integer >= 0 or bandstore.NEVER, got {value!r}",
            argument=argument,
            value=value,
        )
    return min(int(value), NEVER)


def check_thresholds(values: Any, argument: str = "thresholds") -> tuple[int, ...]:
    """A non-empty sequence of thresholds (see :func:`check_threshold`) as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise InvalidArgumentError(
            f"{argument} must be a non-empty sequence of thresholds (integers >= 0 or "
            f"bandstore.NEVER), got {values!r}",
            argument=argument,
            value=values,
        )
    return tuple(check_threshold(v, argument) for v in values)


def threshold_from_json(value: Any) -> int:
    """A stored or command-line threshold: an integer >= 0 or ``"never"``. ``null`` is read as
    never too: catalogs written before ``"never"`` stored it so."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NEVER_JSON):
        return NEVER
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise InvalidArgumentError(
                f"not a threshold: {value!r} (an integer >= 0, or 'never')",
                argument="threshold",
                value=value,
            ) from None
    return check_threshold(value)


def threshold_to_json(value: int) -> int | str:
    """``"never"`` for :data:`NEVER`, else the integer."""
    return NEVER_JSON if int(value) >= NEVER else int(value)


# ---- helpers --------------------------------------------------------------------------------
def _fail(argument: str, message: str, value: Any) -> None:
    raise InvalidArgumentError(f"{argument} {message}, got {value!r}", argument=argument,
                               value=value)  # fmt: skip


def _int(value: Any, argument: str, low: int = 0, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(argument, f"must be an integer >= {low}" + (" or None" if none else ""), value)


def _fraction(value: Any, argument: str, low_open: bool, high_open: bool) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (v > 0.0 if low_open else v >= 0.0) and (v < 1.0 if high_open else v <= 1.0)
    if isinstance(value, bool) or not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        _fail(argument, f"must be in {lo}0, 1{hi}", value)


def _shares(values: Any, argument: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        _fail(argument, "must be a non-empty sequence of numbers in [0, 1]", values)
    for v in values:
        _fraction(v, argument, False, False)
    return tuple(float(v) for v in values)


def _choice(value: Any, argument: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        _fail(argument, f"must be one of {list(choices)}", value)


# ---- serving --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheOptions:
    """Overrides of the stored cache policy, for every table (a scalar) or per table (a
    mapping); None keeps what tuning stored (else the defaults: 10% of each table's rows,
    no neighbour admission, nothing pinned).

    ``cache_bytes``: a total split by the tuned sizes (else by table size), or ``{table:
    bytes}``. ``threshold``: the admission threshold (0 admits every neighbour of a missed row,
    :data:`NEVER` none). ``pinned_share``: the share of the cache holding the most counted rows.
    """

    cache_bytes: int | Mapping[str, int] | None = None
    threshold: int | Mapping[str, int] | None = None
    pinned_share: float | Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        for name, v in self._values("cache_bytes"):
            _int(v, name)
        for name, v in self._values("threshold"):
            check_threshold(v, name)
        for name, v in self._values("pinned_share"):
            _fraction(v, name, False, False)

    def _values(self, attr: str) -> list[tuple[str, Any]]:
        value = getattr(self, attr)
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [(f"{attr}[{k!r}]", v) for k, v in value.items()]
        return [(attr, value)]


@dataclass(frozen=True)
class ServeOptions:
    """How :func:`bandstore.open` serves, beyond its plain keywords.

    ``cache``: overrides of the stored cache policy (``open(cache_bytes=...)`` is the common
    one). ``verify_reads``: check the sectors a lookup decodes against their checksums.
    ``block_size`` / ``checksum_bytes``: the format expected (FormatMismatchError otherwise);
    None accepts the stored one. ``follow_versions``: move to a newly committed version by
    itself, between calls, within about 0.1 s (a rebuild, a compaction, another writer's
    relayout), with its layouts, cache sizes and plan, caches warmed from the old ones
    (``bandstore.serve.follow``). Off by default: a handle otherwise keeps the version it
    opened until ``refresh()`` (the snapshot tuning jobs and comparisons rely on; following
    also holds a second set of caches while a new version is prepared). ``bandstore serve``
    turns it on.
    """

    cache: CacheOptions = field(default_factory=CacheOptions)
    verify_reads: bool = True
    block_size: int | None = None
    checksum_bytes: int | None = None
    follow_versions: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cache, CacheOptions):
            _fail("cache", "must be a bandstore.options.CacheOptions", self.cache)
        if not isinstance(self.follow_versions, bool):
            _fail("follow_versions", "must be True or False", self.follow_versions)
        _int(self.block_size, "block_size", 1, none=True)
        _int(self.checksum_bytes, "checksum_bytes", 1, none=True)


# ---- simulation and sizing ------------------------------------------------------------------
#: Queries per ``lookup_many`` call of the serving being tuned for (replays, simulations).
BATCH_SIZE = 256
#: Admission thresholds tried by cache simulations and sizing: every neighbour, neighbours read
#: at least 1, 4 or 16 times in the counts, and none (plain CLOCK).
DEFAULT_THRESHOLDS: tuple[int, ...] = (0, 1, 4, 16, NEVER)
#: Pinned shares tried by cache simulations and sizing: the best share moves with the cache
#: size, hence a grid finer than 0/0.5/0.9; 1.0 pins the whole cache (a static cache).
DEFAULT_PINNED_SHARES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
#: Spatial sampling schemes of the simulator (``bandstore.tune.sim.mrc``).
SAMPLINGS = ("hash", "stratified")
#: How sampled counters are scaled back (see ``bandstore.tune.sim.mrc.ESTIMATORS``).
ESTIMATORS = ("che", "lookups", "adjusted")
#: Access counts ``size_cache(apply=True)`` stores: the whole trace's or its warm-up part's.
APPLY_COUNTS = ("trace", "warmup")


@dataclass(frozen=True)
class SimOptions:
    """What a miniature cache simulation covers and how it samples.

    ``thresholds`` x ``pinned_shares``: the policies simulated at every size (``n_sizes`` of
    them unless sizes are given). ``batch_size``: queries per ``lookup_many`` call of the
    replay being predicted. ``sample_rate``: 1 for exact, else the SHARDS rate R in (0, 1]; the
    rate used is ``max(R, min(1, min_sampled_blocks / blocks read, max_sampled_lookups /
    lookups))`` (``min_sampled_blocks=0`` and ``max_sampled_lookups=None``: exactly R).
    ``sampling``: ``"stratified"`` or ``"hash"`` (SHARDS); ``estimator``: see
    ``bandstore.tune.sim.mrc.ESTIMATORS``; ``seed``: of the sampling hash. ``workers``:
    threads (default: the CPU count); ``memory_limit``: bytes the mini caches of one table may
    take at once (more configurations run in groups).
    """

    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    pinned_shares: tuple[float, ...] = DEFAULT_PINNED_SHARES
    batch_size: int = BATCH_SIZE
    sample_rate: float = 1.0
    sampling: str = "stratified"
    estimator: str = "che"
    seed: int = 0
    n_sizes: int = 33
    min_sampled_blocks: int = 1024
    max_sampled_lookups: int | None = 200_000
    workers: int | None = None
    memory_limit: int = 2 << 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        object.__setattr__(self, "pinned_shares", _shares(self.pinned_shares, "pinned_shares"))
        _int(self.batch_size, "batch_size", 1)
        _fraction(self.sample_rate, "sample_rate", True, False)
        _choice(self.sampling, "sampling", SAMPLINGS)
        _choice(self.estimator, "estimator", ESTIMATORS)
        _int(self.seed, "seed")
        _int(self.n_sizes, "n_sizes", 2)
        _int(self.min_sampled_blocks, "min_sampled_blocks")
        _int(self.max_sampled_lookups, "max_sampled_lookups", 1, none=True)
        _int(self.workers, "workers", 1, none=True)
        _int(self.memory_limit, "memory_limit", 1)


@dataclass(frozen=True)
class SizingOptions:
    """How ``bandstore.tune.size_cache`` simulates and chooses.

    ``sim``: the simulations (default: the full policy grid, SHARDS-sampled at
    ``sample_rate=0.01``; small tables run at a higher rate). ``warmup``: the share of the
    queries that gives the access counts and warms the caches; the choice is made on the rest.
    ``apply_counts``: the counts stored with ``apply=True`` (``"trace"``: the whole trace's;
    ``"warmup"``: the warm-up part's, those the predictions used). ``exact_window``: grid steps
    on either side of a sampled table's choice simulated again exactly (0: none).
    """

    sim: SimOptions = field(default_factory=lambda: SimOptions(sample_rate=0.01))
    warmup: float = 0.7
    apply_counts: str = "trace"
    exact_window: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.sim, SimOptions):
            _fail("sim", "must be a bandstore.options.SimOptions", self.sim)
        _fraction(self.warmup, "warmup", False, True)
        _choice(self.apply_counts, "apply_counts", APPLY_COUNTS)
        _int(self.exact_window, "exact_window")

    def with_sim(self, **changes: Any) -> SizingOptions:
        """These options with ``sim`` fields changed (``with_sim(sample_rate=1.0)``)."""
        return replace(self, sim=replace(self.sim, **changes))


# ---- relayout -------------------------------------------------------------------------------
#: Layout methods of ``relayout`` (``auto`` chooses among :data:`AUTO_METHODS`).
RELAYOUT_METHODS = ("auto", "identity", "random", "frequency", "metis", "hypergraph")
#: Candidate methods of ``auto`` (each reported on held-out queries; all in the inner grid).
AUTO_METHODS = ("identity", "frequency", "metis", "hypergraph")
#: Recency half-lives of the access counts tried by ``auto``, as a share of the queries they
#: are counted on (None: plain counts).
AUTO_HALF_LIVES: tuple[float | None, ...] = (None, 0.1, 0.25, 0.5)
#: Placements of the rows never read tried by ``auto`` for metis and hypergraph.
AUTO_COLDS: tuple[str, ...] = ("after", "inline")
#: Admission thresholds a relayout chooses among for each layout (finer than the sizing grid:
#: a relayout simulates one cache size per table, sizing a whole curve).
RELAYOUT_THRESHOLDS: tuple[int, ...] = (0, 1, 2, 3, 5, 8, 16, NEVER)
#: Pinned shares a relayout chooses among for each layout.
RELAYOUT_PINNED_SHARES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class RelayoutOptions:
    """How ``bandstore.tune.relayout`` builds, scores and chooses layouts.

    ``batch_size``: queries per serving call (splits fall on batch boundaries). ``seed``: of
    the randomized builds. ``auto_methods`` x ``half_lives`` x ``colds``: the grid ``auto``
    chooses on (smaller grids trade choice for time), on the last ``inner_share`` of the
    tuning queries. ``max_tuning_lookups``: above this many tuning lookups per table,
    policies and ``auto``'s configuration are chosen on the most recent ones (None: no bound).
    ``layout_params``: ``{method: {parameter: value}}`` passed to the layout builds.
    """

    batch_size: int = BATCH_SIZE
    seed: int = 0
    auto_methods: tuple[str, ...] = AUTO_METHODS
    half_lives: tuple[float | None, ...] = AUTO_HALF_LIVES
    colds: tuple[str, ...] = AUTO_COLDS
    inner_share: float = 0.25
    max_tuning_lookups: int | None = 20_000_000
    layout_params: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        _int(self.batch_size, "batch_size", 1)
        _int(self.seed, "seed")
        for attr in ("auto_methods", "half_lives", "colds"):
            v = getattr(self, attr)
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
                _fail(attr, "must be a non-empty sequence", v)
            object.__setattr__(self, attr, tuple(v))
        _fraction(self.inner_share, "inner_share", True, True)
        _int(self.max_tuning_lookups, "max_tuning_lookups", 1, none=True)
