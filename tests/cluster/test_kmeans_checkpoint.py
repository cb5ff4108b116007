"""KMeans(checkpoint=...): a fit stopped after any committed iteration, or by a store failing in
the middle of one, ends when run again with the centroids of an uninterrupted fit, bit for bit;
locally and on S3 (moto)."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from mega_taxonomy import KMeans
from mega_taxonomy.errors import ConfigError, StorageError
from mega_taxonomy.storage import Checkpoints, Store

PARAMS = dict(n_clusters=12, random_state=4, tol=0, max_iter=9, device="cpu")


class Stop(Exception):
    """Stands for a process killed right after a commit."""


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(n_samples=4000, centers=12, n_features=6, cluster_std=4.0, random_state=1)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def reference(X):
    km = KMeans(**PARAMS).fit(X)
    assert km.n_iter_ == PARAMS["max_iter"]  # overlapping blobs: every iteration runs
    return km


def assert_same_fit(a, b):
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.counts_, b.counts_)
    assert a.n_iter_ == b.n_iter_ and a.inertia_ == b.inertia_


def stop_after_save(monkeypatch, n):
    """Raise Stop once the n-th checkpoint (0: the initial centroids) is committed."""
    save, calls = Checkpoints.save, []

    def stopping(self, *args, **kwargs):
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n + 1:
            raise Stop

    monkeypatch.setattr(Checkpoints, "save", stopping)


def test_without_checkpoint_nothing_changes(X, reference):
    assert KMeans(**PARAMS).get_params()["checkpoint"] is None
    assert_same_fit(reference, KMeans(**PARAMS, checkpoint=None).fit(X))


@pytest.mark.parametrize("after", [0, 1, 5, 9])
def test_stopped_after_a_commit_resumes_to_the_same_centroids(X, reference, tmp_path, monkeypatch, after):
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after_save(m, after)
        with pytest.raises(Stop):
            KMeans(**PARAMS, checkpoint=uri).fit(X)
    manifest = Store(uri).manifest()
    assert manifest["status"] == "fitting" and manifest["meta"]["checkpoint"]["iteration"] == after
    resumed = KMeans(**PARAMS, checkpoint=uri).fit(X)
    assert_same_fit(reference, resumed)
    store = Store(uri)
    assert store.manifest()["status"] == "done"
    assert store.listdir("checkpoints") == ["checkpoints/level-00/centroids.npy"]  # iterations' files deleted


def test_resumed_runs_only_the_iterations_left(X, reference, tmp_path, monkeypatch):
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after_save(m, 6)
        with pytest.raises(Stop):
            KMeans(**PARAMS, checkpoint=uri).fit(X)
    saved, save = [], Checkpoints.save

    def recording(self, stage, iteration, *args, **kwargs):
        saved.append(iteration)
        save(self, stage, iteration, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", recording)
    KMeans(**PARAMS, checkpoint=uri).fit(X)
    assert saved == [7, 8, 9]


@pytest.mark.parametrize("failing_put", [1, 4, 7])
def test_a_store_failing_mid_checkpoint_resumes_to_the_same_centroids(X, reference, tmp_path, monkeypatch,
                                                                      failing_put):
    """The n-th array write fails (a full disk, a lost connection): the commit before stands."""
    uri = str(tmp_path / "ckpt")
    put, calls = Store.put_array, []

    def failing(self, name, array):
        calls.append(name)
        if len(calls) == failing_put:
            raise StorageError(f"{name}: no space left")
        return put(self, name, array)

    with monkeypatch.context() as m:
        m.setattr(Store, "put_array", failing)
        with pytest.raises(StorageError, match="no space left"):
            KMeans(**PARAMS, checkpoint=uri).fit(X)
    assert_same_fit(reference, KMeans(**PARAMS, checkpoint=uri).fit(X))


def test_a_converged_checkpoint_is_not_iterated_again(X, tmp_path, monkeypatch):
    """With tol > 0 a fit stopped right after its converged iteration does not run one more
    (which would move the centroids here: the labels still change at this tol)."""
    params = {**PARAMS, "tol": 1e-2, "max_iter": 100}
    reference = KMeans(**params).fit(X)
    assert reference.n_iter_ < 100
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after_save(m, reference.n_iter_)
        with pytest.raises(Stop):
            KMeans(**params, checkpoint=uri).fit(X)
    assert_same_fit(reference, KMeans(**params, checkpoint=uri).fit(X))


def test_a_finished_fit_is_taken_from_its_checkpoint(X, reference, tmp_path, monkeypatch):
    uri = str(tmp_path / "ckpt")
    KMeans(**PARAMS, checkpoint=uri).fit(X)
    monkeypatch.setattr(Checkpoints, "save", lambda *a, **k: pytest.fail("a finished fit iterated again"))
    assert_same_fit(reference, KMeans(**PARAMS, checkpoint=uri).fit(X))


def test_other_parameters_or_data_are_refused(X, tmp_path):
    uri = str(tmp_path / "ckpt")
    KMeans(**PARAMS, checkpoint=uri).fit(X)
    with pytest.raises(ConfigError, match="max_iter"):
        KMeans(**{**PARAMS, "max_iter": 10}, checkpoint=uri).fit(X)
    with pytest.raises(ConfigError, match="input"):
        KMeans(**PARAMS, checkpoint=uri).fit(X[:-1])
    with pytest.raises(ConfigError, match="init"):
        KMeans(**{**PARAMS, "init": X[:12]}, checkpoint=uri).fit(X)
    Store(tmp_path / "other").commit(kind="taxonomy", params={}, status="done")
    with pytest.raises(StorageError, match="not a kmeans-fit"):
        KMeans(**PARAMS, checkpoint=str(tmp_path / "other")).fit(X)


def test_streamed_input_resumes_too(X, reference, tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    np.save(path, X)
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after_save(m, 3)
        with pytest.raises(Stop):
            KMeans(**PARAMS, checkpoint=uri).fit(str(path))
    resumed = KMeans(**PARAMS, checkpoint=uri).fit(str(path))
    np.testing.assert_array_equal(reference.cluster_centers_, resumed.cluster_centers_)
    assert resumed.n_iter_ == reference.n_iter_ and not hasattr(resumed, "labels_")


@pytest.mark.s3
def test_an_s3_checkpoint_resumes_to_the_same_centroids(X, reference, s3_bucket, monkeypatch):
    bucket, options = s3_bucket
    uri = f"{bucket}/kmeans"
    with monkeypatch.context() as m:
        stop_after_save(m, 4)
        with pytest.raises(Stop):
            KMeans(**PARAMS, checkpoint=uri, storage_options=options).fit(X)
    assert Store(uri, storage_options=options).manifest()["meta"]["checkpoint"]["iteration"] == 4
    resumed = KMeans(**PARAMS, checkpoint=uri, storage_options=options).fit(X)
    assert_same_fit(reference, resumed)
    assert Store(uri, storage_options=options).listdir("checkpoints") == ["checkpoints/level-00/centroids.npy"]


def test_a_bfloat16_tensors_fit_checkpoints_and_resumes(X, tmp_path, monkeypatch):
    """The checkpoint's fingerprint names the input's dtype: bfloat16, which numpy cannot name,
    failed there. Stopped and run again, the fit is the uninterrupted one."""
    torch = pytest.importorskip("torch")
    rows = torch.from_numpy(X).bfloat16()
    want = KMeans(**PARAMS).fit(rows)
    uri = str(tmp_path / "ckpt")
    with monkeypatch.context() as m:
        stop_after_save(m, 3)
        with pytest.raises(Stop):
            KMeans(**PARAMS, checkpoint=uri).fit(rows)
    assert Store(uri).manifest()["params"]["input"]["dtype"] == "bfloat16"
    assert_same_fit(KMeans(**PARAMS, checkpoint=uri).fit(rows), want)


def test_a_start_given_as_a_bfloat16_tensor_is_fingerprinted(X, tmp_path):
    """A start given as a tensor numpy cannot take (bfloat16; on the GPU, any): the fit and its
    checkpoint's fingerprint take it as the array of its values."""
    torch = pytest.importorskip("torch")
    init = torch.from_numpy(X[:12]).bfloat16()
    params = {**PARAMS, "random_state": None}
    want = KMeans(**params, init=init.float().numpy()).fit(X)
    assert_same_fit(KMeans(**params, init=init, checkpoint=str(tmp_path / "ckpt")).fit(X), want)
