"""IVFIndex against float64 brute force, FAISS's IndexIVFFlat, and its own rules of assignment."""

import numpy as np
import pytest
import torch

from mega_taxonomy.errors import ConfigError, DataError, StorageError
from mega_taxonomy.index import IVFIndex
from mega_taxonomy.index.quantizer import Quantizer
from mega_taxonomy.ops.gmm_estep import weighted_log_prob

RNG = np.random.default_rng(0)
# clustered rows, so lists mean something and borders exist
CENTERS = RNG.normal(scale=4, size=(12, 10))
X = (CENTERS[RNG.integers(0, 12, 1500)] + RNG.normal(size=(1500, 10))).astype(np.float32)
Q = (CENTERS[RNG.integers(0, 12, 60)] + RNG.normal(size=(60, 10))).astype(np.float32)


def brute_force(q, x, metric, k):
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "euclidean":
        full = ((q64[:, None] - x64[None]) ** 2).sum(-1)
    elif metric == "cosine":
        full = 1 - (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1,
                                                                                              keepdims=True)).T
    else:
        full = -q64 @ x64.T
    ids = np.argsort(full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, ids, 1), ids


@pytest.fixture(scope="module")
def indexes():
    """One trained, filled index per (quantizer, assignment, metric), built once."""
    out = {}
    for quantizer in ("kmeans", "gmm"):
        for assignment in ("single", "multi"):
            for metric in ("euclidean", "cosine", "inner_product"):
                index = IVFIndex(16, quantizer=quantizer, assignment=assignment, metric=metric, max_iter=10,
                                 gmm_iter=3)
                out[quantizer, assignment, metric] = index.train(X).add(X)
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("assignment", ["single", "multi"])
@pytest.mark.parametrize("quantizer", ["kmeans", "gmm"])
def test_probing_every_list_is_exact(indexes, quantizer, assignment, metric):
    index = indexes[quantizer, assignment, metric]
    d, i, stats = index.search(Q, 10, nprobe=16, return_stats=True)
    ref_d, ref_i = brute_force(Q, X, metric, 10)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-4)
    assert (i == ref_i).mean() > 0.99
    assert all(len(set(row)) == len(row) for row in i)  # never a duplicate
    assert (stats.coarse == 16).all() and (stats.probed == 16).all()
    assert (stats.fine == len(index.lists_)).all()  # every stored copy compared
    assert index.ntotal == len(X)
    if assignment == "multi":
        assert len(index.lists_) > len(X)  # some rows were stored twice
    else:
        assert len(index.lists_) == len(X)


@pytest.mark.parametrize("quantizer", ["kmeans", "gmm"])
def test_few_probes_rank_exactly_within_the_probed_lists(indexes, quantizer):
    index = indexes[quantizer, "multi", "euclidean"]
    d, i, stats = index.search(Q, 5, nprobe=2, return_stats=True)
    _, probes = index.quantizer_.search(Q, 2)
    lists = index.lists_
    for r in range(len(Q)):
        pos = np.concatenate([np.arange(lists.offsets[p], lists.offsets[p + 1]) for p in probes[r]])
        assert stats.fine[r] == len(pos)
        cand = np.unique(lists.ids[pos])
        ref_d, ref_i = brute_force(Q[r:r + 1], X[cand], "euclidean", 5)
        np.testing.assert_allclose(d[r], ref_d[0], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(i[r], cand[ref_i[0]])


def test_kmeans_single_matches_faiss_with_the_same_centroids(indexes):
    import faiss  # the test extra installs faiss-cpu: this reference is never skipped
    index = indexes["kmeans", "single", "euclidean"]
    quantizer = faiss.IndexFlatL2(10)
    fi = faiss.IndexIVFFlat(quantizer, 10, 16)
    fi.train(index.quantizer_.centroids)  # 16 rows for 16 lists: the centroids themselves
    quantizer.reset()
    quantizer.add(index.quantizer_.centroids)
    fi.add(X)
    fi.nprobe = 3
    ref_d, ref_i = fi.search(Q, 10)
    d, i = index.search(Q, 10, nprobe=3)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-3)
    assert (i == ref_i).mean() > 0.99


def test_empty_like_shares_the_quantizer(indexes):
    index = indexes["kmeans", "single", "euclidean"]
    spill = index.empty_like(assignment="multi", threshold=1.3).add(X)
    assert spill.quantizer_ is index.quantizer_ and spill.ntotal == len(X) and index.ntotal == len(X)
    assert len(spill.lists_) > len(indexes["kmeans", "multi", "euclidean"].lists_)  # a looser threshold
    with pytest.raises(ConfigError, match="metric"):
        index.empty_like(metric="cosine")


@pytest.mark.parametrize("quantizer", ["kmeans", "gmm"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
def test_the_device_probes_agree_with_the_host_probes(indexes, quantizer, metric):
    q = indexes[quantizer, "single", metric].quantizer_
    s, lists = q.search(Q, 4)
    s_t, lists_t = q.search_torch(torch.from_numpy(Q), 4)
    np.testing.assert_allclose(s_t.numpy(), s, rtol=1e-4, atol=1e-3)
    assert (lists_t.numpy() == lists).mean() > 0.98


def test_spilling_rule(indexes):
    index = indexes["kmeans", "multi", "euclidean"]
    scores, best = index.quantizer_.search(X, 2)
    spilled = scores[:, 1] <= 1.1 * scores[:, 0]
    copies = np.bincount(index.lists_.ids, minlength=len(X))
    np.testing.assert_array_equal(copies, 1 + spilled)
    labels = index.lists_.labels()
    for row in np.flatnonzero(spilled)[:20]:
        assert sorted(labels[index.lists_.ids == row]) == sorted(best[row])


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
def test_soar_rule_against_float64(indexes, metric):
    """assignment="soar": every row in its nearest list and in the other list of least
    |x - c|^2 + lambda <r, x - c>^2 / |r|^2 (all 16 lists are candidates here), scored in float64;
    exact at nprobe = nlist, each id once; and not the plain next-nearest list everywhere."""
    index = indexes["kmeans", "single", metric].empty_like(assignment="soar").add(X)
    x, c = X.astype(np.float64), index.quantizer_.centroids.astype(np.float64)
    if metric == "cosine":
        x, c = x / np.linalg.norm(x, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
    first = index.quantizer_.search(X, 1)[1][:, 0]
    r = x - c[first]
    diff = x[:, None, :] - c[None]
    loss = (diff ** 2).sum(-1) + np.einsum("nd,nkd->nk", r, diff) ** 2 / (r ** 2).sum(1, keepdims=True)
    loss[np.arange(len(X)), first] = np.inf
    second = loss.argmin(1)
    ordered = np.sort(loss, 1)
    clear = ordered[:, 1] - ordered[:, 0] > 1e-4 * (1 + ordered[:, 0])  # no float32 near-tie
    labels = index.lists_.labels()
    home = {(int(i), int(lst)) for i, lst in zip(index.lists_.ids, labels)}
    assert np.bincount(index.lists_.ids, minlength=len(X)).tolist() == [2] * len(X)
    assert all((r_, int(first[r_])) in home for r_ in range(len(X)))
    assert all((r_, int(second[r_])) in home for r_ in np.flatnonzero(clear))
    next_nearest = index.quantizer_.search(X, 2)[1][:, 1]
    assert (second != next_nearest).mean() > 0.05  # SOAR's second list is not plain spilling's
    d, i = index.search(Q, 10, nprobe=16)
    ref_d, ref_i = brute_force(Q, X, metric, 10)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-4)
    assert all(len(set(row)) == len(row) for row in i)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_grouped_coarse_search(indexes, metric, tmp_path):
    """coarse_probe: the lists grouped under about sqrt(nlist) centroids; probing every group gives
    the flat search's probes and answers, fewer groups probe only the lists of the groups nearest
    (scored exactly among them) and count the groups plus those lists as coarse distances; the
    groups are saved with the index."""
    flat = indexes["kmeans", "single", metric]
    grouped = flat.empty_like(coarse_probe=4).add(X)
    q = grouped.quantizer_
    d, i, stats = grouped.search(Q, 10, nprobe=3, return_stats=True)
    group_of, centroids = q.arrays["group_of"], q.arrays["group_centroids"]
    assert len(centroids) == 4 and sorted(set(group_of.tolist())) == [0, 1, 2, 3]  # sqrt(16) groups
    everything = q.search_grouped(Q, 3, 4)
    np.testing.assert_array_equal(everything[1], q.search(Q, 3)[1])
    assert (everything[2] == 4 + 16).all()
    _, probes, coarse = q.search_grouped(Q, 3, 1)
    nearest_group = Quantizer("kmeans", metric, {"centroids": centroids}).search(Q, 1)[1][:, 0]
    assert all(set(group_of[row[row >= 0]]) == {g} for row, g in zip(probes, nearest_group))
    np.testing.assert_array_equal(coarse, 4 + np.bincount(group_of, minlength=4)[nearest_group])
    ref = flat.search(Q, 10, nprobe=3)
    np.testing.assert_array_equal(i, ref[1])  # all 4 groups probed: the flat answers
    assert (stats.coarse == 20).all()
    grouped.save(tmp_path / "g")
    again = IVFIndex.load(tmp_path / "g")
    assert again.coarse_probe == 4 and np.array_equal(again.quantizer_.arrays["group_of"], group_of)


def test_soar_takes_kmeans_lists_only():
    with pytest.raises(ConfigError, match="soar"):
        IVFIndex(16, quantizer="gmm", assignment="soar")


def responsibilities(index, x):
    a = index.quantizer_.arrays
    lp = weighted_log_prob(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(a["weights"]),
                           torch.from_numpy(a["means"]), torch.from_numpy(np.sqrt(a["precisions"])), "diag")
    return torch.softmax(lp, 1).numpy()


def test_gmm_multi_assignment_follows_the_responsibilities(indexes):
    """gmm_probe="mean": a row's first list is its nearest mean, a second one the list of
    highest responsibility among the others when that is at least tau = 1/16."""
    index = indexes["gmm", "multi", "euclidean"]
    resp = responsibilities(index, X)
    means = index.quantizer_.arrays["means"]
    nearest = (((X[:, None].astype(np.float64) - means[None]) ** 2).sum(-1)).argmin(1)
    others = resp.copy()
    others[np.arange(len(X)), nearest] = -1
    second = others.max(1)
    copies = np.bincount(index.lists_.ids, minlength=len(X))
    near_edge = np.abs(second - 1 / 16) < 1e-4
    assert ((copies == 1 + (second >= 1 / 16)) | near_edge).all()
    assert (copies == 2).any() and (copies == 1).any()
    labels = index.lists_.labels()
    home = {(int(i), int(l)) for i, l in zip(index.lists_.ids, labels)}
    assert all((r, int(nearest[r])) in home for r in range(0, len(X), 7))
    assert all((r, int(others[r].argmax())) in home for r in np.flatnonzero(second >= 0.07)[:30])


def test_gmm_probed_by_likelihood():
    """gmm_probe="likelihood": lists and probes by responsibility; still exact at nprobe=nlist."""
    index = IVFIndex(16, quantizer="gmm", gmm_probe="likelihood", assignment="multi", max_iter=10, gmm_iter=3)
    index.train(X).add(X)
    resp = responsibilities(index, X)
    order = np.argsort(-resp, axis=1)
    second = np.take_along_axis(resp, order[:, 1:2], 1)[:, 0]
    copies = np.bincount(index.lists_.ids, minlength=len(X))
    assert ((copies == 1 + (second >= 1 / 16)) | (np.abs(second - 1 / 16) < 1e-4)).all()
    _, probes = index.quantizer_.search(Q, 3)
    np.testing.assert_array_equal(probes[:, 0], np.argmax(responsibilities(index, Q), 1))
    d, i = index.search(Q, 5, nprobe=16)
    ref_d, ref_i = brute_force(Q, X, "euclidean", 5)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-3)
    assert (i == ref_i).mean() > 0.98  # near-ties may swap
    with pytest.raises(ConfigError, match="gmm_probe"):
        index.empty_like(gmm_probe="mean")


def test_remove_reconstruct_and_padding():
    index = IVFIndex(8, assignment="multi", max_iter=5).train(X).add(X[:200], ids=np.arange(200) * 10)
    np.testing.assert_array_equal(index.reconstruct(30), X[3])
    np.testing.assert_array_equal(index.reconstruct([0, 1990]), X[[0, 199]])
    assert index.remove_ids([30, 40, 12345]) == 2
    assert index.ntotal == 198
    assert 30 not in index.lists_.ids and 40 not in index.lists_.ids
    with pytest.raises(KeyError, match="30"):
        index.reconstruct(30)
    d, i = index.search(X[3:4], 300, nprobe=8)
    assert (i >= 0).sum() == 198 and (i[0, 198:] == -1).all() and np.isinf(d[0, 198:]).all()
    assert 30 not in i
    assert index.bytes_per_vector > 4 * X.shape[1]


def test_add_streams_files_with_ids(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    index = IVFIndex(8, max_iter=5).train(X)
    index.add(str(path), ids=np.arange(len(X)) + 5)
    index.add(torch.from_numpy(Q))  # consecutive ids from ntotal
    assert index.ntotal == len(X) + len(Q)
    _, i = index.search(Q[:3], 1, nprobe=8)
    assert i[:, 0].tolist() == [len(X) + j for j in range(3)]
    d, i = index.search(torch.from_numpy(X[:2]), 1, nprobe=8)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float32
    assert isinstance(i, torch.Tensor) and i[:, 0].tolist() == [5, 6]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_save_load_round_trip(indexes, where, tmp_path, request):
    index = indexes["gmm", "multi", "cosine"]
    if where == "s3":
        bucket, options = request.getfixturevalue("s3_bucket")
        uri = f"{bucket}/ivf"
    else:
        uri, options = str(tmp_path / "ivf"), None
    index.save(uri, storage_options=options)
    loaded = IVFIndex.load(uri, storage_options=options)
    assert loaded.get_params() == index.get_params() and loaded.ntotal == index.ntotal
    for a, b in zip(loaded.search(Q, 5, nprobe=3), index.search(Q, 5, nprobe=3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(StorageError, match="no IVF index"):
        IVFIndex.load(str(tmp_path / "nothing"))


def test_bad_input():
    with pytest.raises(ConfigError, match="quantizer"):
        IVFIndex(8, quantizer="pq")
    with pytest.raises(ConfigError, match="metric"):
        IVFIndex(8, metric="l1")
    with pytest.raises(ConfigError, match="gmm_probe"):
        IVFIndex(8, quantizer="gmm", gmm_probe="distance")
    with pytest.raises(ConfigError, match="not trained"):
        IVFIndex(8).add(X)
    with pytest.raises(ConfigError, match="at least nlist"):
        IVFIndex(8).train(X[:5])
    index = IVFIndex(8, max_iter=5).train(X)
    with pytest.raises(DataError, match="dimension 3"):
        index.add(np.zeros((4, 3), np.float32))
    with pytest.raises(DataError, match="shape"):
        index.search(np.zeros((4, 3), np.float32))
    bad = X[:4].copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="row 2"):
        index.add(bad)
    with pytest.raises(DataError, match="row 2"):
        index.search(bad)
