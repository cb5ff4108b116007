"""Retry with exponential backoff for transient storage errors (a dropped connection, a timeout,
a throttled request), counted so that runtimes can report how often it happened.

Object stores fail transiently at scale: over the thousands of reads and writes of a fit, a few
requests time out or are throttled, and failing the whole fit for one of them would be absurd.
Errors that say something about the request itself (no such file, no permission, bad data) are
not retried: retrying cannot fix them, and it would only hide them for a while.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from mega_taxonomy.errors import DataError, StorageError

logger = logging.getLogger(__name__)

ATTEMPTS = 5
"""Tries in all (the first one included)."""
BASE_DELAY = 0.1
"""Seconds before the first retry; doubled at every retry, with jitter, up to MAX_DELAY."""
MAX_DELAY = 5.0

_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_count = 0
_lock = threading.Lock()


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may succeed: connection and timeout errors, and I/O errors other than
    missing files and refused permissions. Our own wrappers (StorageError, DataError) are transient
    when what they wrap is."""
    if isinstance(exc, (StorageError, DataError)):
        cause = exc.__cause__
        return cause is not None and is_transient(cause)
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def retries() -> int:
    """Retries made so far by this process (every call site together)."""
    return _count


def retry(fn, *args, what: str = "storage operation", attempts: int | None = None, **kwargs):
    """``fn(*args, **kwargs)``, tried again after a transient error, with backoff.

    Every retry logs a warning (the error's type and message, never its arguments: they may hold
    credentials) and counts in :func:`retries`. The last error, or any non-transient one, is raised.

    Examples
    --------
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionError("connection reset")
    ...     return "ok"
    >>> before = retries()
    >>> retry(flaky, what="doc example")
    'ok'
    >>> retries() - before
    2
    """
    global _count
    attempts = ATTEMPTS if attempts is None else attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            with _lock:
                _count += 1
            logger.warning("%s failed (%s: %s); retry %d of %d in %.2f s", what, type(exc).__name__, exc,
                           attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
