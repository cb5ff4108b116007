"""Prototype search: the inverted file against exact top-k (float64 brute force)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mega_taxonomy import FastKMeansClassifier
from mega_taxonomy.errors import ConfigError
from mega_taxonomy.learn.search import ExactSearcher, IndexSearcher


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_index_search_probing_every_list_is_exact(metric):
    rng = np.random.default_rng(0)
    protos = torch.as_tensor(rng.normal(size=(400, 8)), dtype=torch.float32)
    x = torch.as_tensor(rng.normal(size=(50, 8)), dtype=torch.float32)
    coarse = IndexSearcher(protos, metric, n_lists=20, n_probe=20)
    d, i = coarse.search(x, 5)
    scipy_metric = {"euclidean": "sqeuclidean", "cosine": "cosine"}[metric]
    ref = cdist(x.double().numpy(), protos.double().numpy(), scipy_metric)
    np.testing.assert_array_equal(i.numpy(), np.argsort(ref, 1, kind="stable")[:, :5])
    np.testing.assert_allclose(d.numpy(), np.sort(ref, 1)[:, :5], rtol=1e-4, atol=1e-4)
    _de, ie = ExactSearcher(protos, metric).search(x, 5)
    np.testing.assert_array_equal(ie.numpy(), i.numpy())


def test_index_path_in_a_classifier_with_many_classes():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(2000, 16)).astype(np.float32)
    y = np.repeat(np.arange(2000), 3)
    X = centers[y] + 0.05 * rng.normal(size=(6000, 16)).astype(np.float32)
    exact = FastKMeansClassifier(k_init=1, device="cpu", random_state=0).fit(X, y)
    index = FastKMeansClassifier(k_init=1, use_index=True, device="cpu", random_state=0).fit(X, y)
    np.testing.assert_array_equal(index.prototypes_, exact.prototypes_)
    agree = (index.predict(X) == exact.predict(X)).mean()
    assert agree >= 0.99 and (exact.predict(X) == y).mean() == 1.0


def test_index_search_needs_a_metric_the_index_knows():
    with pytest.raises(ConfigError, match="use_index"):
        IndexSearcher(torch.zeros(10, 2), "l1")


def test_index_probes_are_the_fewest_reaching_the_recall_target():
    from mega_taxonomy.learn.search import CALIBRATION_ROWS, RECALL_TARGET

    rng = np.random.default_rng(2)
    protos = rng.normal(size=(900, 12)).astype(np.float32)  # all of them sampled
    searcher = IndexSearcher(torch.as_tensor(protos), "euclidean", random_state=0)
    assert 1 <= searcher.n_probe <= searcher.index.nlist and CALIBRATION_ROWS >= len(protos)
    d = cdist(protos.astype(np.float64), protos.astype(np.float64), "sqeuclidean")
    np.fill_diagonal(d, np.inf)
    truth = d.argmin(1)  # the nearest other prototype, float64 brute force

    def recall(n_probe):
        found = searcher.index.search(protos, 2, nprobe=n_probe)[1]
        return ((found[:, 0] == truth) | (found[:, 1] == truth)).mean()

    assert recall(searcher.n_probe) >= RECALL_TARGET
    assert searcher.n_probe == 1 or recall(searcher.n_probe - 1) < RECALL_TARGET
