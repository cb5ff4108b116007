"""The multi-label cuts (against scikit-learn's F1 on the raw outcomes; prequential counts of a
stream against counts made by hand), the growth of a stream by splitting (mass and mean kept; the
principal axis against numpy's eigendecomposition), and a stream with k_init="auto" against fit."""

import numpy as np
import torch
from sklearn.datasets import make_classification, make_multilabel_classification
from sklearn.metrics import f1_score

from mega_taxonomy import FastKMeansClassifier, FastMultiLabelKMeansClassifier
from mega_taxonomy.learn.prototypes import Prototypes, split_directions
from mega_taxonomy.learn.thresholds import GRID, micro_f1_thresholds, outcome_counts


def micro_f1(p, y, cuts):
    return f1_score(y, (p > cuts).astype(int), average="micro")


def test_cuts_are_a_coordinate_optimum_of_scikit_learns_micro_f1():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < [0.5, 0.3, 0.1, 0.05, 0.6]).astype(int)
    p = np.clip(0.35 * y + rng.random((400, 5)) * 0.6, 0, 1)  # informative but uncalibrated
    counts = outcome_counts(p, y)
    assert counts.sum() == 400 * 5 and (counts[:, :, 1].sum(1) == y.sum(0)).all()
    cuts = micro_f1_thresholds(counts)
    assert np.isin(cuts, GRID).all()
    best = micro_f1(p, y, cuts)
    assert best >= micro_f1(p, y, np.full(5, 0.5))
    for t in range(5):  # no single tag's cut on the grid does better
        for g in GRID:
            trial = cuts.copy()
            trial[t] = g
            assert micro_f1(p, y, trial) <= best + 1e-12


def test_auto_threshold_agrees_with_probabilities_and_streams_prequentially():
    X, Y = make_multilabel_classification(n_samples=1200, n_features=10, n_classes=5, random_state=3)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    clf = FastMultiLabelKMeansClassifier(k_init=4, device="cpu", random_state=0).fit(X, Y)
    p = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.predict(X), (p > 0.5).astype(int))
    np.testing.assert_array_equal(clf.decision_function(X) > 0, p > 0.5)
    raw = FastMultiLabelKMeansClassifier(k_init=4, threshold=0.5, device="cpu", random_state=0).fit(X, Y)
    np.testing.assert_array_equal(raw.prototypes_, clf.prototypes_)
    np.testing.assert_array_equal(clf.thresholds_, micro_f1_thresholds(outcome_counts(raw.predict_proba(X), Y)))
    # A stream counts every batch under the model before it: a twin with threshold=0.5 (the same
    # prototypes) gives the raw shares.
    stream = FastMultiLabelKMeansClassifier(k_init=4, device="cpu", random_state=0)
    twin = FastMultiLabelKMeansClassifier(k_init=4, threshold=0.5, device="cpu", random_state=0)
    counts = 0
    for lo in range(0, 1200, 300):
        if lo:
            counts = counts + outcome_counts(twin.predict_proba(X[lo:lo + 300]), Y[lo:lo + 300])
        stream.partial_fit(X[lo:lo + 300], Y[lo:lo + 300])
        twin.partial_fit(X[lo:lo + 300], Y[lo:lo + 300])
    np.testing.assert_array_equal(stream.thresholds_, micro_f1_thresholds(counts))


def test_split_keeps_mass_and_mean_along_the_principal_axis():
    rng = np.random.default_rng(1)
    axis = np.array([3.0, 4.0, 0.0]) / 5.0
    x = rng.normal(size=(4000, 3)) * 0.2 + rng.normal(size=(4000, 1)) * 2.0 * axis  # elongated
    existing = torch.zeros(1, 3, dtype=torch.float64)
    which, off = split_directions(torch.as_tensor(x), existing, 1, "euclidean")
    lam, vec = np.linalg.eigh(x.T @ x / len(x))  # second moments around the prototype at 0
    v = off[0].numpy() / np.linalg.norm(off[0].numpy())
    assert which.tolist() == [0] and abs(abs(v @ vec[:, -1]) - 1) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(off[0].numpy()), np.sqrt(2 * lam[-1] / np.pi), rtol=1e-6)
    p = Prototypes(torch.tensor([[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]), torch.tensor([0, 1]),
                   torch.tensor([8.0, 2.0], dtype=torch.float64), n_groups=2,
                   extra={"targets": torch.tensor([[7.0], [9.0]], dtype=torch.float64)})
    p.split(torch.tensor([0]), torch.tensor([[0.5, 0.0, 0.0]]))
    assert p.groups.tolist() == [0, 0, 1] and p.mass.tolist() == [4.0, 4.0, 2.0]
    np.testing.assert_allclose(p.vectors[:2].mean(0).numpy(), [1.0, 1.0, 1.0])
    assert p.extra["targets"][:, 0].tolist() == [7.0, 7.0, 9.0]


def test_auto_stream_grows_to_fits_size_and_quality():
    X, y = make_classification(n_samples=12_000, n_features=16, n_informative=10, n_classes=4,
                               n_clusters_per_class=3, class_sep=1.5, random_state=0)
    X = X.astype(np.float32)
    a, b, ya, yb = X[:10_000], X[10_000:], y[:10_000], y[10_000:]
    fit = FastKMeansClassifier(device="cpu", random_state=0).fit(a, ya)
    stream = FastKMeansClassifier(device="cpu", random_state=0)
    sizes = []
    for lo in range(0, 10_000, 1000):
        stream.partial_fit(a[lo:lo + 1000], ya[lo:lo + 1000], classes=np.arange(4))
        sizes.append(stream.n_prototypes_)
    assert sizes[-1] > 2 * sizes[0] and abs(sizes[-1] - fit.n_prototypes_) <= 0.15 * fit.n_prototypes_
    assert (stream.predict(b) == yb).mean() >= (fit.predict(b) == yb).mean() - 0.02
