"""Store: round trips, manifest, checksums, crash safety and atomicity, on a local dir and on S3."""

import hashlib
import io
import json
import logging
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mega_taxonomy.errors import StorageError
from mega_taxonomy.storage import FORMAT_VERSION, Store

SECRET = "sEcReT-do-not-leak-7f3a"


@pytest.fixture
def new_store(location):
    """Open a new Store object on the same location (a fresh one simulates a restart)."""
    uri, options = location
    return lambda: Store(uri, storage_options=options)


@pytest.fixture
def raw(location):
    """Backdoor to the files under the store, bypassing Store (to corrupt, forge or inspect)."""
    uri, options = location
    fs, root = fsspec.core.url_to_fs(uri, **(options or {}))

    class Raw:
        is_local = options is None

        def path(self, name):
            return f"{root}/{name}"

        def read(self, name):
            return fs.cat_file(self.path(name))

        def write(self, name, data):
            if self.is_local:
                os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
            fs.pipe_file(self.path(name), data)

        def remove(self, name):
            fs.rm_file(self.path(name))

        def exists(self, name):
            fs.invalidate_cache()
            return fs.exists(self.path(name))

    return Raw()


def flip_byte(raw, name, offset=-1):
    data = bytearray(raw.read(name))
    data[offset] ^= 0xFF
    raw.write(name, bytes(data))


def table():
    return pa.table({
        "id": pa.array([3, 1, 2], pa.int64()),
        "path": pa.array([[0, 4], [1, -1], [0, 5]], pa.list_(pa.int32())),
        "distance": pa.array([0.5, 1.5, 2.5], pa.float32()),
        "label": ["a", "b", None],
    })


def test_array_round_trip(new_store):
    # One store holds every case, so the S3 variant costs one commit, not one per case.
    arrays = {
        f"levels/{dtype}/{order}.npy": np.asarray(np.arange(35).reshape(5, 7) % 3, dtype=dtype, order=order)
        for dtype in ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"]
        for order in "CF"
    }
    arrays["levels/1d.npy"] = np.linspace(0, 1, 11)
    store = new_store()
    for name, array in arrays.items():
        store.put_array(name, array)
    for name, array in arrays.items():  # pending files, read by the same Store
        assert np.array_equal(store.get_array(name), array), name
    store.commit(kind="test", params={}, status="done")

    reader = new_store()
    for name, array in arrays.items():
        for mmap in (False, True):
            back = reader.get_array(name, mmap=mmap)
            assert back.dtype == array.dtype and back.shape == array.shape, name
            assert back.flags.f_contiguous == array.flags.f_contiguous, name
            assert back.flags.c_contiguous == array.flags.c_contiguous, name
            assert np.array_equal(back, array), name


def test_mmap_maps_local_files_and_reads_remote_ones(new_store, raw):
    store = new_store()
    store.put_array("a.npy", np.arange(4.0))
    assert isinstance(store.get_array("a.npy", mmap=True), np.memmap) == raw.is_local
    assert not isinstance(store.get_array("a.npy"), np.memmap)


def test_table_round_trip(new_store):
    store = new_store()
    store.put_table("assignments/part-00000.parquet", table())
    store.commit(kind="test", params={}, status="done")
    back = new_store().get_table("assignments/part-00000.parquet")
    assert back.equals(table())
    ids = new_store().get_table("assignments/part-00000.parquet", columns=["id"])
    assert ids.column_names == ["id"] and ids["id"].to_pylist() == [3, 1, 2]


def test_tables_written_one_after_the_other_read_as_one(new_store):
    store = new_store()
    parts = lambda: (table().slice(i, 1) for i in range(3))  # noqa: E731  (one table held at a time)
    entry = store.put_row_groups("members/level-0.parquet", table().schema, parts)
    assert entry["bytes"] > 0
    store.commit(kind="test", params={}, status="done")
    assert new_store().get_table("members/level-0.parquet").equals(table())


def test_manifest_content(new_store, raw):
    store = new_store()
    assert not store.exists() and store.manifest() is None
    store.put_array("levels/00/centroids.npy", np.ones((2, 3), np.float32))
    store.put_table("members/00.parquet", table())
    returned = store.commit(kind="taxonomy", params={"k": np.int64(4), "bf": [4, 2]}, status="fitting",
                            level=np.int32(0))

    manifest = new_store().manifest()
    assert new_store().exists() and manifest == returned
    assert manifest["kind"] == "taxonomy" and manifest["status"] == "fitting"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["params"] == {"k": 4, "bf": [4, 2]} and manifest["meta"] == {"level": 0}
    assert set(manifest["files"]) == {"levels/00/centroids.npy", "members/00.parquet"}
    for name, entry in manifest["files"].items():
        data = raw.read(name)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    text = raw.read("manifest.json").decode()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1)
    assert "T" in manifest["updated"] and manifest["updated"].endswith("+00:00")


def test_commit_merges_committed_pending_and_deleted(new_store):
    store = new_store()
    store.put_array("a.npy", np.zeros(2))
    store.put_array("b.npy", np.zeros(2))
    store.commit(kind="t", params={}, status="1")
    store = new_store()
    store.put_array("c.npy", np.zeros(2))
    store.delete("a.npy")
    manifest = store.commit(kind="t", params={}, status="2")
    assert sorted(manifest["files"]) == ["b.npy", "c.npy"]
    assert sorted(store.commit(kind="t", params={}, status="3")["files"]) == ["b.npy", "c.npy"]


def test_corruption_is_detected(new_store, raw, location):
    store = new_store()
    store.put_array("levels/00/centroids.npy", np.arange(100.0))
    store.put_table("t.parquet", table())
    store.commit(kind="t", params={}, status="done")
    flip_byte(raw, "levels/00/centroids.npy", offset=200)
    flip_byte(raw, "t.parquet", offset=10)

    store = new_store()
    array = "levels/00/centroids.npy"
    for name, read in [(array, lambda: store.get_array(array)),
                       (array, lambda: store.get_array(array, mmap=True)),
                       ("t.parquet", lambda: store.get_table("t.parquet"))]:
        with pytest.raises(StorageError, match="checksum mismatch") as info:
            read()
        assert f"{location[0]}: {name}:" in str(info.value)


def test_corruption_of_a_pending_file_is_detected(new_store, raw):
    store = new_store()
    store.put_array("a.npy", np.arange(10))
    flip_byte(raw, "a.npy")
    with pytest.raises(StorageError, match="a.npy: checksum mismatch"):
        store.get_array("a.npy")


def test_missing_file_is_reported(new_store, raw):
    store = new_store()
    store.put_array("a.npy", np.arange(10))
    store.commit(kind="t", params={}, status="done")
    raw.remove("a.npy")
    for mmap in (False, True):
        with pytest.raises(StorageError, match="a.npy: file missing"):
            new_store().get_array("a.npy", mmap=mmap)


def test_crash_before_commit_leaves_previous_commit(new_store):
    store = new_store()
    store.put_array("a.npy", np.arange(3))
    store.commit(kind="t", params={"it": 1}, status="fitting")
    store.put_array("b.npy", np.arange(5))
    store.put_table("t.parquet", table())
    del store  # crash: no commit

    restarted = new_store()
    with pytest.raises(StorageError, match="b.npy: not in manifest"):
        restarted.get_array("b.npy")
    with pytest.raises(StorageError, match="not in manifest"):
        restarted.get_table("t.parquet")
    assert restarted.listdir() == ["a.npy"] and restarted.manifest()["params"] == {"it": 1}
    assert np.array_equal(restarted.get_array("a.npy"), np.arange(3))

    restarted.put_array("b.npy", np.arange(7))  # the orphan is simply overwritten
    restarted.commit(kind="t", params={"it": 2}, status="done")
    assert np.array_equal(new_store().get_array("b.npy"), np.arange(7))


def test_overwrite(new_store):
    store = new_store()
    store.put_array("a.npy", np.arange(3))
    first = store.commit(kind="t", params={}, status="1")["files"]["a.npy"]
    store.put_array("a.npy", np.arange(4))
    assert np.array_equal(store.get_array("a.npy"), np.arange(4))  # pending wins over committed
    second = store.commit(kind="t", params={}, status="2")["files"]["a.npy"]
    assert first != second
    assert np.array_equal(new_store().get_array("a.npy"), np.arange(4))


def test_overwrite_then_crash_is_detected_not_silent(new_store):
    store = new_store()
    store.put_array("a.npy", np.arange(3))
    store.commit(kind="t", params={}, status="1")
    store.put_array("a.npy", np.arange(4))  # no commit: the manifest still has the old checksum
    with pytest.raises(StorageError, match="checksum mismatch"):
        new_store().get_array("a.npy")


def test_object_arrays_are_refused(new_store, raw):
    store = new_store()
    with pytest.raises(StorageError, match="pickle"):
        store.put_array("o.npy", np.array([{"a": 1}, None], dtype=object))
    assert store.listdir() == [] and not raw.exists("o.npy")


class _Trap:
    """Unpickling this creates ``flag``: the proof that pickle ran."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.mkdir, (self.flag,))


def test_pickled_npy_is_never_unpickled(new_store, raw, tmp_path):
    flag = str(tmp_path / "unpickled")
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Trap(flag)], dtype=object), allow_pickle=True)
    raw.write("evil.npy", buffer.getvalue())
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    raw.write("manifest.json", json.dumps({  # a forged but checksum-consistent manifest
        "kind": "t", "format_version": FORMAT_VERSION, "params": {}, "status": "done", "meta": {},
        "files": {"evil.npy": {"sha256": sha, "bytes": len(buffer.getvalue())}},
    }).encode())
    for mmap in (False, True):
        with pytest.raises(StorageError, match="evil.npy: not a readable .npy"):
            new_store().get_array("evil.npy", mmap=mmap)
    assert not os.path.exists(flag)


def test_listdir_and_delete(new_store, raw):
    store = new_store()
    for name in ["levels/00/centroids.npy", "levels/00/parent.npy", "levels/01/centroids.npy",
                 "levelsx.npy", "top.npy"]:
        store.put_array(name, np.arange(2))
    store.commit(kind="t", params={}, status="1")
    store.put_array("levels/01/parent.npy", np.arange(2))
    assert store.listdir() == ["levels/00/centroids.npy", "levels/00/parent.npy", "levels/01/centroids.npy",
                               "levels/01/parent.npy", "levelsx.npy", "top.npy"]
    assert store.listdir("levels/01") == store.listdir("levels/01/") == ["levels/01/centroids.npy",
                                                                         "levels/01/parent.npy"]
    assert store.listdir("levels") == store.listdir()[:4]
    assert store.listdir("top.npy") == ["top.npy"] and store.listdir("nothing") == []

    store.delete("levels/01/parent.npy")  # pending only
    store.delete("top.npy")  # committed
    assert "top.npy" not in store.listdir() and "levels/01/parent.npy" not in store.listdir()
    with pytest.raises(StorageError, match="top.npy: not in manifest"):
        store.get_array("top.npy")
    with pytest.raises(StorageError, match="not in manifest"):
        store.delete("top.npy")
    assert np.array_equal(new_store().get_array("top.npy"), np.arange(2))  # a crash now loses nothing

    store.commit(kind="t", params={}, status="2")
    assert "top.npy" not in new_store().listdir()
    assert not raw.exists("top.npy") and not raw.exists("levels/01/parent.npy")
    store.put_array("top.npy", np.arange(3))  # put after delete
    store.commit(kind="t", params={}, status="3")
    assert np.array_equal(new_store().get_array("top.npy"), np.arange(3))


@pytest.mark.parametrize("name", ["", "/abs.npy", "a//b.npy", "../up.npy", "a/./b.npy", ".hidden.npy",
                                  "a/.tmp/b.npy", "manifest.json"])
def test_invalid_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="invalid store name"):
        Store(tmp_path).put_array(name, np.arange(2))


def test_manifest_errors(new_store, raw):
    raw.write("manifest.json", b'{"kind": "t", "format_ver')
    with pytest.raises(StorageError, match="manifest.json is corrupt"):
        new_store().manifest()
    raw.write("manifest.json", b"[1, 2]")
    with pytest.raises(StorageError, match="manifest.json is corrupt"):
        new_store().manifest()
    raw.write("manifest.json", json.dumps({"format_version": FORMAT_VERSION + 1, "files": {}}).encode())
    with pytest.raises(StorageError, match="format_version 2; .* upgrade"):
        new_store().get_array("a.npy")


def fail_halfway(write, file_arg):
    """Wrap ``write`` so that it writes half of its output to its file argument, then fails."""

    def failing(*args, **kwargs):
        args = list(args)
        file, args[file_arg] = args[file_arg], io.BytesIO()
        write(*args, **kwargs)
        file.write(args[file_arg].getvalue()[: len(args[file_arg].getvalue()) // 2])
        raise OSError("disk full")

    return failing


def test_failed_write_keeps_previous_commit(new_store, raw, monkeypatch):
    store = new_store()
    store.put_array("a.npy", np.arange(1000))
    store.put_table("t.parquet", table())
    store.commit(kind="t", params={}, status="done")
    monkeypatch.setattr(np, "save", fail_halfway(np.save, file_arg=0))
    with pytest.raises(StorageError, match="cannot write a.npy: disk full"):
        store.put_array("a.npy", np.arange(2000))
    monkeypatch.setattr(pq, "write_table", fail_halfway(pq.write_table, file_arg=1))
    with pytest.raises(StorageError, match="cannot write t.parquet: disk full"):
        store.put_table("t.parquet", table().slice(1))
    monkeypatch.undo()

    for reader in (store, new_store()):
        assert np.array_equal(reader.get_array("a.npy"), np.arange(1000))
        assert reader.get_table("t.parquet").equals(table())
    assert store.listdir() == ["a.npy", "t.parquet"]


def test_local_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    store.put_array("levels/00/c.npy", np.arange(3))
    store.put_table("levels/00/t.parquet", table())
    store.commit(kind="t", params={}, status="1")
    monkeypatch.setattr(np, "save", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        store.put_array("levels/00/c.npy", np.arange(4))
    store.commit(kind="t", params={}, status="2")
    names = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "s")
                   for d, _, files in os.walk(tmp_path / "s") for f in files)
    assert names == ["levels/00/c.npy", "levels/00/t.parquet", "manifest.json"]


def test_credentials_never_leak(location, raw, caplog):
    uri, options = location
    options = {**(options or {}), "key": f"AKIA{SECRET}", "secret": SECRET} if options else {}
    store = Store(uri, storage_options=options or None)
    caplog.set_level(logging.DEBUG, logger="mega_taxonomy")
    store.put_array("a.npy", np.arange(3))
    store.commit(kind="t", params={"storage_options": options, "nested": {"aws_secret_access_key": SECRET},
                                   "password": SECRET}, status="done", token=SECRET)
    flip_byte(raw, "a.npy")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("mega_taxonomy")]
    assert ours  # the Store did log
    messages = [repr(store), *ours, raw.read("manifest.json").decode()]
    for read in (lambda: store.get_array("a.npy"), lambda: store.get_array("missing.npy"),
                 lambda: Store(uri, storage_options=options or None).put_array("x.npy", np.array([None]))):
        with pytest.raises(StorageError) as info:
            read()
        messages.append(str(info.value))
    assert not [m for m in messages if SECRET in m]
    assert store.manifest()["params"]["storage_options"] == "***"


def test_userinfo_in_uri_is_hidden():
    store = Store(f"s3://user:{SECRET}@bucket/prefix")
    assert SECRET not in repr(store) and "bucket/prefix" in repr(store)


def test_write_errors_are_storage_errors(location, tmp_path):
    uri, options = location
    if options is None:  # a file where the store needs a directory
        (tmp_path / "blocker").write_bytes(b"")
        uri = str(tmp_path / "blocker" / "store")
    else:
        uri = f"s3://no-such-bucket-{os.getpid()}/store"
    with pytest.raises(StorageError, match="cannot write a.npy"):
        Store(uri, storage_options=options).put_array("a.npy", np.arange(3))
