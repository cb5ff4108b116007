"""GaussianMixture(checkpoint=...): a fit stopped after any committed iteration or start ends,
when run again, with the parameters of a fit never stopped, bit for bit."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning

from mega_taxonomy import GaussianMixture
from mega_taxonomy.errors import ConfigError
from mega_taxonomy.storage import Checkpoints

PARAMS = {"n_components": 4, "covariance_type": "full", "n_init": 3, "init_params": "random", "max_iter": 6,
          "tol": 1e-6, "random_state": 5, "device": "cpu"}


class Stop(Exception):
    """Stands for a process killed right after a commit."""


@pytest.fixture(scope="module")
def X():
    return make_blobs(n_samples=800, centers=4, n_features=3, cluster_std=2.0, random_state=1)[0]


def fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(**{**PARAMS, **kw}).fit(X)


@pytest.fixture(scope="module")
def reference(X):
    gm = fit(X)
    assert gm.lower_bound_ > fit(X, n_init=1).lower_bound_  # the last start is the best: its draws count
    return gm


def assert_same_fit(a, b):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.lower_bound_, a.n_iter_, a.converged_, a.lower_bounds_) == (
        b.lower_bound_, b.n_iter_, b.converged_, b.lower_bounds_)


def stop_after(monkeypatch, method, n):
    """Raise Stop once ``Checkpoints.<method>`` has committed ``n`` times."""
    original, calls = getattr(Checkpoints, method), []

    def stopping(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise Stop

    monkeypatch.setattr(Checkpoints, method, stopping)


@pytest.mark.parametrize("method,n", [("save", 1), ("save", 5), ("save", 8), ("complete", 1), ("complete", 2)])
def test_stopped_fit_resumes_to_the_same_parameters(X, reference, tmp_path, monkeypatch, method, n):
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after(m, method, n)
        with pytest.raises(Stop):
            fit(X, checkpoint=uri)
    assert_same_fit(fit(X, checkpoint=uri), reference)
    assert_same_fit(fit(X, checkpoint=uri), reference)  # a finished fit is read back


def test_without_checkpoint_nothing_changes_and_other_parameters_are_refused(X, reference, tmp_path):
    uri = str(tmp_path / "ckpt")
    assert_same_fit(fit(X, checkpoint=uri), reference)
    with pytest.raises(ConfigError, match="reg_covar"):
        fit(X, checkpoint=uri, reg_covar=1e-3)


def test_a_bfloat16_tensors_fit_checkpoints(X, tmp_path):
    """The checkpoint's fingerprint names the input's dtype: bfloat16, which numpy cannot name,
    failed there."""
    torch = pytest.importorskip("torch")
    rows = torch.from_numpy(X.astype(np.float32)).bfloat16()
    want = fit(rows)
    got = fit(rows, checkpoint=str(tmp_path / "ckpt"))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_starts_given_as_bfloat16_tensors_are_fingerprinted(X, tmp_path):
    """Starts given as tensors numpy cannot take (bfloat16; on the GPU, any): the fit and its
    checkpoint's fingerprint take them as the arrays of their values."""
    torch = pytest.importorskip("torch")
    means = torch.from_numpy(X[:4].astype(np.float32)).bfloat16()
    want = fit(X, means_init=means.float().numpy())
    got = fit(X, means_init=means, checkpoint=str(tmp_path / "ckpt"))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
