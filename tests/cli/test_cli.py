"""The mega-taxonomy command, through click's runner (in-process, so it stays fast)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from mega_taxonomy import KMeans, TaxonomyEngine, __version__
from mega_taxonomy.cli import main
from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import read_paths


def write_vectors(folder, X, n_files=3, bad_row=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(X, n_files)):
        part = part.copy()
        if bad_row is not None and i == 0:
            part[bad_row, 0] = np.nan
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), X.shape[1])
        pq.write_table(pa.table({"emb": emb, "text": [f"r{j}" for j in range(len(part))]}),
                       folder / f"part-{i}.parquet")
    return str(folder / "*.parquet")


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_version():
    assert __version__ in run("--version")


def test_data_inspect_counts_invalid_rows(tmp_path):
    X = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X, bad_row=4)
    out = run("data", "inspect", uri)
    assert "files: 3" in out and "rows: 300" in out and "dim: 5" in out and "dtype: float32" in out
    assert "invalid rows: 1" in out and "part-0.parquet: 1" in out


def test_kmeans_fit_writes_model_and_assignments(tmp_path):
    X = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X)
    out = run("kmeans", "fit", uri, "--k", "5", "--storage", str(tmp_path / "km"), "--seed", "3", "--device", "cpu")
    assert "k=5" in out
    km = KMeans.load(str(tmp_path / "km"))
    store = Store(str(tmp_path / "km"))
    table = pa.concat_tables([store.get_table(name) for name in store.listdir("assignments")])
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(500))
    np.testing.assert_array_equal(read_paths(table)[:, 0], km.predict(X))
    assert store.manifest()["kind"] == "kmeans"
    assert json.dumps(store.manifest())  # plain JSON


def test_gmm_fit_writes_the_model_and_assignments(tmp_path):
    from mega_taxonomy import GaussianMixture

    X = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X)
    out = run("gmm", "fit", uri, "--k", "3", "--storage", str(tmp_path / "gm"), "--seed", "3", "--device", "cpu")
    assert "k=3" in out and "rows=500" in out
    gm = GaussianMixture.load(str(tmp_path / "gm"))
    same = GaussianMixture(3, covariance_type="diag", random_state=3, device="cpu").fit(X)
    np.testing.assert_array_equal(gm.means_, same.means_)
    store = Store(str(tmp_path / "gm"))
    assert store.manifest()["kind"] == "gmm"
    table = pa.concat_tables([store.get_table(name) for name in store.listdir("assignments")])
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(500))
    labels = read_paths(table)[:, 0]
    np.testing.assert_array_equal(labels, same.predict(X))
    squared = ((X.astype(np.float64) - same.means_[labels]) ** 2).sum(1)
    np.testing.assert_allclose(table.column("distance").to_numpy(), squared, rtol=1e-6)


def test_demo_runs_on_glove(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo keeps its taxonomy in a folder of the working directory
    args = ["demo", "--branching", "4,3,2", "--show", "2", "--children", "2", "--words", "5", "--max-iter", "3",
            "--limit", "20000", "--device", "cpu"]
    out = run(*args)
    assert "of 20000 GloVe words, 4 x 12 x 24 nodes" in out
    lines = [line for line in out.splitlines() if line.lstrip().startswith("[")]
    assert len(lines) == 2 + 2 * 2 and all(len(line.split(": ")[1].split(", ")) == 5 for line in lines)
    # It kept what it fitted, and says how to browse it with the words as labels.
    storage = "mega-taxonomy-demo/glove-4x3x2-iter3-seed0-first20000"
    serve = out.splitlines()[-1].split()
    assert serve[:3] == ["mega-taxonomy", "serve", storage] and serve[-2:] == ["--label-column", "index"]
    assert pq.read_schema(serve[serve.index("--labels") + 1]).names == ["index"]
    assert "level 2: 24 nodes" in run("inspect", storage)
    run("sample", storage, "40", "--output", str(tmp_path / "s.parquet"))
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 40
    from mega_taxonomy.demo import glove_files

    np.save(tmp_path / "q.npy", np.load(glove_files()[0], mmap_mode="r")[:3])
    run("search", storage, str(tmp_path / "q.npy"), "--k", "2", "--output", str(tmp_path / "hits.parquet"))
    assert pq.read_table(tmp_path / "hits.parquet").column("id").to_pylist()[::2] == [0, 1, 2]
    # Run again, it loads the kept fit instead of fitting again.
    assert f"loaded from {storage}" in run(*args)


def test_taxonomy_commands(tmp_path):
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(3000, 6)) + rng.integers(0, 4, size=(3000, 1)) * 5).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X)
    storage = str(tmp_path / "tax")
    out = run("fit", uri, "--storage", storage, "--levels", "2", "--branching", "4,3", "--device", "cpu")
    assert "level 0: 4 nodes" in out and "level 1: 12 nodes" in out
    assert "level 1: 12 nodes" in run("inspect", storage)
    run("predict", storage, uri, "--output", str(tmp_path / "paths"))
    paths = read_paths(pq.read_table(tmp_path / "paths" / "assignments"))
    assert paths.shape == (3000, 2) and (paths[:, 0] >= 0).all()
    np.save(tmp_path / "q.npy", X[:7])
    run("search", storage, str(tmp_path / "q.npy"), "--k", "3", "--output", str(tmp_path / "hits.parquet"))
    hits = pq.read_table(tmp_path / "hits.parquet")
    assert hits.num_rows == 21 and (hits.column("id").to_numpy()[::3] == np.arange(7)).all()  # itself first
    run("sample", storage, "120", "--strategy", "hierarchical", "--output", str(tmp_path / "s.parquet"))
    ids = pq.read_table(tmp_path / "s.parquet").column("id").to_numpy()
    assert len(set(ids)) == 120
    assert np.bincount(paths[ids, 0], minlength=4).tolist() == [30, 30, 30, 30]


def test_fit_with_balance_stores_penalties(tmp_path):
    X = np.random.default_rng(3).normal(size=(2000, 4)).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X)
    storage = str(tmp_path / "tax")
    out = run("fit", uri, "--storage", storage, "--levels", "1", "--branching", "5", "--device", "cpu",
              "--balance", "penalty")
    assert "level 0: 5 nodes" in out
    assert (tmp_path / "tax" / "levels" / "00" / "penalty.npy").exists()


def test_fit_by_subtrees(tmp_path):
    """``--partition-level 1``: the levels below the first fitted subtree by subtree; the paths
    written follow the tree, as ``predict`` routes them."""
    X = np.random.default_rng(4).normal(size=(3000, 4)).astype(np.float32)
    uri = write_vectors(tmp_path / "data", X)
    storage = str(tmp_path / "tax")
    out = run("fit", uri, "--storage", storage, "--levels", "2", "--branching", "3,4", "--device", "cpu",
              "--partition-level", "1", "--output", str(tmp_path / "out"))
    assert "level 0: 3 nodes" in out and "level 1: 12 nodes" in out
    store = Store(str(tmp_path / "out"))
    table = pa.concat_tables([store.get_table(name) for name in store.listdir("assignments")])
    order = np.argsort(table.column("id").to_numpy())
    np.testing.assert_array_equal(read_paths(table)[order], TaxonomyEngine.load(storage).predict(X))
