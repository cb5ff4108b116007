"""storage.Checkpoints: fresh names per iteration, the manifest committed last, old files deleted
after it; what a round fixes carried; completed stages; the fingerprint; locally and on S3."""

import numpy as np
import pytest

from mega_taxonomy.errors import ConfigError, StorageError
from mega_taxonomy.storage import Checkpoints, Store
from mega_taxonomy.storage.schema import checkpoint_file


def reopen(uri, options, kind="fit", params=None):
    return Checkpoints(Store(uri, storage_options=options), kind, params or {"k": 3})


def test_a_fresh_store_has_no_resume_point(location):
    ckpt = reopen(*location)
    assert ckpt.resume_point() is None and not ckpt.done and ckpt.status is None


def test_each_iteration_replaces_the_last(location):
    uri, options = location
    ckpt = reopen(uri, options)
    for it in range(3):
        ckpt.save(0, it, {"centroids": np.full((2, 2), it, np.float32), "penalty": None}, info={"shift": it / 2})
    store = Store(uri, storage_options=options)
    assert store.listdir("checkpoints") == [checkpoint_file(0, "centroids", round=0, iteration=2)]
    point = reopen(uri, options).resume_point()
    assert (point.stage, point.iteration, point.round, point.info) == (0, 2, 0, {"shift": 1.0})
    assert list(point.arrays) == ["centroids"]
    np.testing.assert_array_equal(point.arrays["centroids"], np.full((2, 2), 2, np.float32))


def test_a_failed_write_leaves_the_last_commit_whole(tmp_path, monkeypatch):
    uri = str(tmp_path / "store")
    ckpt = reopen(uri, None)
    ckpt.save(1, 4, {"centroids": np.ones(3)})
    put = Store.put_array

    def failing(self, name, array):
        if "penalty" in name:
            raise StorageError("disk full")
        return put(self, name, array)

    monkeypatch.setattr(Store, "put_array", failing)
    with pytest.raises(StorageError):
        ckpt.save(1, 5, {"centroids": np.zeros(3), "penalty": np.zeros(3)})
    point = reopen(uri, None).resume_point()
    assert point.iteration == 4
    np.testing.assert_array_equal(point.arrays["centroids"], np.ones(3))


def test_what_a_round_fixes_is_written_once_and_carried(tmp_path):
    uri = str(tmp_path / "store")
    ckpt = reopen(uri, None)
    ckpt.save(2, 0, {"centroids": np.ones(2)}, round=1, fixed={"offsets": np.array([0, 2])})
    ckpt.save(2, 1, {"centroids": np.ones(2)}, round=1, fixed={"offsets": np.array([9, 9])})  # carried, not rewritten
    point = reopen(uri, None).resume_point()
    np.testing.assert_array_equal(point.arrays["offsets"], [0, 2])
    ckpt.save(2, 0, {"centroids": np.ones(2)}, round=2, fixed={"offsets": np.array([0, 1, 2])})
    names = Store(uri).listdir("checkpoints")
    assert names == [checkpoint_file(2, "centroids", round=2, iteration=0), checkpoint_file(2, "offsets", round=2)]


def test_complete_then_clear(tmp_path):
    uri = str(tmp_path / "store")
    ckpt = reopen(uri, None)
    ckpt.save(0, 3, {"centroids": np.ones(2)})
    ckpt.complete(0, {"centroids": np.zeros(2), "penalty": None}, levels=[{"n_nodes": 2}])
    again = reopen(uri, None)
    assert again.resume_point() is None and again.meta["levels"] == [{"n_nodes": 2}]
    arrays = again.completed(0, ["centroids", "penalty"])
    np.testing.assert_array_equal(arrays["centroids"], np.zeros(2))
    assert arrays["penalty"] is None
    assert Store(uri).listdir("checkpoints") == [checkpoint_file(0, "centroids")]
    again.clear([0])
    again.commit("done")
    assert Store(uri).listdir("checkpoints") == [] and reopen(uri, None).done


def test_other_parameters_or_kind_are_refused(tmp_path):
    uri = str(tmp_path / "store")
    reopen(uri, None, params={"k": 3, "seed": 1, "shape": (2, 3)}).save(0, 0, {"c": np.ones(1)})
    reopen(uri, None, params={"k": 3, "seed": 1, "shape": [2, 3]})  # tuples come back from JSON as lists
    with pytest.raises(ConfigError, match=r"other parameters \(k, seed\); use another store"):
        reopen(uri, None, params={"k": 4, "shape": [2, 3]})
    with pytest.raises(StorageError, match="holds a 'fit', not a taxonomy"):
        reopen(uri, None, kind="taxonomy", params={"k": 3, "seed": 1, "shape": [2, 3]})


def test_without_a_store_nothing_is_written_and_meta_is_kept():
    ckpt = Checkpoints(None, "fit", {"k": 3})
    ckpt.save(0, 1, {"centroids": np.ones(2)})
    assert ckpt.resume_point() is None
    ckpt.complete(0, {"centroids": np.ones(2)}, passes=4)
    assert ckpt.meta == {"checkpoint": None, "passes": 4} and not ckpt.enabled


def test_a_checkpoint_record_of_the_earlier_layout_is_read(tmp_path):
    """An interrupted taxonomy fit of the version before goes on: its record names its files."""
    store = Store(tmp_path / "store")
    store.put_array("checkpoints/level-01/round-1-iter-0003.npy", np.ones(2))
    store.put_array("checkpoints/level-01/round-1-offsets.npy", np.array([0, 2]))
    old = {"level": 1, "iteration": 3, "file": "checkpoints/level-01/round-1-iter-0003.npy", "shift": 0.5,
           "round": 1, "offsets": "checkpoints/level-01/round-1-offsets.npy", "penalty": None}
    store.commit(kind="fit", params={"k": 3}, status="fitting", levels=[{}], checkpoint=old)
    ckpt = reopen(tmp_path / "store", None)
    point = ckpt.resume_point()
    assert (point.stage, point.iteration, point.round, point.info) == (1, 3, 1, {"shift": 0.5})
    assert sorted(point.arrays) == ["centroids", "offsets"]
    ckpt.save(1, 4, {"centroids": np.zeros(2)}, round=1, fixed={"offsets": np.array([7])})
    assert Store(tmp_path / "store").listdir("checkpoints") == [checkpoint_file(1, "centroids", round=1, iteration=4),
                                                                "checkpoints/level-01/round-1-offsets.npy"]
