"""Store: the one owner of the on-disk schema (npy arrays, parquet tables, ``manifest.json``).

A Store is a directory (a local path or any fsspec URI such as ``s3://bucket/prefix``) whose
content is defined by ``manifest.json``: kind, format version, parameters, status, and a sha256
per file. Writing the manifest is the commit point. Data files are written first (each one
atomically: a temporary name then ``os.replace`` locally, an upload that is only published
when complete on object stores) and the manifest last, so a reader, or a job resumed after a
crash, sees either the previous commit or the new one, never a half-written state. Files put but
not committed are visible only to the Store object that put them. Every read is checked against
the recorded sha256, so a torn or tampered file raises instead of being used. Transient errors
of the filesystem (timeouts, dropped connections) are retried with backoff (``retry.py``).
Arrays are loaded with ``allow_pickle=False`` and tables are parquet: nothing read back is ever
unpickled.
"""

import copy
import hashlib
import io
import json
import logging
import os
import re
import uuid
from datetime import datetime, timezone

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import StorageError
from mega_taxonomy.storage.retry import retry
from mega_taxonomy.storage.schema import MANIFEST

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK = 8 << 20
# Keys whose values are never written to a manifest (e.g. an engine's params holding storage_options).
_SECRET_KEY = re.compile(
    r"storage_options|secret|password|credential|access_key|session_token|^key$|^token$", re.IGNORECASE
)


class Store:
    """Atomic, checksummed state under a local path or fsspec URI.

    Parameters
    ----------
    uri : str or path-like
        Root of the store: a local directory or an fsspec URI (``s3://bucket/prefix``, ...).
    storage_options : dict, default=None
        Passed to fsspec. Never logged, shown in ``repr`` or written to the manifest.

    Attributes
    ----------
    uri : str
        The root, as given (without a trailing slash).

    Notes
    -----
    Names are relative POSIX paths such as ``levels/00/centroids.npy``. ``put_*`` makes a file
    pending; ``commit`` writes ``manifest.json`` listing committed + pending - deleted files.
    ``delete`` hides a file at once and removes it after the next commit, so a crash before that
    commit leaves the previous commit whole. The manifest is read once and cached: a Store sees
    commits made through itself, not those made by other Store objects after its first read.

    Examples
    --------
    >>> import tempfile, numpy as np, pyarrow as pa
    >>> store = Store(tempfile.mkdtemp())
    >>> _ = store.put_array("levels/00/centroids.npy", np.eye(2, dtype=np.float32))
    >>> _ = store.put_table("assignments/part-00000.parquet", pa.table({"id": [7, 8]}))
    >>> store.commit(kind="taxonomy", params={"k": 2}, status="done")["files"].keys()
    dict_keys(['assignments/part-00000.parquet', 'levels/00/centroids.npy'])
    >>> store.get_array("levels/00/centroids.npy", mmap=True)[1]
    memmap([0., 1.], dtype=float32)
    >>> store.listdir("assignments")
    ['assignments/part-00000.parquet']
    """

    def __init__(self, uri, *, storage_options=None):
        self.uri = os.fspath(uri).rstrip("/") or "/"
        self._fs, self._root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self._local = isinstance(self._fs, LocalFileSystem)
        self._where = re.sub(r"//[^/@]*@", "//***@", self.uri)  # hide user:password@ in messages
        self._manifest, self._loaded = None, False
        self._pending, self._deleted = {}, set()

    def __repr__(self):
        return f"Store({self._where!r})"

    def exists(self):
        """Return whether a manifest has been committed (pending files do not count)."""
        return retry(self._fs.exists, self._path(MANIFEST), what=f"{self._where}: check {MANIFEST}")

    def manifest(self):
        """Return (a copy of) the committed manifest, or None when there is none.

        Raises
        ------
        StorageError
            If the manifest is not valid JSON, lacks its fields, or has a newer format_version.
        """
        if not self._loaded:
            try:
                text = retry(self._fs.cat_file, self._path(MANIFEST), what=f"{self._where}: read {MANIFEST}")
            except FileNotFoundError:
                return None
            self._manifest, self._loaded = self._parse(text), True
        return copy.deepcopy(self._manifest)

    def manifest_of(self, kind, what, *, status=None):
        """The committed manifest, of ``kind`` (and ``status`` where given); StorageError naming
        ``what`` a loader expected when the store holds nothing, or something else."""
        manifest = self.manifest()
        if manifest is None or manifest["kind"] != kind or (status is not None and manifest["status"] != status):
            raise StorageError(f"{self!r} holds no {what}")
        return manifest

    def put_array(self, name, array):
        """Write ``array`` (C or Fortran order) as ``.npy``; return its ``{"sha256", "bytes"}``."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise StorageError(f"{self._where}: {name}: object arrays would need pickle; refused")
        return self._put(name, lambda f: np.save(f, array, allow_pickle=False))

    def put_table(self, name, table):
        """Write a :class:`pyarrow.Table` as parquet; return its ``{"sha256", "bytes"}``."""
        return self._put(name, lambda f: pq.write_table(table, f))

    def put_row_groups(self, name, schema, tables):
        """Write parquet whose row groups are the tables of ``tables()`` (a callable, so that a
        retried write makes them again), written one at a time: a reader can then take one group
        without the rest (:meth:`open`). Returns ``{"sha256", "bytes"}``."""
        def serialize(f):
            # (no dictionary: pyarrow decodes a dictionary-encoded float16 column about 6x slower)
            with pq.ParquetWriter(f, schema, use_dictionary=False) as writer:
                for table in tables():
                    writer.write_table(table, row_group_size=max(len(table), 1))
        return self._put(name, serialize)

    def open(self, name):
        """A binary file object of ``name`` for reading part of it (row groups, say); unlike the
        ``get_*`` methods it is not verified against its checksum, which needs all of its bytes."""
        self._entry(name)  # raises if it is not there
        return retry(self._fs.open, self._path(name), "rb", what=f"{self._where}: open {name}")

    def get_array(self, name, *, mmap=False):
        """Read a verified array; ``mmap=True`` memory-maps local files (ignored for remote ones)."""
        if mmap and self._local:
            self._entry(name)
            try:
                with open(self._path(name), "rb") as f:  # verify by streaming, then map
                    sha = hashlib.sha256()
                    while chunk := f.read(_CHUNK):
                        sha.update(chunk)
            except FileNotFoundError as exc:
                raise StorageError(f"{self._where}: {name}: file missing") from exc
            self._verify(name, sha.hexdigest())
            source = self._path(name)
        else:
            source = io.BytesIO(self._read(name))
        try:
            return np.load(source, mmap_mode="r" if mmap and self._local else None, allow_pickle=False)
        except ValueError as exc:  # includes "Object arrays cannot be loaded when allow_pickle=False"
            raise StorageError(f"{self._where}: {name}: not a readable .npy array: {exc}") from exc

    def get_table(self, name, columns=None):
        """Read a verified parquet table, optionally only ``columns``."""
        data = self._read(name)
        try:
            return pq.read_table(pa.BufferReader(data), columns=columns)
        except pa.ArrowException as exc:
            raise StorageError(f"{self._where}: {name}: not a readable parquet table: {exc}") from exc

    def record(self, name, entry):
        """Make a file written by another Store object (a worker) pending here, from the
        ``{"sha256", "bytes"}`` its ``put_*`` returned; the file is verified when read."""
        self._pending[name] = dict(entry)
        self._deleted.discard(name)

    def delete(self, name):
        """Hide ``name`` now (StorageError if not visible); its file is removed after the next commit."""
        self._entry(name)  # raises if it is not there
        self._pending.pop(name, None)
        self._deleted.add(name)

    def listdir(self, prefix=""):
        """Return the sorted names (relative to the store root) of the visible files under ``prefix``."""
        prefix = prefix.strip("/")
        committed = (self.manifest() or {}).get("files", {})
        names = (set(committed) | set(self._pending)) - self._deleted
        return sorted(n for n in names if not prefix or n == prefix or n.startswith(prefix + "/"))

    def commit(self, *, kind, params, status, **meta):
        """Write ``manifest.json`` last, atomically; return the manifest written.

        ``params`` and ``meta`` must be JSON-serializable (numpy scalars and arrays are converted);
        values under credential-like keys (``storage_options``, ``secret``, ...) are redacted.
        """
        files = {**(self.manifest() or {}).get("files", {}), **self._pending}
        for name in self._deleted:
            files.pop(name, None)
        manifest = {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "params": _redact(params),
            "status": status,
            "files": files,
            "meta": _redact(meta),
            "updated": datetime.now(timezone.utc).isoformat(),
        }
        text = json.dumps(manifest, sort_keys=True, indent=1, default=_json_default).encode()
        retry(self._write, MANIFEST, lambda f: f.write(text), what=f"{self._where}: write {MANIFEST}")
        for name in self._deleted - set(files):  # the commit no longer needs them
            try:
                self._fs.rm_file(self._path(name))
            except FileNotFoundError:
                pass
        self._manifest, self._loaded = json.loads(text), True
        self._pending, self._deleted = {}, set()
        logger.info("%s: committed %d files, kind=%s status=%s", self._where, len(files), kind, status)
        return self.manifest()

    # -- internals ---------------------------------------------------------------------------

    def _path(self, name):
        return f"{self._root.rstrip('/')}/{name}"

    def _put(self, name, serialize):
        parts = name.split("/") if isinstance(name, str) else [""]
        if name == MANIFEST or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            # Dot names are reserved: temporary files start with "." and manifest.json is commit's.
            raise ValueError(f"invalid store name {name!r}: use a relative POSIX path, no dot parts")
        entry = retry(self._write, name, serialize, what=f"{self._where}: write {name}")
        self._pending[name] = entry
        self._deleted.discard(name)
        logger.debug("%s: put %s (%d bytes)", self._where, name, entry["bytes"])
        return entry

    def _write(self, name, serialize):
        """Write atomically what ``serialize(file)`` writes; hash while writing."""
        path = self._path(name)
        try:
            if self._local:
                # Same directory, so os.replace is an atomic rename on the same filesystem.
                folder, base = os.path.split(path)
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, f".{base}.tmp-{uuid.uuid4().hex}")
                try:
                    with open(tmp, "wb") as f:
                        serialize(out := _HashingWriter(f))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                    raise
            else:
                # autocommit=False: close() uploads, commit() publishes the object in one step, and
                # discard() drops a failed upload, so the previous object stays whole.
                f = self._fs.open(path, "wb", autocommit=False)
                try:
                    serialize(out := _HashingWriter(f))
                    f.close()
                except BaseException:
                    try:
                        f.close()
                    finally:
                        f.discard()
                    raise
                f.commit()
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"{self._where}: cannot write {name}: {exc}") from exc
        return {"sha256": out.sha.hexdigest(), "bytes": out.bytes}

    def _entry(self, name):
        if name in self._pending:
            return self._pending[name]
        entry = (self.manifest() or {}).get("files", {}).get(name)
        if entry is None or name in self._deleted:
            raise StorageError(f"{self._where}: {name}: not in manifest (never committed, or deleted)")
        return entry

    def _verify(self, name, sha256):
        expected = self._entry(name)["sha256"]
        if sha256 != expected:
            raise StorageError(
                f"{self._where}: {name}: checksum mismatch (manifest sha256 {expected}, file {sha256})"
            )

    def _read(self, name):
        self._entry(name)
        try:
            data = retry(self._fs.cat_file, self._path(name), what=f"{self._where}: read {name}")
        except FileNotFoundError as exc:
            raise StorageError(f"{self._where}: {name}: file missing") from exc
        self._verify(name, hashlib.sha256(data).hexdigest())
        return data

    def _parse(self, text):
        try:
            manifest = json.loads(text)
            version, files = manifest["format_version"], manifest["files"]
            if not all(isinstance(e["sha256"], str) for e in files.values()):
                raise TypeError("sha256 must be a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"{self._where}: {MANIFEST} is corrupt: {exc!r}") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StorageError(
                f"{self._where}: {MANIFEST} has format_version {version!r}; this mega_taxonomy reads "
                f"up to {FORMAT_VERSION}: upgrade it"
            )
        return manifest


class _HashingWriter:
    """A write-only file that forwards to ``file`` and hashes and counts the bytes on the way.

    ``closed``, ``tell`` and ``flush`` are what pyarrow needs to write into a Python file object.
    """

    closed = False

    def __init__(self, file):
        self._file, self.sha, self.bytes = file, hashlib.sha256(), 0

    def write(self, data):
        self._file.write(data)
        self.sha.update(data)
        self.bytes += memoryview(data).nbytes
        return memoryview(data).nbytes

    def tell(self):
        return self.bytes

    def flush(self):
        pass


def _redact(obj):
    if isinstance(obj, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else _redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_redact(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"manifest values must be JSON-serializable, got {type(obj).__name__}")
