"""The multi-label classifier (per-tag sub-topologies, gap strategy, ASL finetuning) and the
clusterer (against scikit-learn's KMeans) on small data."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs, make_multilabel_classification
from sklearn.metrics import adjusted_rand_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

from mega_taxonomy import FastKMeansClusterer, FastMultiLabelKMeansClassifier
from mega_taxonomy.learn.multilabel import gap_cut


def test_multilabel_probability_is_positive_share_per_tag():
    X, Y = make_multilabel_classification(n_samples=800, n_features=10, n_classes=5, random_state=0)
    X = X.astype(np.float32)
    clf = FastMultiLabelKMeansClassifier(k_init=3, soft_type="mean", top_k=3, threshold=0.5, device="cpu",
                                         random_state=0).fit(X, Y)
    d = cdist(X[:100].astype(np.float64), clf.prototypes_.astype(np.float64), "sqeuclidean")
    tags = clf.prototype_groups_ // 2
    positive = clf.prototype_groups_ % 2 == 1
    expected = np.zeros((100, 5))
    for t in range(5):
        cols = np.flatnonzero(tags == t)
        near = cols[np.argsort(d[:, cols], 1, kind="stable")[:, :3]]
        expected[:, t] = positive[near].mean(1)
    np.testing.assert_allclose(clf.predict_proba(X[:100]), expected, atol=1e-9)
    np.testing.assert_array_equal(clf.predict(X[:100]), (expected > 0.5).astype(int))


def test_multilabel_quality_gap_and_finetuning():
    X, Y = make_multilabel_classification(n_samples=2500, n_features=20, n_classes=6, random_state=1)
    X = (X - X.mean(0)) / X.std(0)
    a, b, ya, yb = X[:2000], X[2000:], Y[:2000], Y[2000:]
    knn = f1_score(yb, KNeighborsClassifier().fit(a, ya).predict(b), average="micro")
    clf = FastMultiLabelKMeansClassifier(k_init=8, finetune_epochs=10, learning_rate=0.01, device="cpu",
                                         random_state=0).fit(a, ya)
    assert f1_score(yb, clf.predict(b), average="micro") >= knn - 0.02
    gap = clf.predict(b, strategy="gap")
    assert gap.shape == yb.shape and (gap.sum(1) >= 1).all()
    np.testing.assert_array_equal(gap, gap_cut(clf.predict_proba(b)))
    stream = FastMultiLabelKMeansClassifier(k_init=8, device="cpu", random_state=0)
    for lo in range(0, 2000, 400):
        stream.partial_fit(a[lo:lo + 400], ya[lo:lo + 400])
    assert f1_score(yb, stream.predict(b), average="micro") >= knn - 0.1
    with pytest.raises(ValueError, match="strategy"):
        clf.predict(b, strategy="top")


def test_gap_cut():
    p = np.array([[0.9, 0.85, 0.2, 0.1], [0.3, 0.2, 0.25, 0.9]])
    np.testing.assert_array_equal(gap_cut(p), [[1, 1, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_clusterer_against_scikit_learn(metric):
    X, _y = make_blobs(n_samples=3000, centers=6, n_features=8, random_state=2)
    X = X.astype(np.float32)
    ours = FastKMeansClusterer(n_clusters=6, metric=metric, device="cpu", random_state=0).fit(X)
    ref = SkKMeans(n_clusters=6, n_init=10, random_state=0).fit(X)
    assert adjusted_rand_score(ours.labels_, ref.labels_) > 0.99
    if metric == "euclidean":
        assert ours.inertia_ <= ref.inertia_ * 1.001
        np.testing.assert_allclose(ours.transform(X[:20]), cdist(X[:20], ours.cluster_centers_, "sqeuclidean"),
                                   rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), ours.labels_)
    stream = FastKMeansClusterer(n_clusters=6, metric=metric, device="cpu", random_state=0)
    for lo in range(0, 3000, 300):
        stream.partial_fit(X[lo:lo + 300])
    assert adjusted_rand_score(stream.predict(X), ref.labels_) > 0.95
    assert isinstance(ours.predict(torch.from_numpy(X[:5])), torch.Tensor)
