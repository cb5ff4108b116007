"""Transient storage errors are retried with backoff, counted and logged; others are not retried."""

import logging

import numpy as np
import pytest

from mega_taxonomy.errors import DataError, StorageError
from mega_taxonomy.storage import Store, retry


class Flaky:
    """A filesystem whose named methods fail ``n`` times (each) before working."""

    def __init__(self, fs, methods, n, error=ConnectionError):
        self._fs, self._left, self._error = fs, dict.fromkeys(methods, n), error

    def __getattr__(self, name):
        attr = getattr(self._fs, name)
        if name not in self._left:
            return attr

        def flaky(*args, **kwargs):
            if self._left[name] > 0:
                self._left[name] -= 1
                raise self._error(f"{name}: connection reset by peer")
            return attr(*args, **kwargs)

        return flaky


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.001)


def test_store_retries_transient_errors_of_writes_and_reads(caplog):
    store = Store("memory://retry-test/store")
    store._fs = Flaky(store._fs, ["open", "cat_file"], n=2)
    before = retry.retries()
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.storage.retry"):
        store.put_array("a.npy", np.arange(5))
        store.commit(kind="test", params={}, status="done")
        fresh = Store("memory://retry-test/store")
        fresh._fs = Flaky(fresh._fs, ["cat_file"], n=3)
        np.testing.assert_array_equal(fresh.get_array("a.npy"), np.arange(5))
    # 2 failed opens (the array's write), 2 failed reads of the manifest (commit reads the previous
    # one), 3 failed reads of the manifest by the fresh Store
    assert retry.retries() - before == 7
    assert sum("retry" in r.getMessage() for r in caplog.records) == 7


def test_permanent_errors_are_not_retried():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("no such object")

    with pytest.raises(FileNotFoundError):
        retry.retry(missing)
    assert len(calls) == 1


def test_gives_up_after_the_last_attempt():
    store = Store("memory://retry-test/down")
    store._fs = Flaky(store._fs, ["open"], n=100, error=TimeoutError)
    with pytest.raises(StorageError):
        store.put_array("a.npy", np.arange(3))


@pytest.mark.parametrize("error,transient", [
    (ConnectionError("reset"), True), (TimeoutError("slow"), True), (OSError(5, "I/O error"), True),
    (FileNotFoundError("gone"), False), (PermissionError("no"), False), (ValueError("bad"), False),
    (DataError("corrupt"), False), (StorageError("checksum mismatch"), False),
])
def test_what_is_transient(error, transient):
    assert retry.is_transient(error) == transient


def test_wrapped_transient_errors_are_transient():
    try:
        try:
            raise ConnectionError("reset")
        except ConnectionError as exc:
            raise DataError("cannot read", file="s3://b/x.parquet") from exc
    except DataError as wrapped:
        assert retry.is_transient(wrapped)
