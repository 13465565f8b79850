"""Weights in: `bandstore import` and bandstore.importers, round trips and failed imports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import bandstore
import bandstore.serve.store
from bandstore import importers
from bandstore.cli import main
from bandstore.errors import InvalidArgumentError, TableExistsError, WeightsFileError
from bandstore.storage.codecs import max_abs_error


@pytest.fixture
def state(rng) -> dict[str, np.ndarray]:
    """A model's tensors: two tables, a 2-D dense weight, a bias, an integer matrix."""
    return {
        "emb.user.weight": rng.standard_normal((50, 8)).astype(np.float32),
        "emb.item.weight": rng.standard_normal((70, 16)).astype(np.float32),
        "mlp.0.weight": rng.standard_normal((4, 8)).astype(np.float32),
        "mlp.0.bias": rng.standard_normal(4).astype(np.float32),
        "ids": rng.integers(0, 9, (3, 3)),
    }


def write(kind: str, path: Path, state: dict[str, np.ndarray]) -> Path:
    """``state`` saved as ``kind`` at ``path`` (+ suffix)."""
    if kind == "pt":
        torch = pytest.importorskip("torch")
        out = path.with_suffix(".pt")
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, out)
    elif kind == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        out = path.with_suffix(".safetensors")
        st.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out))
    elif kind == "npz":
        out = path.with_suffix(".npz")
        np.savez(out, **state)
    else:
        raise AssertionError(kind)
    return out


def snapshot(path: Path) -> tuple:
    """What a store is: its current version, tables and rows, and every file under it."""
    with bandstore.open(path, cache_bytes=0) as s:
        rows = {n: s.lookup(n, np.arange(t.rows)).tobytes() for n, t in s.tables.items()}
        state = (s.version, {n: t.as_dict() for n, t in s.tables.items()}, rows)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if "catalog" not in p.parts)
    return state, files


@pytest.mark.parametrize("kind", ["pt", "safetensors", "npz"])
def test_round_trip(tmp_path, state, kind):
    src = write(kind, tmp_path / "model", state)
    report = importers.import_weights(tmp_path / "s", [src], progress=False)
    assert report.created and set(report.tables) == {"emb.user", "emb.item", "mlp.0"}
    assert {sk["key"] for sk in report.skipped} == {"mlp.0.bias", "ids"}
    with bandstore.open(tmp_path / "s") as s:
        for name in report.tables:
            w = state[name + ".weight"]
            assert s.tables[name].codec == "float32"
            np.testing.assert_array_equal(s.lookup(name, np.arange(w.shape[0])), w)


@pytest.mark.parametrize("kind", ["pt", "safetensors", "npz", "npy"])
def test_match_codec_and_streaming(tmp_path, state, kind, monkeypatch):
    """--match picks tensors, --codec encodes them, and rows are read in chunks."""
    if kind == "npy":
        src = tmp_path / "emb.user.weight.npy"
        np.save(src, state["emb.user.weight"])
    else:
        src = write(kind, tmp_path / "model", state)
    reads: list[int] = []
    real = importers.LazyArray.__getitem__
    monkeypatch.setattr(
        importers.LazyArray,
        "__getitem__",
        lambda self, sl: reads.append(sl.stop - sl.start) or real(self, sl),
    )
    monkeypatch.setattr(bandstore.serve.store, "IMPORT_CHUNK_ROWS", 16)
    report = importers.import_weights(tmp_path / "s", [src], codec="int8", match=r"user")
    assert list(report.tables) == ["emb.user"]
    assert max(reads) <= 16 and sum(reads) == 50  # four chunks, never the whole tensor
    w = state["emb.user.weight"]
    with bandstore.open(tmp_path / "s") as s:
        assert s.tables["emb.user"].codec == "int8"
        err = np.abs(s.lookup("emb.user", np.arange(50)) - w).max(axis=1)
    assert np.all(err <= max_abs_error("int8", w)) and err.max() > 0


def test_torch_layouts_and_bfloat16(tmp_path, rng):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    w = torch.from_numpy(rng.standard_normal((30, 6)).astype(np.float32))
    nested = {"epoch": 3, "state_dict": {"user.weight": w, "item": w.to(torch.bfloat16)}}
    torch.save(nested, tmp_path / "ckpt.pth")
    torch.save(w.t().contiguous().t(), tmp_path / "single.weight.pt")  # a bare tensor (strided)
    st.save_file({"tag.weight": w.to(torch.bfloat16), "h": w.half()}, tmp_path / "b.safetensors")
    files = [tmp_path / "ckpt.pth", tmp_path / "single.weight.pt", tmp_path / "b.safetensors"]
    report = importers.import_weights(tmp_path / "s", files)
    assert set(report.tables) == {"state_dict.user", "state_dict.item", "single", "tag", "h"}
    bf = w.to(torch.bfloat16).float().numpy()
    with bandstore.open(tmp_path / "s") as s:
        ids = np.arange(30)
        np.testing.assert_array_equal(s.lookup("state_dict.user", ids), w.numpy())
        np.testing.assert_array_equal(s.lookup("single", ids), w.numpy())
        np.testing.assert_array_equal(s.lookup("state_dict.item", ids), bf)
        np.testing.assert_array_equal(s.lookup("tag", ids), bf)
        np.testing.assert_array_equal(s.lookup("h", ids), w.half().float().numpy())


def test_cli_creates_then_adds(tmp_path, state, capsys):
    src = write("npz", tmp_path / "model", state)
    store = tmp_path / "s"
    assert main(["import", str(store), str(src), "--match", "user", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["created"] and list(first["tables"]) == ["emb.user"]
    np.save(tmp_path / "extra.npy", state["emb.item.weight"])
    argv = ["import", str(store), str(src), str(tmp_path / "extra.npy"), "--match", "item|extra"]
    assert main([*argv, "--codec", "float16"]) == 0
    out = capsys.readouterr().out
    assert "added to" in out and "emb.item" in out and "skipped" in out
    with bandstore.open(store) as s:
        assert set(s.tables) == {"emb.user", "emb.item", "extra"}
        assert s.version == first["version"] + 1  # one version for both tables
        assert s.tables["extra"].codec == "float16"
        w = state["emb.user.weight"]
        np.testing.assert_array_equal(s.lookup("emb.user", np.arange(50)), w)


def test_failed_imports_leave_the_store_as_it_was(tmp_path, state, capsys):
    good = write("npz", tmp_path / "model", state)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    store = tmp_path / "s"
    importers.import_weights(store, [good], match="user")
    before = snapshot(store)

    with pytest.raises(WeightsFileError, match="corrupt.safetensors"):
        importers.import_weights(store, [good, corrupt], match="item")
    assert snapshot(store) == before
    with pytest.raises(TableExistsError, match="emb.user"):  # a clash with the store
        importers.import_weights(store, [good])
    assert snapshot(store) == before
    # A value the codec rejects in the second table: found while writing, after the first.
    bad = {"a.weight": np.ones((40, 4), np.float32), "b.weight": np.ones((40, 4), np.float32)}
    bad["b.weight"][33, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(InvalidArgumentError, match="non-finite|NaN|nan"):
        importers.import_weights(store, [tmp_path / "nan.npz"])
    assert snapshot(store) == before

    # The command says so and exits non-zero, naming the file.
    assert main(["import", str(store), str(good), str(corrupt)]) != 0
    assert "bandstore: error:" in capsys.readouterr().err
    assert snapshot(store) == before


def test_failed_import_leaves_no_store(tmp_path, state):
    good = write("npz", tmp_path / "model", state)
    np.savez(tmp_path / "nan.npz", t=np.full((20, 4), np.inf, np.float32))
    fresh = tmp_path / "a" / "b" / "store"
    with pytest.raises(InvalidArgumentError):
        importers.import_weights(fresh, [good, tmp_path / "nan.npz"])
    assert not (tmp_path / "a").exists()  # nor the directories made for it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsFileError):
        importers.import_weights(empty, [good, tmp_path / "missing.pt"])
    with pytest.raises(InvalidArgumentError):
        importers.import_weights(empty, [good, tmp_path / "nan.npz"])
    assert empty.is_dir() and not any(empty.iterdir())


class NotATensor:
    pass


def test_bad_files_are_named(tmp_path, state):
    good = write("npz", tmp_path / "model", state)
    cases = {}
    (tmp_path / "w.txt").write_text("x")
    cases["w.txt"] = "unknown file type"
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["obj.npy"] = "not a readable"
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    cases["junk.npz"] = "not a readable"
    np.save(tmp_path / "vec.npy", np.ones(5, np.float32))
    cases["vec.npy"] = "no 2-D floating point tensors"
    try:
        import torch

        torch.save({"x": NotATensor()}, tmp_path / "code.pt")
        cases["code.pt"] = "weights_only"
        (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
        cases["junk.pt"] = "not a torch file"
    except ImportError:
        pass
    for name, message in cases.items():
        with pytest.raises(WeightsFileError, match=message) as info:
            importers.import_weights(tmp_path / "s", [tmp_path / name])
        assert name in str(info.value) and info.value.path.endswith(name)
        assert not (tmp_path / "s").exists()
    with pytest.raises(WeightsFileError, match="matching 'nothing'"):
        importers.import_weights(tmp_path / "s", [good], match="nothing")
    np.save(tmp_path / "emb.user.weight.npy", state["emb.user.weight"])
    with pytest.raises(WeightsFileError, match="names table 'emb.user'"):
        importers.import_weights(tmp_path / "s", [good, tmp_path / "emb.user.weight.npy"])
    with pytest.raises(InvalidArgumentError, match="regular expression"):
        importers.import_weights(tmp_path / "s", [good], match="(")
    assert not (tmp_path / "s").exists()


def test_add_tables_is_one_version(tmp_path, state):
    with bandstore.create(tmp_path / "s", block_size=512) as s:
        v0 = s.version
        infos = s.add_tables(
            {"u": state["emb.user.weight"], "i": state["emb.item.weight"]},
            codec={"i": "float16"},
        )
        assert s.version == v0 + 1 and infos["u"].codec == "float32" and infos["i"].dim == 16
        assert infos["i"].codec == "float16"
        with pytest.raises(TableExistsError):
            s.add_tables({"new": state["emb.user.weight"], "u": state["emb.user.weight"]})
        assert s.version == v0 + 1 and set(s.tables) == {"u", "i"}
    assert os.path.isdir(tmp_path / "s")


def test_bandstore_imports_without_torch(tmp_path, state):
    """`import bandstore`, the importers and the command never need torch; bandstore.torch says
    what it needs."""
    import subprocess
    import sys

    np.savez(tmp_path / "m.npz", **state)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import bandstore, bandstore.cli, bandstore.importers\n"
        f"r = bandstore.importers.import_weights({str(tmp_path / 's')!r}, "
        f"[{str(tmp_path / 'm.npz')!r}])\n"
        "assert set(r.tables) == {'emb.user', 'emb.item', 'mlp.0'}, r.tables\n"
        "try:\n"
        "    import bandstore.torch\n"
        "except ImportError as e:\n"
        "    assert 'bandstore[torch]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('bandstore.torch imported without torch')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(bandstore.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
