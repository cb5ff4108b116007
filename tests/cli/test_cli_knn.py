"""``mega-taxonomy knn build|query``: the tree written and read back, answers as KDTree's, bad input
as one line and exit status 2."""

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner
from scipy.spatial import cKDTree

from mega_taxonomy.cli import main
from mega_taxonomy.index import KDTree


def test_build_then_query_parquet_and_npy(tmp_path):
    from test_cli import write_vectors

    rng = np.random.default_rng(0)
    x = rng.random((900, 3)).astype(np.float32)
    uri = write_vectors(tmp_path / "points", x)
    q = rng.random((40, 3))
    np.save(tmp_path / "q.npy", q)
    runner = CliRunner()
    out = runner.invoke(main, ["knn", "build", uri, "--storage", str(tmp_path / "tree"), "--boxsize", "1"])
    assert out.exit_code == 0, out.output
    assert "points=900 dim=3" in out.output
    out = runner.invoke(main, ["knn", "query", str(tmp_path / "tree"), str(tmp_path / "q.npy"), "--k", "4",
                               "--output", str(tmp_path / "hits.parquet")])
    assert out.exit_code == 0, out.output
    hits = pq.read_table(tmp_path / "hits.parquet")
    d, i = cKDTree(x.astype(np.float64), boxsize=1.0).query(q, k=4)
    np.testing.assert_array_equal(hits.column("id").to_numpy().reshape(40, 4), i)
    np.testing.assert_allclose(hits.column("distance").to_numpy().reshape(40, 4), d, rtol=1e-12)
    np.testing.assert_array_equal(hits.column("rank").to_numpy()[:5], [0, 1, 2, 3, 0])
    loaded = KDTree.load(str(tmp_path / "tree"))
    np.testing.assert_array_equal(loaded.data, x.astype(np.float64))
    np.testing.assert_array_equal(loaded.query(q, k=2)[1], i[:, :2])


def test_bad_input_is_one_line_and_status_2(tmp_path):
    x = np.random.default_rng(1).random((50, 2))
    x[7, 1] = np.nan
    np.save(tmp_path / "bad.npy", x)
    out = CliRunner().invoke(main, ["knn", "build", str(tmp_path / "bad.npy"), "--storage", str(tmp_path / "t")])
    assert out.exit_code == 2
    assert "bad.npy" in out.output and "row 7" in out.output and len(out.output.strip().splitlines()) == 1
    np.save(tmp_path / "good.npy", np.nan_to_num(x))
    CliRunner().invoke(main, ["knn", "build", str(tmp_path / "good.npy"), "--storage", str(tmp_path / "t")])
    np.save(tmp_path / "q3.npy", np.zeros((3, 3)))
    out = CliRunner().invoke(main, ["knn", "query", str(tmp_path / "t"), str(tmp_path / "q3.npy"),
                                    "--output", str(tmp_path / "h.parquet")])
    assert out.exit_code == 2 and "3 dimensions, the tree 2" in out.output
