"""The command line on the session's Ray cluster: `fit --ray ADDRESS` gives the local tree."""

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("ray")

from mega_taxonomy.cli import main  # noqa: E402
from mega_taxonomy.taxonomy import TaxonomyEngine  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_fit_and_predict_on_ray_from_the_command_line(ray_cluster, tmp_path):
    address, _ = ray_cluster
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(4000, 6)) + rng.integers(0, 4, size=(4000, 1)) * 5).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    data = str(tmp_path / "x.npy")
    common = ["--levels", "2", "--branching", "4,3", "--device", "cpu", "--max-iter", "5"]
    run("fit", data, "--storage", str(tmp_path / "local"), *common)
    run("fit", data, "--storage", str(tmp_path / "ray"), *common, "--ray", address, "--ray-workers", "1")
    local, remote = TaxonomyEngine.load(str(tmp_path / "local")), TaxonomyEngine.load(str(tmp_path / "ray"))
    for a, b in zip(local.tree_.levels, remote.tree_.levels):
        np.testing.assert_array_equal(a.centroids, b.centroids)
        np.testing.assert_array_equal(a.counts, b.counts)
    run("predict", str(tmp_path / "ray"), data, "--output", str(tmp_path / "paths"), "--ray", address,
        "--ray-workers", "1")
    assert (tmp_path / "paths" / "manifest.json").exists()
