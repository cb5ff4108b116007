"""EM on Ray gives LocalRuntime's bits: its statistics are per block, added in block order,
whether passes are mapped by a driver here or run by every worker in lockstep (collective)."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from mega_taxonomy.cluster import GaussianMixture
from mega_taxonomy.io import BLOCK_ROWS
from mega_taxonomy.runtime import LocalRuntime

pytestmark = pytest.mark.timeout(300)
OPTIONS = {"cpus_per_worker": 0.25, "progress": False, "start_timeout": 60}


@pytest.fixture(scope="module")
def ray_mod(ray_cluster):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    return ray


def fit(runtime, X, ctype):
    start = {"weights_init": [0.5, 0.3, 0.2], "means_init": [[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(3, covariance_type=ctype, max_iter=3, tol=0, init_params="random_from_data",
                               random_state=0, device="cpu", runtime=runtime, **start).fit(X)


@pytest.mark.parametrize("collective", [False, True])
def test_em_on_ray_is_bit_identical_to_local(ray_mod, collective):
    from mega_taxonomy.runtime.ray import RayRuntime

    rng = np.random.default_rng(7)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    X = centers[rng.integers(0, 3, 2 * BLOCK_ROWS + 99)] + rng.normal(size=(2 * BLOCK_ROWS + 99, 3))
    runtime = RayRuntime(num_workers=2, collective=collective, **OPTIONS)
    try:
        for ctype in ("full", "diag"):
            local, remote = fit(LocalRuntime("cpu", progress=False), X, ctype), fit(runtime, X, ctype)
            for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
                np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))
            assert remote.lower_bound_ == local.lower_bound_ and remote.n_iter_ == local.n_iter_ == 3
    finally:
        runtime.close()
