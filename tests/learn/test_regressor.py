"""FastKMeansRegressor against a float64 brute force of its blend, KNN, and itself streamed."""

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist
from sklearn.datasets import make_regression
from sklearn.neighbors import KNeighborsRegressor

from mega_taxonomy import FastKMeansRegressor


def data(n=2000, targets=1, seed=0):
    X, y = make_regression(n_samples=n, n_features=6, n_informative=6, n_targets=targets, noise=5.0,
                           random_state=seed)
    y = np.sin(y / 150.0) * 10  # not linear: what local models are for
    return X.astype(np.float32), y


def test_prediction_is_the_blend_of_prototype_targets():
    X, y = data()
    reg = FastKMeansRegressor(k_targets=5, k_features=4, top_k=6, temperature=0.5, device="cpu",
                              random_state=0).fit(X, y)
    d = cdist(X[:200].astype(np.float64), reg.prototypes_.astype(np.float64), "sqeuclidean")
    idx = np.argsort(d, 1, kind="stable")[:, :6]
    z = -np.take_along_axis(d, idx, 1) / (0.5 * reg.distance_scale_)
    w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(reg.predict(X[:200]), (w * reg.prototype_targets_[idx]).sum(1), rtol=1e-6, atol=1e-6)
    assert len(np.unique(reg.prototype_groups_)) == 5


def test_hard_targets_are_means_of_their_rows():
    X, y = data()
    reg = FastKMeansRegressor(k_targets=3, k_features=3, target_assignment="hard", soft_type="hard", device="cpu",
                              random_state=0).fit(X, y)
    bucket_of_row = np.abs(((y - reg.y_mean_[0]) / reg.y_scale_[0])[:, None]
                           - (reg.target_centers_[:, 0] - reg.y_mean_[0]) / reg.y_scale_[0]).argmin(1)
    d = cdist(X.astype(np.float64), reg.prototypes_.astype(np.float64), "sqeuclidean")
    d[reg.prototype_groups_[None, :] != bucket_of_row[:, None]] = np.inf
    owner = d.argmin(1)
    for p in np.unique(owner):
        np.testing.assert_allclose(reg.prototype_targets_[p], y[owner == p].mean(), rtol=1e-5, atol=1e-6)


def test_beats_knn_and_streams():
    X, y = data(3000)
    a, b, ya, yb = X[:2500], X[2500:], y[:2500], y[2500:]

    def r2(pred):
        return 1 - ((pred - yb) ** 2).sum() / ((yb - yb.mean()) ** 2).sum()

    knn = r2(KNeighborsRegressor(n_neighbors=10, weights="distance").fit(a, ya).predict(b))
    ours = r2(FastKMeansRegressor(device="cpu", random_state=0).fit(a, ya).predict(b))
    assert ours >= knn - 0.02
    stream = FastKMeansRegressor(device="cpu", random_state=0)
    for _ in range(2):
        for lo in range(0, 2500, 500):
            stream.partial_fit(a[lo:lo + 500], ya[lo:lo + 500])
    assert r2(stream.predict(b)) >= ours - 0.1


def test_multi_output_tensor_and_sparse():
    X, y = data(1500, targets=2)
    reg = FastKMeansRegressor(k_targets=6, k_features=3, finetune_epochs=3, learning_rate=0.01, device="cpu",
                              random_state=1).fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == (1500, 2) and reg.prototype_targets_.shape == (reg.n_prototypes_, 2)
    assert reg.finetune_history_[-1] <= reg.finetune_history_[0]
    t = reg.predict(torch.from_numpy(X))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), pred)
    s = FastKMeansRegressor(k_targets=6, k_features=3, device="cpu", random_state=1).fit(sp.csr_matrix(X), y)
    d = FastKMeansRegressor(k_targets=6, k_features=3, device="cpu", random_state=1).fit(X, y)
    np.testing.assert_allclose(s.predict(X), d.predict(X), rtol=1e-5, atol=1e-5)
