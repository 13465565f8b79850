"""Hidden progress bars are never made: tqdm takes a lock shared across fork for every bar,
even a disabled one, and a forked child killed holding it hung its parent (the kill -9 test
hung in the parent's next verify)."""

from __future__ import annotations

import numpy as np
import pytest
import tqdm.std

import bandstore
from bandstore.progress import NullBar, bar, shown
from bandstore.traces.synth import synth
from bandstore.tune.measure import replay
from bandstore.tune.sim.sizing import simulate_store


def test_hidden_bars_take_no_tqdm_lock(tmp_path, monkeypatch):
    trace = synth({"a": 500}, 40, pooling=4, seed=1)
    with bandstore.create(tmp_path / "s") as s:
        s.add_table("a", np.ones((500, 8), np.float32), progress=False)

    def forbidden(*a, **k):
        raise AssertionError("a hidden bar took tqdm's lock")

    monkeypatch.setattr(tqdm.std.tqdm, "get_lock", classmethod(forbidden))
    with bandstore.open(tmp_path / "s", writable=True) as s:
        s.update("a", [1, 2], np.zeros((2, 8), np.float32))
        s.compact(progress=False)
        assert s.verify(progress=False) == []
        replay(s, trace, batch_size=8, progress=False)
        simulate_store(s, trace, progress=False)
        # None: drawn only on a terminal, and pytest's stderr is none.
        assert s.verify() == []


def test_null_bar_passes_the_iterable_through():
    b = bar(False, [1, 2, 3], total=3)
    assert isinstance(b, NullBar) and list(b) == [1, 2, 3]
    with bar(False, total=5) as b2:
        b2.update(2)
        b2.set_postfix(x=1)
        assert b2.n == 2
    assert shown(True) and not shown(False)


@pytest.mark.parametrize("progress", [True])
def test_shown_bars_are_tqdm(progress):
    from tqdm.auto import tqdm

    b = bar(progress, total=1, disable=True)
    assert isinstance(b, tqdm)
    b.close()
