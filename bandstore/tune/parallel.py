"""Where the tune layer's independent per-table work runs: here in turn, or through an engine.

A tuning step whose tables are independent (e.g. the per-table simulations of
:func:`bandstore.tune.sim.sizing.simulate_store`) calls :func:`map_tables` with a module-level
function and one argument tuple per table. Without an engine installed the calls run here, one
after the other; inside :func:`use_engine` (the Ray engine, :mod:`bandstore.tune.distributed`)
the engine runs them (as Ray tasks) and returns their results in the same order. The function
must be deterministic: both ways give the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: fn, argument tuples -> results in order.
Engine = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]

_ENGINE: ContextVar[Engine | None] = ContextVar("bandstore_tune_engine", default=None)


def map_tables(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``[fn(*args) for args in calls]``, run by the installed engine if any (in parallel),
    else here in turn. The first call that raises raises here (the others' results are
    dropped)."""
    engine = _ENGINE.get()
    if engine is None or len(calls) == 0:
        return [fn(*args) for args in calls]
    return engine(fn, calls)


def current_engine() -> Engine | None:
    """The engine installed here (:func:`use_engine`), or None."""
    return _ENGINE.get()


def engine_installed() -> bool:
    """Whether :func:`map_tables` runs through an engine here (see :func:`use_engine`)."""
    return _ENGINE.get() is not None


@contextmanager
def use_engine(engine: Engine) -> Iterator[None]:
    """Run :func:`map_tables` calls through ``engine`` inside the block (this context only)."""
    token = _ENGINE.set(engine)
    try:
        yield
    finally:
        _ENGINE.reset(token)
