"""Progress bars, made only when they are shown.

tqdm registers every bar, even a disabled one, under a write lock that includes a
multiprocessing lock shared across ``fork``: a forked child killed while it holds that lock
(say, mid-compaction) leaves the parent waiting forever at its next bar. So a bar that would
not be drawn is never made.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


def shown(progress: bool | None) -> bool:
    """Whether a bar is drawn: ``progress`` if given, else only on a terminal."""
    if progress is None:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):  # replaced or closed stderr
            return False
    return bool(progress)


class NullBar:
    """What a hidden bar does: nothing, with tqdm's calls and the iterable passed through."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self._iterable = iterable
        self.n = 0
        self.total: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def bar(progress: bool | None, iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or with ``total=``) when :func:`shown`, else a NullBar."""
    if not shown(progress):
        return NullBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
