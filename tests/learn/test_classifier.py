"""FastKMeansClassifier against independent references: scikit-learn's NearestCentroid, a float64
brute force of the soft vote from the fitted prototypes, KNN on the same data; streaming against
fit; inputs (numpy, tensor, CSR) against each other."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist
from sklearn.datasets import make_blobs, make_classification
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from mega_taxonomy import FastKMeansClassifier


def data(n=3000, seed=0):
    X, y = make_classification(n_samples=n, n_features=12, n_informative=8, n_redundant=0, n_classes=4,
                               n_clusters_per_class=3, class_sep=1.5, random_state=seed)
    return X.astype(np.float32), y


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "l1"])
def test_one_prototype_per_class_is_nearest_centroid(metric):
    X, y = make_blobs(n_samples=600, centers=5, n_features=6, random_state=1)
    X = X.astype(np.float32)
    clf = FastKMeansClassifier(k_init=1, soft_type="hard", metric=metric, device="cpu", random_state=0).fit(X, y)
    means = np.stack([X[y == c].mean(0) for c in range(5)])
    if metric == "cosine":
        means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(clf.prototypes_, means, rtol=1e-5, atol=1e-5)
    scipy_metric = {"euclidean": "sqeuclidean", "cosine": "cosine", "l1": "cityblock"}[metric]
    expected = cdist(X.astype(np.float64), means.astype(np.float64), scipy_metric).argmin(1)
    np.testing.assert_array_equal(clf.predict(X), expected)
    if metric == "euclidean":
        np.testing.assert_array_equal(clf.predict(X), NearestCentroid().fit(X, y).predict(X))


@pytest.mark.parametrize("soft_type", ["hard", "mean", "scaled", "softmax_scaled"])
def test_soft_vote_matches_float64_brute_force(soft_type):
    X, y = data()
    clf = FastKMeansClassifier(k_init=4, soft_type=soft_type, top_k=5, temperature=0.7, device="cpu",
                               random_state=0).fit(X, y)
    d = cdist(X[:300].astype(np.float64), clf.prototypes_.astype(np.float64), "sqeuclidean")
    k = 1 if soft_type == "hard" else 5
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    dk = np.take_along_axis(d, idx, 1)
    if soft_type in ("hard", "mean"):
        w = np.ones_like(dk)
    elif soft_type == "scaled":
        w = 1.0 / (dk + 1e-9 * clf.distance_scale_)
    else:
        z = -dk / (0.7 * clf.distance_scale_)
        w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expected = np.zeros((300, 4))
    np.add.at(expected, (np.arange(300)[:, None], clf.prototype_groups_[idx]), w)
    np.testing.assert_allclose(clf.predict_proba(X[:300]), expected, atol=1e-6)


def test_quality_near_knn_with_far_fewer_vectors():
    X, y = data(4000)
    a, b, ya, yb = X[:3000], X[3000:], y[:3000], y[3000:]
    knn = (KNeighborsClassifier().fit(a, ya).predict(b) == yb).mean()
    clf = FastKMeansClassifier(k_init=40, device="cpu", random_state=0).fit(a, ya)
    assert clf.n_prototypes_ <= 160  # against KNN's 3000 rows
    assert (clf.predict(b) == yb).mean() >= 0.97 * knn


def test_deterministic_and_inputs_agree():
    X, y = data(1500)
    ref = FastKMeansClassifier(k_init=5, finetune_epochs=2, learning_rate=0.01, device="cpu", random_state=3).fit(X, y)
    again = FastKMeansClassifier(k_init=5, finetune_epochs=2, learning_rate=0.01, device="cpu", random_state=3).fit(X, y)
    np.testing.assert_array_equal(ref.prototypes_, again.prototypes_)
    tensor = FastKMeansClassifier(k_init=5, finetune_epochs=2, learning_rate=0.01, device="cpu",
                                  random_state=3).fit(torch.from_numpy(X), y)
    np.testing.assert_allclose(tensor.prototypes_, ref.prototypes_, rtol=1e-6, atol=1e-6)
    csr = FastKMeansClassifier(k_init=5, device="cpu", random_state=3).fit(sp.csr_matrix(X), y)
    dense = FastKMeansClassifier(k_init=5, device="cpu", random_state=3).fit(X, y)
    np.testing.assert_allclose(csr.prototypes_, dense.prototypes_, rtol=1e-6, atol=1e-6)
    out = ref.predict(torch.from_numpy(X[:10]))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), ref.predict(X[:10]))
    proba = ref.predict_proba(torch.from_numpy(X[:10]))
    assert isinstance(proba, torch.Tensor) and proba.shape == (10, 4)


def test_streaming_reaches_fit_quality():
    X, y = data(6000)
    a, b, ya, yb = X[:5000], X[5000:], y[:5000], y[5000:]
    fit = (FastKMeansClassifier(k_init=8, device="cpu", random_state=0).fit(a, ya).predict(b) == yb).mean()
    stream = FastKMeansClassifier(k_init=8, device="cpu", random_state=0)
    for _ in range(3):
        for lo in range(0, 5000, 500):
            stream.partial_fit(a[lo:lo + 500], ya[lo:lo + 500], classes=np.arange(4))
    assert (stream.predict(b) == yb).mean() >= fit - 0.02
    with pytest.raises(ValueError, match="not in classes_"):
        stream.partial_fit(a[:5], np.full(5, 9))


def test_finetuning_lowers_the_loss_and_range_test_leaves_model():
    X, y = data(2000)
    clf = FastKMeansClassifier(k_init=3, device="cpu", random_state=0).fit(X, y)
    before = clf.prototypes_.copy()
    lr = clf.find_learning_rate(X, y)
    assert 1e-4 <= lr <= 1.0
    np.testing.assert_array_equal(clf.prototypes_, before)
    clf.finetune(X, y, epochs=5, learning_rate=0.02)
    assert clf.finetune_history_[-1] < clf.finetune_history_[0]
    clf.finetune(X, y, epochs=30, learning_rate=0.02, early_stopping_rounds=2)
    assert len(clf.finetune_history_) <= 30
    for options in [{"negative_sampling": 1}, {"repulsion_factor": 0.5}, {"diversity_reg": 0.1, "l2_reg": 0.01}]:
        other = FastKMeansClassifier(k_init=3, device="cpu", random_state=0, finetune_epochs=2, learning_rate=0.02,
                                     **options).fit(X, y)
        assert np.isfinite(other.finetune_history_).all()
        assert (other.predict(X) == y).mean() > 0.5


def test_gradient_steps_stream():
    X, y = data(2000)
    clf = FastKMeansClassifier(k_init=3, device="cpu", random_state=0, learning_rate=0.02)
    with pytest.raises(ValueError, match="no prototypes yet"):
        clf.fit_batch(X[:100], y[:100], gradient_step=True, classes=np.arange(4))
    clf = FastKMeansClassifier(k_init=3, device="cpu", random_state=0, learning_rate=0.02)
    for lo in range(0, 2000, 500):
        clf.fit_batch(X[lo:lo + 500], y[lo:lo + 500], classes=np.arange(4))
    acc = (clf.predict(X) == y).mean()
    for _ in range(3):
        for lo in range(0, 2000, 250):
            clf.fit_batch(X[lo:lo + 250], y[lo:lo + 250], gradient_step=True)
    assert (clf.predict(X) == y).mean() >= acc - 0.01


def test_feature_mask_ignores_missing_coordinates():
    X, y = data(1000)
    mask = np.ones_like(X)
    mask[:, 0] = 0
    spoiled = X.copy()
    spoiled[:, 0] = 0.0  # padding: must neither pull prototypes nor change distances
    clf = FastKMeansClassifier(k_init=2, device="cpu", random_state=0)
    clf.fit_batch(spoiled, y, feature_mask=mask)
    clf.fit_batch(X, y)
    # The first coordinate of each prototype is the mean of the second batch's rows only.
    assert np.abs(clf.prototypes_[:, 0]).max() > 0.1
    d = cdist(spoiled[:50, 1:].astype(np.float64), clf.prototypes_[:, 1:].astype(np.float64), "sqeuclidean")
    proba = clf.predict_proba(spoiled[:50], feature_mask=mask[:50])
    np.testing.assert_array_equal(proba.argmax(1) >= 0, True)
    top = clf.prototype_groups_[d.argmin(1)]
    hard = FastKMeansClassifier(k_init=2, soft_type="hard", device="cpu", random_state=0)
    hard.fit_batch(spoiled, y, feature_mask=mask)
    hard.fit_batch(X, y)
    d = cdist(spoiled[:50, 1:].astype(np.float64), hard.prototypes_[:, 1:].astype(np.float64), "sqeuclidean")
    np.testing.assert_array_equal(hard.predict(spoiled[:50], feature_mask=mask[:50]), hard.prototype_groups_[d.argmin(1)])
    assert top.shape == (50,)
    with pytest.raises(ValueError, match="feature_mask has shape"):
        clf.predict(X[:5], feature_mask=mask[:4])


def test_auto_k_and_feature_weights():
    X, y = make_classification(n_samples=3000, n_features=20, n_informative=4, n_redundant=0, n_classes=3,
                               shuffle=False, random_state=0)  # the 4 informative features first
    clf = FastKMeansClassifier(k_init="auto", auto_feature_weights=True, device="cpu", random_state=0).fit(X, y)
    counts = np.bincount(clf.prototype_groups_)
    assert (counts >= 1).all() and (counts <= np.sqrt(np.bincount(y)) + 1).all()
    informative = clf.feature_weights_[:4].mean()
    assert informative > 2 * clf.feature_weights_[4:].mean()
    assert np.isclose(clf.feature_weights_.mean(), 1.0)


def test_half_precision_storage():
    X, y = data(1500)
    full = FastKMeansClassifier(k_init=5, device="cpu", random_state=0).fit(X, y)
    half = FastKMeansClassifier(k_init=5, dtype="float16", device="cpu", random_state=0).fit(X, y)
    bf16 = FastKMeansClassifier(k_init=5, dtype="bfloat16", device="cpu", random_state=0).fit(X, y)
    assert half.prototypes_.dtype == np.float16
    assert half.model_nbytes() < full.model_nbytes() and bf16.model_nbytes() == half.model_nbytes()
    np.testing.assert_allclose(half.prototypes_, full.prototypes_, rtol=1e-3, atol=1e-3)
    assert (half.predict(X) == full.predict(X)).mean() > 0.99
    assert (bf16.predict(X) == full.predict(X)).mean() > 0.97
