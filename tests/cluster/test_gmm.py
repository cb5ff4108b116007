"""GaussianMixture against scikit-learn's: the same fit from the same start (all four covariance
types, bundled and generated data), the same optimum from a seed, the same bits for any batch
size, degenerate inputs, storage, and scikit-learn's estimator checks."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mega_taxonomy
from mega_taxonomy.cluster import GaussianMixture
from mega_taxonomy.errors import ConfigError, StorageError
from mega_taxonomy.io import BLOCK_ROWS

TYPES = ["full", "tied", "diag", "spherical"]


def datasets():
    blobs, _ = make_blobs(600, n_features=4, centers=4, cluster_std=1.5, random_state=0)
    return {"iris": (StandardScaler().fit_transform(load_iris().data), 3),
            "wine": (StandardScaler().fit_transform(load_wine().data), 3), "blobs": (blobs, 4)}


DATA = datasets()


def close(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= 1e-4 * (1 + np.abs(ref))), np.abs(got - ref).max()


def a_start(X, k, ctype):
    """weights, means and precisions of a start: scikit-learn's after one EM iteration from a seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = SkGaussianMixture(k, covariance_type=ctype, max_iter=1, random_state=3, init_params="random_from_data").fit(X)
    return {"weights_init": s.weights_, "means_init": s.means_, "precisions_init": s.precisions_}


def fit_both(X, k, ctype, **kw):
    ref = SkGaussianMixture(k, covariance_type=ctype, **kw).fit(X)
    ours = GaussianMixture(k, covariance_type=ctype, device="cpu", **kw).fit(X)
    return ref, ours


def assert_same_fit(ref, ours):
    close(ours.weights_, ref.weights_)
    close(ours.means_, ref.means_)
    close(ours.covariances_, ref.covariances_)
    close(ours.precisions_cholesky_, ref.precisions_cholesky_)
    close(ours.precisions_, ref.precisions_)
    close(ours.lower_bound_, ref.lower_bound_)
    close(ours.lower_bounds_, ref.lower_bounds_)
    assert ours.n_iter_ == ref.n_iter_ and ours.converged_ == ref.converged_


@pytest.mark.parametrize("ctype", TYPES)
@pytest.mark.parametrize("name", sorted(DATA))
def test_same_fit_as_sklearn_from_the_same_start(name, ctype):
    X, k = DATA[name]
    ref, ours = fit_both(X, k, ctype, max_iter=500, **a_start(X, k, ctype))
    assert ref.converged_
    assert_same_fit(ref, ours)
    close(ours.score_samples(X), ref.score_samples(X))
    close(ours.predict_proba(X), ref.predict_proba(X))
    assert (ours.predict(X) == ref.predict(X)).all()
    close(ours.score(X), ref.score(X))
    close(ours.bic(X), ref.bic(X))
    close(ours.aic(X), ref.aic(X))


@pytest.mark.parametrize("ctype", TYPES)
def test_same_fit_after_a_fixed_number_of_iterations(ctype):
    X, k = DATA["wine"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, ours = fit_both(X, k, ctype, max_iter=3, tol=0, **a_start(X, k, ctype))
    assert ours.n_iter_ == 3 and not ours.converged_
    assert_same_fit(ref, ours)


def test_convergence_warning_as_sklearn():
    X, k = DATA["iris"]
    with pytest.warns(ConvergenceWarning):
        GaussianMixture(k, max_iter=1, tol=0, device="cpu", **a_start(X, k, "full")).fit(X)


def sort_rows(a):
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_same_optimum_from_a_seed_on_separated_blobs(init_params, ctype):
    X, _ = make_blobs(500, n_features=3, centers=4, cluster_std=0.5, center_box=(-20, 20), random_state=1)
    ref, ours = fit_both(X, 4, ctype, n_init=4, init_params=init_params, random_state=0)
    order_ref, order_ours = np.lexsort(ref.means_.T[::-1]), np.lexsort(ours.means_.T[::-1])
    close(ours.means_[order_ours], ref.means_[order_ref])
    close(ours.weights_[order_ours], ref.weights_[order_ref])
    close(ours.covariances_[order_ours], ref.covariances_[order_ref])
    close(ours.lower_bound_, ref.lower_bound_)


def test_warm_start_goes_on_from_the_last_fit():
    X, k = DATA["wine"]
    kw = dict(max_iter=2, tol=0, warm_start=True, **a_start(X, k, "diag"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, ours = fit_both(X, k, "diag", **kw)
        ref.fit(X)
        ours.fit(X)
    assert_same_fit(ref, ours)


def test_same_bits_for_any_batch_size_and_file_or_memory(tmp_path):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(BLOCK_ROWS + 500, 2)), rng.normal(size=(300, 2)) + 6])
    np.save(tmp_path / "x.npy", X)
    kw = dict(covariance_type="full", max_iter=4, tol=0, device="cpu", **a_start(X[:2000], 2, "full"))
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits.append(GaussianMixture(2, **kw).fit(X))
        for batch_size in (1000, 70_000):
            fits.append(GaussianMixture(2, batch_size=batch_size, **kw).fit(str(tmp_path / "x.npy")))
    for other in fits[1:]:
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_array_equal(getattr(other, name), getattr(fits[0], name))
        assert other.lower_bound_ == fits[0].lower_bound_


def test_one_component_and_one_feature():
    X = np.random.default_rng(2).normal(size=(200, 1))
    for ctype in TYPES:
        ref, ours = fit_both(X, 1, ctype, random_state=0)
        assert_same_fit(ref, ours)


def test_duplicate_rows_and_a_component_losing_its_mass():
    """reg_covar keeps a collapsed component valid, as in scikit-learn; a component started far
    from every row gets no mass and keeps a weight of about 0."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    start = {"weights_init": [0.4, 0.4, 0.2], "means_init": [[0.0, 0.0], [5.0, 5.0], [1e3, 1e3]],
             "precisions_init": np.ones((3, 2))}
    ref, ours = fit_both(X, 3, "diag", **start)
    assert_same_fit(ref, ours)
    assert ours.weights_[2] < 1e-10 and np.isfinite(ours.precisions_cholesky_).all()


def test_more_components_than_rows_is_a_clear_error():
    with pytest.raises(ConfigError, match="n_samples=3 should be >= n_components=4"):
        GaussianMixture(4, device="cpu").fit(np.eye(3))


def test_bad_starts_are_refused_as_sklearn():
    X = DATA["iris"][0]
    with pytest.raises(ValueError, match="normalized"):
        GaussianMixture(2, weights_init=[0.3, 0.3], device="cpu").fit(X)
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(2, means_init=np.zeros((3, 4)), device="cpu").fit(X)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(2, covariance_type="diag", precisions_init=-np.ones((2, 4)), device="cpu").fit(X)


@pytest.mark.parametrize("ctype", TYPES)
def test_sample_draws_as_sklearn(ctype):
    """The same draws from the same parameters. (numpy's multivariate_normal goes through an SVD
    of the covariance, whose basis a change in the last bits can turn: full and tied compare
    scikit-learn's sampler on our fit's covariances, exactly.)"""
    X, k = DATA["iris"]
    ref, ours = fit_both(X, k, ctype, random_state=0, **a_start(X, k, ctype))
    assert ours.sample(5)[0].shape == (5, 4)
    if ctype in ("full", "tied"):
        ref.covariances_, ref.weights_, ref.means_ = ours.covariances_, ours.weights_, ours.means_
    (xr, yr), (xo, yo) = ref.sample(50), ours.sample(50)
    assert (yr == yo).all()
    close(xo, xr)
    with pytest.raises(ValueError, match="n_samples"):
        ours.sample(0)


def test_save_and_load(tmp_path):
    X, k = DATA["iris"]
    gm = GaussianMixture(k, covariance_type="tied", random_state=0, device="cpu").fit(X)
    gm.save(str(tmp_path / "m"))
    back = GaussianMixture.load(str(tmp_path / "m"))
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gm, name))
    assert back.n_iter_ == gm.n_iter_ and back.lower_bound_ == gm.lower_bound_
    assert (back.predict(X) == gm.predict(X)).all()
    with pytest.raises(StorageError):
        mega_taxonomy.KMeans.load(str(tmp_path / "m"))


def test_torch_in_torch_out():
    X, k = DATA["iris"]
    gm = GaussianMixture(k, random_state=0, device="cpu").fit(torch.from_numpy(X))
    labels = gm.predict(torch.from_numpy(X))
    assert isinstance(labels, torch.Tensor) and (labels.numpy() == gm.predict(X)).all()


def test_exported_from_the_package():
    assert mega_taxonomy.GaussianMixture is GaussianMixture


@parametrize_with_checks([GaussianMixture(device="cpu", n_components=2)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def sk_resp(X, k, weights, means, precisions_cholesky):
    """Responsibilities of ``X`` under given parameters, by scikit-learn's E-step."""
    gm = SkGaussianMixture(k)
    gm.weights_, gm.means_, gm.precisions_cholesky_ = weights, means, precisions_cholesky
    gm.n_features_in_ = X.shape[1]
    return gm.predict_proba(X)


def test_partial_fit_is_incremental_em():
    """The first step from a start is one EM iteration of ``fit``; the next one is the M-step on
    the totals of both batches, the E-step of the second batch run on the first step's parameters."""
    X, k = DATA["wine"]
    start = a_start(X, k, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = GaussianMixture(k, max_iter=1, device="cpu", **start).fit(X[:100])
    online = GaussianMixture(k, device="cpu", **start).partial_fit(X[:100])
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(online, name), getattr(one, name))
    assert online.lower_bound_ == one.lower_bound_ and online.n_steps_ == 1
    r = np.concatenate([
        sk_resp(X[:100], k, start["weights_init"], start["means_init"], np.linalg.cholesky(start["precisions_init"])),
        sk_resp(X[100:], k, one.weights_, one.means_, one.precisions_cholesky_)])
    online.partial_fit(X[100:])
    nk = r.sum(0) + 10 * np.finfo(np.float64).eps
    means = (r.T @ X) / nk[:, None]
    close(online.weights_, nk / nk.sum())
    close(online.means_, means)
    close(online.covariances_, [(r[:, j, None] * (X - means[j])).T @ (X - means[j]) / nk[j] + 1e-6 * np.eye(X.shape[1])
                                for j in range(k)])
    assert online.n_steps_ == 2


def test_partial_fit_over_a_stream_finds_the_fit():
    X, _ = make_blobs(3000, n_features=2, centers=3, cluster_std=0.5, random_state=4)
    gm = GaussianMixture(3, covariance_type="diag", init_params="k-means++", random_state=0, device="cpu")
    for part in np.array_split(X, 30):
        gm.partial_fit(part)
    full = GaussianMixture(3, covariance_type="diag", init_params="k-means++", random_state=0, device="cpu").fit(X)
    np.testing.assert_allclose(sort_rows(gm.means_), sort_rows(full.means_), atol=0.1)
    assert gm.n_steps_ == 30
