"""KMeans against scikit-learn, a float64 brute force and a float64 spherical k-means."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from mega_taxonomy import KMeans
from mega_taxonomy._estimator import as_source
from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.io import VectorSource


def blobs(n=3000, k=12, d=16, dtype=np.float32, seed=0, std=1.0):
    X, y = make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=std, random_state=seed)
    return X.astype(dtype), y


@parametrize_with_checks([KMeans(device="cpu", n_clusters=3)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sklearn_lloyd_from_the_same_init(dtype):
    X, _ = blobs(dtype=dtype, std=3.0)
    init = X[np.random.default_rng(1).choice(len(X), 12, replace=False)]
    ours = KMeans(12, init=init, tol=0, max_iter=50, device="cpu").fit(X)
    ref = SkKMeans(12, init=init, n_init=1, tol=0, max_iter=50, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-4)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-5)
    assert ours.cluster_centers_.dtype == dtype


def test_tol_stops_early_like_sklearn():
    X, _ = blobs(std=4.0)
    init = X[:12]
    ours = KMeans(12, init=init, tol=1e-2, max_iter=100, device="cpu").fit(X)
    ref = SkKMeans(12, init=init, n_init=1, tol=1e-2, max_iter=100, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_ < 100
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-4)


def test_kmeans_plusplus_inertia_within_one_percent_of_sklearn():
    X, y = blobs(n=20_000, k=20, d=32, seed=3)
    ours = KMeans(20, random_state=0, device="cpu").fit(X)
    ref = SkKMeans(20, random_state=0, n_init=1).fit(X)
    assert ours.inertia_ <= ref.inertia_ * 1.01
    assert adjusted_rand_score(y, ours.labels_) > 0.99


def test_assignments_equal_float64_brute_force():
    X, _ = blobs(n=5000, d=24, std=2.0)
    km = KMeans(12, random_state=0, device="cpu").fit(X)
    ref = cdist(X.astype(np.float64), km.cluster_centers_.astype(np.float64), "sqeuclidean")
    np.testing.assert_array_equal(km.labels_, ref.argmin(1))
    np.testing.assert_array_equal(km.predict(X), ref.argmin(1))
    np.testing.assert_allclose(km.inertia_, ref.min(1).sum(), rtol=1e-5)
    np.testing.assert_array_equal(km.counts_, np.bincount(ref.argmin(1), minlength=12))


def test_empty_cluster_is_relocated_like_sklearn():
    X, _ = blobs(n=500, k=3, d=4, dtype=np.float64, std=0.5, seed=7)
    X[17] += 40.0  # a unique farthest point
    init = np.vstack([X[[0, 1, 2]], np.full((1, 4), 1e6)])  # the 4th center attracts nobody
    ours = KMeans(4, init=init, tol=0, max_iter=30, device="cpu").fit(X)
    ref = SkKMeans(4, init=init, n_init=1, tol=0, max_iter=30, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-8)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert (ours.counts_ > 0).all()


def spherical_kmeans_reference(X, init, n_iter):
    """Float64 spherical k-means: assign by max cosine, centroid = normalized mean."""
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = init / np.linalg.norm(init, axis=1, keepdims=True)
    for _ in range(n_iter):
        labels = (Xn @ C.T).argmax(1)
        S = np.zeros_like(C)
        np.add.at(S, labels, Xn)
        C = S / np.linalg.norm(S, axis=1, keepdims=True)
    return C, (Xn @ C.T).argmax(1)


def test_cosine_is_spherical_kmeans():
    X, _ = blobs(n=2000, k=6, d=10, dtype=np.float64, seed=5)
    init = X[:6]
    ours = KMeans(6, init=init, metric="cosine", tol=0, max_iter=15, device="cpu").fit(X)
    C, labels = spherical_kmeans_reference(X, init, ours.n_iter_)
    np.testing.assert_allclose(ours.cluster_centers_, C, atol=1e-10)
    np.testing.assert_array_equal(ours.labels_, labels)


def test_partial_fit_matches_minibatch_kmeans():
    X, _ = blobs(n=4000, d=8, std=2.0)
    init = X[:12].astype(np.float64)
    X = X.astype(np.float64)
    ours = KMeans(12, init=init, device="cpu")
    ref = MiniBatchKMeans(12, init=init, n_init=1, reassignment_ratio=0.0)
    for batch in np.array_split(X, 10):
        ours.partial_fit(batch)
        ref.partial_fit(batch)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(ours.counts_, ref._counts.astype(np.int64))
    assert ours.n_steps_ == 10


def write_parquet_files(X, folder, n_files):
    bounds = np.linspace(0, len(X), n_files + 1).astype(int)
    # uneven files and row groups, so blocks span file boundaries
    bounds[1:-1] += np.arange(1, n_files) * 7
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        col = pa.FixedSizeListArray.from_arrays(pa.array(X[a:b].ravel()), X.shape[1])
        pq.write_table(pa.table({"emb": col}), folder / f"part-{i:03d}.parquet", row_group_size=3000 + 97 * i)
    return str(folder / "*.parquet")


@pytest.mark.slow
def test_streaming_over_parquet_equals_in_memory_exactly(tmp_path):
    X, _ = blobs(n=150_000, k=16, d=8, std=3.0)
    uri = write_parquet_files(X, tmp_path, 20)
    params = dict(n_clusters=16, random_state=3, tol=0, max_iter=8, device="cpu")
    mem = KMeans(**params).fit(X)
    for batch_size in (1000, 4096, 100_000):
        streamed = KMeans(**params, batch_size=batch_size).fit(uri)
        np.testing.assert_array_equal(streamed.cluster_centers_, mem.cluster_centers_)
        np.testing.assert_array_equal(streamed.counts_, mem.counts_)
        assert streamed.inertia_ == mem.inertia_ and streamed.n_iter_ == mem.n_iter_
    np.testing.assert_array_equal(streamed.predict(uri), mem.labels_)


def test_torch_in_torch_out():
    X, _ = blobs(n=500, k=3, d=4)
    t = torch.from_numpy(X)
    km = KMeans(3, random_state=0, device="cpu").fit(t)
    labels = km.predict(t)
    assert isinstance(labels, torch.Tensor) and labels.device == t.device
    np.testing.assert_array_equal(labels.numpy(), km.predict(X))
    assert isinstance(km.transform(t), torch.Tensor)
    np.testing.assert_allclose(km.transform(t).numpy(), km.transform(X), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, np.float16])
def test_half_tensors_fit_as_their_float32_values(dtype):
    """Half tensors and float16 arrays are served as they are (half the bytes a pass) and computed
    in float32, so their fit is that of their float32 values, bit for bit."""
    if dtype is np.float16:
        x = blobs(n=2000, k=6, d=8)[0].astype(np.float16)
        assert as_source(x, KMeans(6))._array is x  # not converted
        half = torch.from_numpy(x)
    else:
        half = torch.from_numpy(blobs(n=2000, k=6, d=8)[0]).to(dtype)
    ours = KMeans(6, random_state=0, device="cpu").fit(half.numpy() if dtype is np.float16 else half)
    ref = KMeans(6, random_state=0, device="cpu").fit(half.float())
    np.testing.assert_array_equal(ours.cluster_centers_, ref.cluster_centers_)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    assert ours.inertia_ == ref.inertia_ and ours.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(ours.predict(half).numpy(), ref.labels_)


def test_same_result_from_a_source_with_ids():
    X, _ = blobs(n=800, k=4, d=4)
    a = KMeans(4, random_state=1, device="cpu").fit(X)
    b = KMeans(4, random_state=1, device="cpu").fit(VectorSource(X))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_bad_input_names_the_row():
    X, _ = blobs(n=100, k=2, d=3)
    X[42, 1] = np.nan
    with pytest.raises(DataError, match="row 42"):
        KMeans(2, device="cpu").fit(X)


def test_impossible_settings():
    X, _ = blobs(n=10, k=2, d=3)
    with pytest.raises(ConfigError, match="n_samples=10 should be >= n_clusters=11"):
        KMeans(11, device="cpu").fit(X)
    with pytest.raises(ConfigError, match="init has shape"):
        KMeans(2, init=np.zeros((3, 3)), device="cpu").fit(X)
