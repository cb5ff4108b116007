"""TaxonomyView against what the fit stored and against independent computations: the fit's own
imbalance statistics, numpy's histogram, the assignments and members tables read directly."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mega_taxonomy.cluster.balance import imbalance as fit_imbalance
from mega_taxonomy.errors import DataError, StorageError
from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import members_file, read_paths
from mega_taxonomy.web import Labels, NotFound, TaxonomyView
from mega_taxonomy.web.stats import size_histogram


def test_levels_match_the_fits_own_statistics(view, glove_taxonomy):
    stored = Store(glove_taxonomy[0]).manifest()["meta"]["levels"]
    summary = view.summary()
    assert summary["rows"] == 3000 and [lv["nodes"] for lv in summary["levels"]] == [6, 24]
    for ours, fit in zip(summary["levels"], stored):
        assert ours["imbalance"] == pytest.approx(fit["imbalance"])


def test_size_histogram_against_numpy():
    counts = np.random.default_rng(0).zipf(1.5, size=5000) % 100_000
    h = size_histogram(counts)
    assert sum(h["counts"]) == len(counts)
    for lo, hi, n in zip(h["edges"][:-1], h["edges"][1:], h["counts"]):
        assert n == int(((counts >= lo) & (counts < hi)).sum())


def test_children_pages_cover_every_child_largest_first(view):
    for key, level, node in [("root", -1, 0)] + [(f"0-{n}", 0, n) for n in range(6)]:
        pages = [view.children(key, offset, 3) for offset in range(0, 12, 3)]
        got = [c["node"] for p in pages for c in p["children"]]
        kids = np.arange(6) if level < 0 else np.asarray(view.tree.children(level, node))
        sizes = np.asarray(view.tree.levels[level + 1].counts)[kids]
        assert got == kids[np.lexsort((kids, -sizes))].tolist()
        info = view.node(key)
        assert info["children_imbalance"] == pytest.approx(fit_imbalance(sizes))
        assert info["size"] == (3000 if level < 0 else int(view.tree.levels[0].counts[node])) == sizes.sum()


def test_node_path_rank_and_unknown_keys(view):
    leaf = int(np.argmax(view.tree.levels[1].counts))
    parent = int(view.tree.levels[1].parent[leaf])
    info = view.node(f"1-{leaf}")
    assert info["path"] == [f"0-{parent}", f"1-{leaf}"] and info["parent"] == f"0-{parent}"
    assert view.children(f"0-{parent}", info["rank"], 1)["children"][0]["node"] == leaf
    assert info["n_children"] == 0 and info["children_imbalance"] is None
    for bad in ["0-6", "2-0", "x", "0-01", "01-0", "-1-0", "0-", "0-1-2", ""]:
        with pytest.raises(NotFound):
            view.node(bad)


def test_treemap_values_add_up(view):
    piece = view.treemap("root", depth=2, limit=3)
    value = dict(zip(piece["ids"], piece["values"]))
    kids = {}
    for i, p in zip(piece["ids"], piece["parents"]):
        if p:
            kids.setdefault(p, []).append(i)
    assert sum(value[k] for k in kids["root"]) == 3000 and "root/more" in kids["root"]
    for parent, children in kids.items():
        assert sum(value[c] for c in children) == value[parent]


def test_members_and_search_against_stored_tables(view, glove_taxonomy):
    storage, _, words = glove_taxonomy
    store = Store(storage)
    table = store.get_table(members_file(0))
    parts = [store.get_table(n) for n in store.listdir("assignments")]
    path_of = dict(zip(np.concatenate([t.column("id").to_numpy() for t in parts]).tolist(),
                       np.concatenate([read_paths(t) for t in parts]).tolist()))
    for node in range(6):
        got = view.members(f"0-{node}", 7)["members"]
        want = table.filter(pa.compute.equal(table.column("node"), node)).slice(0, 7)
        assert [m["id"] for m in got] == want.column("id").to_pylist()
        assert [m["label"] for m in got] == [words[i] for i in want.column("id").to_pylist()]
        assert all(path_of[m["id"]][0] == node for m in got)
    hits = view.search("KING", 5)["hits"]
    assert hits[0]["label"] == "king" and all(h["label"].startswith("king") for h in hits)
    for h in hits:
        assert h["path"] == [f"{lv}-{n}" for lv, n in enumerate(path_of[h["id"]])]
    by_id = view.search("2999", 5)["hits"]  # the id first, then rows labelled "2999" (not fitted: left out)
    assert [h["id"] for h in by_id] == [2999] and by_id[0]["label"] == words[2999]
    assert view.locate("2999")["path"] == [f"{lv}-{n}" for lv, n in enumerate(path_of[2999])]
    with pytest.raises(NotFound):
        view.locate("3000")


def test_labels_join_on_an_id_column_else_the_ordinal(tmp_path):
    pq.write_table(pa.table({"name": ["c", "a", None, "b"], "id": [30, 10, 5, 20]}), tmp_path / "by_id.parquet")
    pq.write_table(pa.table({"name": ["x", "y"]}), tmp_path / "by_row.parquet")
    by_id, by_row = Labels(tmp_path / "by_id.parquet", "name"), Labels(tmp_path / "by_row.parquet", "name")
    assert by_id.lookup([10, 20, 30, 0, 5]) == ["a", "b", "c", None, None]
    assert by_id.find("b", 3) == [20] and by_id.find("zz", 3) == []
    assert by_row.lookup([1, 0, 2, -1]) == ["y", "x", None, None]
    with pytest.raises(DataError, match="no column 'word'"):
        Labels(tmp_path / "by_id.parquet", "word")
    pq.write_table(pa.table({"name": ["a"], "id": ["not an int"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="'id' must hold integers"):
        Labels(tmp_path / "bad.parquet", "name")


def test_refuses_what_is_not_a_finished_taxonomy(tmp_path):
    store = Store(tmp_path / "km")
    store.put_array("levels/00/centroids.npy", np.zeros((2, 2), np.float32))
    store.commit(kind="kmeans", params={}, status="done")
    with pytest.raises(StorageError, match="holds no finished taxonomy"):
        TaxonomyView(tmp_path / "km")
    with pytest.raises(StorageError, match="found nothing"):
        TaxonomyView(tmp_path / "empty")


def test_labels_reach_the_charts_without_markup(glove_taxonomy, tmp_path):
    """plotly reads tags in text: a label cannot become a link or markup in the treemap."""
    storage, _, words = glove_taxonomy
    evil = [f'<a href="javascript:alert({i})">{w}</a>' for i, w in enumerate(words[:3000])]
    pq.write_table(pa.table({"id": np.arange(3000), "name": evil}), tmp_path / "evil.parquet")
    view = TaxonomyView(storage, labels=Labels(tmp_path / "evil.parquet", "name"))
    names = view.treemap("root", depth=2, limit=40)["names"]
    assert len(names) == 1 + 6 + 24 and not any("<" in n or ">" in n for n in names)
    assert view.members("0-0", 1)["members"][0]["label"].startswith("<a href")  # JSON keeps the data as it is


def test_a_taxonomy_on_s3_reads_the_same(view, glove_taxonomy, s3_bucket, tmp_path):
    import fsspec

    bucket, options = s3_bucket
    storage, _, words = glove_taxonomy
    fs = fsspec.filesystem("s3", **options)
    fs.put(storage + "/", f"{bucket}/tax/", recursive=True)
    pq.write_table(pa.table({"id": np.arange(3000), "word": words[:3000]}), tmp_path / "words.parquet")
    fs.put(str(tmp_path / "words.parquet"), f"{bucket}/words.parquet")
    remote = TaxonomyView(f"{bucket}/tax", labels=Labels(f"{bucket}/words.parquet", "word", storage_options=options),
                          storage_options=options)
    assert remote.summary()["levels"] == view.summary()["levels"]
    assert remote.children("root", 0, 10) == view.children("root", 0, 10)
    assert remote.members("1-3", 20) == view.members("1-3", 20)
    assert remote.search("king", 3)["hits"] == view.search("king", 3)["hits"]


def test_a_tree_written_by_hand_through_storage(tmp_path):
    """A manifest without n_levels: the levels stored are found in order; sizes as written."""
    from mega_taxonomy.taxonomy.tree import Level, Tree

    store = Store(tmp_path / "t")
    Tree([Level(np.zeros((2, 1), np.float32), np.array([-1, -1]), np.array([5, 3]), np.array([0, 2, 3])),
          Level(np.zeros((3, 1), np.float32), np.array([0, 0, 1]), np.array([1, 4, 3]), np.zeros(4, np.int64))]
         ).save(store)
    store.commit(kind="taxonomy", params={}, status="done")
    view = TaxonomyView(tmp_path / "t")
    assert view.summary()["rows"] == 8 and [lv["nodes"] for lv in view.summary()["levels"]] == [2, 3]
    assert [c["key"] for c in view.children("0-0", 0, 10)["children"]] == ["1-1", "1-0"]
    assert view.members("0-0", 5) == {"key": "0-0", "stored": False, "members": []}
    assert view.search("1", 5)["hits"] == []  # no assignments stored: nothing to find
