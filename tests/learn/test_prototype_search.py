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
