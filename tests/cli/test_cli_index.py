"""``mega-taxonomy index build|search`` through click's runner."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from mega_taxonomy.cli import main
from mega_taxonomy.index import IVFIndex


def write(folder, X, bad_row=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(X, 2)):
        part = part.copy()
        if bad_row is not None and i == 1:
            part[bad_row, 3] = np.nan
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), X.shape[1])
        ids = np.arange(len(part)) + 100 * (i + 1)
        pq.write_table(pa.table({"emb": emb, "key": ids}), folder / f"part-{i}.parquet")
    return str(folder / "*.parquet")


def test_build_then_search_matches_brute_force(tmp_path):
    X = np.random.default_rng(0).normal(size=(400, 6)).astype(np.float32)
    uri = write(tmp_path / "data", X)
    runner = CliRunner()
    out = runner.invoke(main, ["index", "build", uri, "--storage", str(tmp_path / "ivf"), "--nlist", "8",
                               "--assignment", "multi", "--id-column", "key", "--train-size", "300"])
    assert out.exit_code == 0, out.output
    assert "vectors=400" in out.output
    np.save(tmp_path / "q.npy", X[:5])
    out = runner.invoke(main, ["index", "search", str(tmp_path / "ivf"), str(tmp_path / "q.npy"), "--k", "3",
                               "--nprobe", "8", "--output", str(tmp_path / "hits.parquet")])
    assert out.exit_code == 0, out.output
    hits = {"id": pq.read_table(tmp_path / "hits.parquet").column("id").to_numpy()}
    ids = np.concatenate([np.arange(200) + 100, np.arange(200) + 200])
    full = ((X[:5, None].astype(np.float64) - X[None]) ** 2).sum(-1)
    truth = ids[np.argsort(full, 1)[:, :3]]
    np.testing.assert_array_equal(hits["id"].reshape(5, 3), truth)
    assert IVFIndex.load(str(tmp_path / "ivf")).ntotal == 400


def test_bad_input_is_one_line_and_status_2(tmp_path):
    X = np.random.default_rng(1).normal(size=(100, 6)).astype(np.float32)
    uri = write(tmp_path / "data", X, bad_row=7)
    out = CliRunner().invoke(main, ["index", "build", uri, "--storage", str(tmp_path / "ivf"), "--nlist", "4"])
    assert out.exit_code == 2
    assert out.output.startswith("Error:") and "part-1.parquet" in out.output and "row 7" in out.output
    out = CliRunner().invoke(main, ["index", "build", uri, "--storage", str(tmp_path / "ivf"), "--nlist", "0"])
    assert out.exit_code == 2 and "nlist" in out.output
