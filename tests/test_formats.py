"""Log readers: small hand-written files for each format, malformed ones, and the real logs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandstore.errors import InvalidArgumentError, TraceFormatError
from bandstore.traces.formats import (
    FORMATS,
    convert,
    read_avazu,
    read_criteo,
    read_csv,
    read_lastfm,
    read_lightgcn,
    read_movielens,
    write_csv,
)
from bandstore.traces.trace import Trace, top_share


def bags(trace: Trace, name: str) -> list[list[int]]:
    idx, off = trace.table(name)
    return [idx[off[q] : off[q + 1]].tolist() for q in range(trace.n_queries)]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def expect_format_error(path: Path, line: int | None, reader, **options) -> TraceFormatError:
    with pytest.raises(TraceFormatError) as err:
        reader(path, **options)
    assert err.value.path == str(path)
    assert err.value.line == line
    if line is not None:
        assert f"{path}:{line}" in str(err.value)
    return err.value


# --------------------------------------------------------------------------- lightgcn
def test_lightgcn(tmp_path) -> None:
    path = write(tmp_path, "test.txt", "0 5 3 9\n7 1\n\n2\n3 3 3\r\n")
    t = read_lightgcn(path)
    assert t.table_names == ["item"] and t.n_queries == 4  # blank line skipped, user-only kept
    assert bags(t, "item") == [[5, 3, 9], [1], [], [3, 3]]
    assert t.num_rows == {"item": 10}
    assert read_lightgcn(path, table="book").table_names == ["book"]


@pytest.mark.parametrize(
    "text, line",
    [("0 1 2\n1 x 3\n", 2), ("0 1\n\n1 -4\n", 3), ("0 1.5\n", 1), ("0 99999999999999999999\n", 1)],
)
def test_lightgcn_malformed(tmp_path, text, line) -> None:
    expect_format_error(write(tmp_path, "bad.txt", text), line, read_lightgcn)


def test_lightgcn_empty_file(tmp_path) -> None:
    t = read_lightgcn(write(tmp_path, "empty.txt", ""))
    assert t.n_queries == 0 and t.n_lookups() == 0


# --------------------------------------------------------------------------- lastfm
LASTFM = "userID\tartistID\tweight\n2\t51\t10\n2\t52\t30\n2\t53\t30\n5\t52\t7\n5\t60\t1\n3\t99\t4\n"


def test_lastfm_top_n_and_dense_ids(tmp_path) -> None:
    path = write(tmp_path, "user_artists.dat", LASTFM)
    t = read_lastfm(path, top=2)
    # artists by first appearance: 51->0, 52->1, 53->2, 60->3, 99->4
    assert t.num_rows == {"artist": 5}
    # user 2: weights 30 (52), 30 (53), 10 (51): heaviest first, tie in file order, top 2
    assert bags(t, "artist") == [[1, 2], [1, 3], [4]]
    assert bags(read_lastfm(path, top=None), "artist") == [[1, 2, 0], [1, 3], [4]]
    assert bags(read_lastfm(path), "artist") == bags(read_lastfm(path, top=None), "artist")


def test_lastfm_without_header_and_crlf(tmp_path) -> None:
    body = LASTFM.split("\n", 1)[1].replace("\n", "\r\n")
    t = read_lastfm(write(tmp_path, "noheader.dat", body), top=2)
    assert bags(t, "artist") == [[1, 2], [1, 3], [4]]
    with_header = read_lastfm(write(tmp_path, "h.dat", LASTFM), top=2)
    assert t.equals(with_header)


def test_lastfm_malformed(tmp_path) -> None:
    expect_format_error(write(tmp_path, "a.dat", LASTFM + "7\t8\n"), 8, read_lastfm)
    expect_format_error(write(tmp_path, "b.dat", LASTFM + "7\t8\tloud\n"), 8, read_lastfm)
    expect_format_error(write(tmp_path, "c.dat", LASTFM + "7\t8\tnan\n"), 8, read_lastfm)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgumentError):
            read_lastfm(write(tmp_path, "d.dat", LASTFM), top=bad)


# --------------------------------------------------------------------------- movielens
MOVIELENS = """userId,movieId,rating,timestamp
1,10,4.0,1000
1,20,3.5,1100
1,30,5.0,9000
2,20,1.0,500
2,40,2.0,600
2,10,2.0,20000
3,50,4.0,1100
"""


def test_movielens_sessions_in_time_order(tmp_path) -> None:
    t = read_movielens(write(tmp_path, "ratings.csv", MOVIELENS), session_gap=3600)
    # movies by first appearance: 10->0, 20->1, 30->2, 40->3, 50->4
    assert t.num_rows == {"movie": 5}
    # sessions: u2@500 [20,40], u1@1000 [10,20], u3@1100 [50], u1@9000 [30], u2@20000 [10]
    assert bags(t, "movie") == [[1, 3], [0, 1], [4], [2], [0]]
    assert t.n_lookups() == 7


def test_movielens_options(tmp_path) -> None:
    path = write(tmp_path, "ratings.csv", MOVIELENS)
    per_user = read_movielens(path, session_gap=None)
    assert bags(per_user, "movie") == [[1, 3, 0], [0, 1, 2], [4]]  # ordered by first rating
    tight = read_movielens(path, session_gap=0)  # every rating its own session
    assert tight.n_queries == 7 and all(len(b) == 1 for b in bags(tight, "movie"))
    for bad in (-1, "1h", True):
        with pytest.raises(InvalidArgumentError):
            read_movielens(path, session_gap=bad)


def test_movielens_unsorted_input_and_column_order(tmp_path) -> None:
    text = "timestamp,movieId,userId\n900,7,1\n100,8,1\n50,9,2\n"
    t = read_movielens(write(tmp_path, "r.csv", text))
    # 7->0, 8->1, 9->2; user 1 sorted by time: 8@100, 7@900; user 2 starts first
    assert bags(t, "movie") == [[2], [1, 0]]


def test_movielens_malformed(tmp_path) -> None:
    expect_format_error(write(tmp_path, "a.csv", MOVIELENS + "4,1,3.0\n"), 9, read_movielens)
    expect_format_error(write(tmp_path, "b.csv", MOVIELENS + "4,1,3.0,soon\n"), 9, read_movielens)
    expect_format_error(write(tmp_path, "c.csv", "user,movie\n1,2\n"), 1, read_movielens)
    expect_format_error(write(tmp_path, "d.csv", ""), None, read_movielens)


# --------------------------------------------------------------------------- criteo
def criteo_line(label: str, cats: list[str], ints: list[str] | None = None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    return "\t".join(([label] if label is not None else []) + ints + cats) + "\n"


def test_criteo(tmp_path) -> None:
    cats_a = ["aa"] * 26
    cats_b = ["bb"] + [""] * 25
    cats_c = ["aa", "0f"] + ["aa"] * 24
    path = write(
        tmp_path,
        "c.tsv",
        criteo_line("0", cats_a) + criteo_line("1", cats_b, [""] * 13) + criteo_line("0", cats_c),
    )
    t = read_criteo(path)
    assert t.table_names == [f"C{i}" for i in range(1, 27)]
    assert t.n_queries == 3
    assert bags(t, "C1") == [[1], [2], [1]]  # ids from 1 in order of first appearance
    assert bags(t, "C2") == [[1], [0], [2]]  # empty -> the "missing" row 0
    assert bags(t, "C26") == [[1], [0], [1]]
    assert t.num_rows["C1"] == 3 and t.num_rows["C2"] == 3 and t.num_rows["C26"] == 2
    for name in t.table_names:
        assert t.bag_sizes(name).tolist() == [1, 1, 1]
    assert read_criteo(path, limit=1).n_queries == 1
    unlabeled = write(tmp_path, "u.tsv", criteo_line(None, cats_a) + criteo_line(None, cats_b))
    assert bags(read_criteo(unlabeled, label=False), "C1") == [[1], [2]]


def test_criteo_always_has_missing_row(tmp_path) -> None:
    t = read_criteo(write(tmp_path, "c.tsv", criteo_line("1", ["ab"] * 26)))
    assert t.num_rows["C5"] == 2 and bags(t, "C5") == [[1]]


def test_criteo_malformed(tmp_path) -> None:
    good = criteo_line("0", ["aa"] * 26)
    expect_format_error(
        write(tmp_path, "a.tsv", good + good.replace("\taa", "", 1)), 2, read_criteo
    )
    bad_hex = criteo_line("0", ["aa"] * 25 + ["zz"])
    err = expect_format_error(write(tmp_path, "b.tsv", good * 2 + bad_hex), 3, read_criteo)
    assert "C26" in str(err)
    expect_format_error(write(tmp_path, "c.tsv", criteo_line("yes", ["aa"] * 26)), 1, read_criteo)
    with pytest.raises(InvalidArgumentError):
        read_criteo(write(tmp_path, "d.tsv", good), limit=-1)


# --------------------------------------------------------------------------- avazu
AVAZU = """id,click,hour,C1,banner_pos,site_id
1,0,14102100,1005,0,1fbe01fe
2,1,14102100,1002,0,85f751fd
3,0,14102101,1005,1,1fbe01fe
"""


def test_avazu(tmp_path) -> None:
    t = read_avazu(write(tmp_path, "a.csv", AVAZU))
    assert t.table_names == ["C1", "banner_pos", "site_id"]
    assert bags(t, "C1") == [[0], [1], [0]]
    assert bags(t, "banner_pos") == [[0], [0], [1]]
    assert bags(t, "site_id") == [[0], [1], [0]]
    assert t.num_rows == {"C1": 2, "banner_pos": 2, "site_id": 2}
    assert read_avazu(write(tmp_path, "b.csv", AVAZU), limit=2).n_queries == 2
    kept_hour = read_avazu(write(tmp_path, "c.csv", AVAZU), exclude=("id", "click"))
    assert kept_hour.table_names[0] == "hour" and bags(kept_hour, "hour") == [[0], [0], [1]]


def test_avazu_malformed(tmp_path) -> None:
    expect_format_error(write(tmp_path, "a.csv", AVAZU + "4,0,1,2\n"), 5, read_avazu)
    expect_format_error(write(tmp_path, "b.csv", "id,click,hour\n1,0,2\n"), 1, read_avazu)
    expect_format_error(write(tmp_path, "c.csv", "id,C1,C1\n1,2,3\n"), 1, read_avazu)


# --------------------------------------------------------------------------- generic csv
def test_csv(tmp_path) -> None:
    text = "query,table,id\nq1,a,5\nq2,b,0\nq1,b,3\nq1,a,2\nq3,a,5\n"
    t = read_csv(write(tmp_path, "l.csv", text))
    assert t.table_names == ["a", "b"] and t.n_queries == 3
    assert bags(t, "a") == [[5, 2], [], [5]]
    assert bags(t, "b") == [[3], [0], []]
    sized = read_csv(write(tmp_path, "m.csv", text), num_rows={"a": 100})
    assert sized.num_rows == {"a": 100, "b": 4}
    reordered = read_csv(write(tmp_path, "n.csv", "id,query,table\n4,x,t\n"))
    assert bags(reordered, "t") == [[4]]
    quoted = read_csv(write(tmp_path, "o.csv", 'query,table,id\n"a,b",t,1\n'))
    assert bags(quoted, "t") == [[1]]
    assert read_csv(write(tmp_path, "p.csv", "query,table,id\n")).n_queries == 0


def test_csv_malformed(tmp_path) -> None:
    expect_format_error(write(tmp_path, "a.csv", "query,table,id\nq,a,1\nq,a,-2\n"), 3, read_csv)
    expect_format_error(write(tmp_path, "b.csv", "query,table,id\nq,a,one\n"), 2, read_csv)
    expect_format_error(write(tmp_path, "c.csv", "query,table\nq,a\n"), 1, read_csv)
    expect_format_error(write(tmp_path, "d.csv", "query,table,id\nq,a\n"), 2, read_csv)
    expect_format_error(write(tmp_path, "e.csv", "query,table,id\nq, ,1\n"), 2, read_csv)
    expect_format_error(write(tmp_path, "f.csv", b"query,table,id\nq,\xff,1\n"), None, read_csv)
    expect_format_error(write(tmp_path, "g.csv", ""), None, read_csv)


@st.composite
def csv_traces(draw) -> Trace:
    n_queries = draw(st.integers(1, 8))
    tables = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c d"]), min_size=1, unique=True)):
        tables[name] = draw(
            st.lists(
                st.lists(st.integers(0, 30), max_size=4), min_size=n_queries, max_size=n_queries
            )
        )
    # every query and every table reads something (else it has no line in the CSV)
    first = next(iter(tables))
    tables[first] = [b if b else [0] for b in tables[first]]
    for bag_list in tables.values():
        bag_list[0] = bag_list[0] or [1]
    out = {}
    for name, bag_list in tables.items():
        sizes = [len(b) for b in bag_list]
        out[name] = (
            np.array([i for b in bag_list for i in b], dtype=np.int64),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        )
    return Trace(out)


@given(csv_traces())
def test_property_csv_round_trip(tmp_path_factory, trace: Trace) -> None:
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    write_csv(trace, path)
    back = read_csv(path, num_rows=trace.num_rows)
    assert back.n_queries == trace.n_queries
    assert back.select(trace.table_names).equals(trace)


def test_write_csv_refuses_unwritable_names(tmp_path) -> None:
    t = Trace({"a,b": ([1], [0, 1])})
    with pytest.raises(InvalidArgumentError):
        write_csv(t, tmp_path / "x.csv")


# --------------------------------------------------------------------------- dispatch
def test_convert_dispatch(tmp_path) -> None:
    assert set(FORMATS) == {"lightgcn", "lastfm", "movielens", "criteo", "avazu", "csv"}
    path = write(tmp_path, "test.txt", "0 1 2\n")
    assert convert("lightgcn", path).equals(read_lightgcn(path))
    assert convert("lightgcn", str(path), table="x").table_names == ["x"]
    with pytest.raises(InvalidArgumentError) as err:
        convert("parquet", path)
    for name in FORMATS:
        assert name in str(err.value)
    with pytest.raises(InvalidArgumentError) as err:
        convert("lightgcn", path, top=5)
    assert "top" in str(err.value)
    with pytest.raises(FileNotFoundError):
        convert("lastfm", tmp_path / "absent.dat")


# --------------------------------------------------------------------------- real logs
def test_real_amazon_book(shared_data: Path) -> None:
    t0 = time.perf_counter()
    t = convert("lightgcn", shared_data / "amazon-book" / "test.txt")
    elapsed = time.perf_counter() - t0
    s = t.summary()["tables"]["item"]
    assert t.n_queries == 52_643
    assert s["lookups"] == 603_378  # README: ~600k
    assert s["distinct_rows"] == 82_629  # README: ~82.6k items
    assert s["top1pct_share"] == pytest.approx(0.12, abs=0.01)  # README: 12%
    assert elapsed < 10  # ~0.3 s; generous for a shared machine


def test_real_lastfm(shared_data: Path) -> None:
    t = convert("lastfm", shared_data / "lastfm-2k" / "user_artists.dat")
    assert t.n_queries == 1_892
    assert t.num_rows == {"artist": 17_632}
    assert t.n_lookups() == 92_834
    assert np.count_nonzero(t.access_counts("artist")) == 17_632
    assert t.summary()["tables"]["artist"]["top1pct_share"] == pytest.approx(0.32, abs=0.01)


def test_real_movielens(shared_data: Path) -> None:
    t = convert("movielens", shared_data / "ml-latest-small" / "ratings.csv")
    assert t.n_lookups() == 100_836
    assert t.num_rows == {"movie": 9_724}
    assert t.n_queries > 610  # 610 users, several sessions each
    assert t.summary()["tables"]["movie"]["top1pct_share"] == pytest.approx(0.16, abs=0.01)
    per_user = convert(
        "movielens", shared_data / "ml-latest-small" / "ratings.csv", session_gap=None
    )
    assert per_user.n_queries == 610


def test_real_criteo(shared_data: Path) -> None:
    t = convert("criteo", shared_data / "criteo-8k" / "criteo-8k.tsv")
    assert t.n_queries == 8_000 and len(t.table_names) == 26
    assert t.n_lookups() == 8_000 * 26
    # README: 58% over all tables, counting real values (the "missing" rows 0 excluded)
    counts = np.concatenate([t.access_counts(n)[1:] for n in t.table_names])
    assert top_share(counts) == pytest.approx(0.58, abs=0.01)


def test_real_avazu(shared_data: Path) -> None:
    t = convert("avazu", shared_data / "avazu-9k" / "avazu-9k.csv")
    assert t.n_queries == 8_999 and len(t.table_names) == 21
    assert "id" not in t and "click" not in t and "hour" not in t and "site_id" in t
    assert t.summary()["top1pct_share"] == pytest.approx(0.83, abs=0.01)  # README: 83%
