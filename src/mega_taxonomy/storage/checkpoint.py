"""Checkpoints of a resumable iterative fit, kept in a Store.

A fit of any kind (a taxonomy's levels, a k-means; next Gaussian mixtures, IVF lists, a table's
build) runs as *stages* (a taxonomy's levels; a flat fit has the one stage 0), each stage as
*iterations*, in *rounds* (a balancing round starts a stage's iterations again on a new
structure). After an iteration the fit saves the arrays it would need to go on (centroids, the
next pass's penalties) and, once a round, what the round fixes (its offsets); a completed stage
keeps its final arrays. A run started again with the same parameters asks for the resume point
and goes on from there; a finished one finds its status "done".

Why it is safe (STYLE.md, rule 10): every iteration writes fresh names (``storage/schema.py``,
``checkpoint_file``), then commits the manifest, which is the one commit point, and only then
are the previous checkpoint's files removed (``Store.delete``). A crash anywhere leaves the last
committed checkpoint whole: locally and on object stores alike, where there is no atomic rename.
The manifest's parameters are the fit's fingerprint: a store written with other parameters is
refused, never mixed. The protocol is the manifest's ``meta["checkpoint"]``::

    {"stage": 1, "iteration": 4, "round": 0, "files": {"centroids": "checkpoints/level-01/..."},
     "info": {"shift": 0.25}}

the rest of ``meta`` belongs to the fit (a taxonomy's per-level statistics, say).

Examples
--------
>>> import tempfile, numpy as np
>>> from mega_taxonomy.storage import Store
>>> store = Store(tempfile.mkdtemp())
>>> ckpt = Checkpoints(store, "example", {"k": 2})
>>> ckpt.resume_point() is None
True
>>> ckpt.save(0, 1, {"centroids": np.zeros((2, 3))}, info={"shift": 1.5})
>>> point = Checkpoints(Store(store.uri), "example", {"k": 2}).resume_point()
>>> point.stage, point.iteration, point.arrays["centroids"].shape, point.info
(0, 1, (2, 3), {'shift': 1.5})
>>> ckpt.complete(0, {"centroids": np.ones((2, 3))}, status="done")
>>> Checkpoints(Store(store.uri), "example", {"k": 2}).done
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, StorageError
from .schema import checkpoint_dir, checkpoint_file


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted fit goes on: after ``iteration`` of ``stage`` (in balancing ``round``),
    from ``arrays`` (name -> array, as saved) and ``info`` (the small values saved beside them)."""

    stage: int
    iteration: int
    round: int = 0
    arrays: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Checkpoints:
    """The checkpoints of one fit in ``store`` (None: a fit in memory, nothing written).

    Parameters
    ----------
    store : Store or None
    kind : str
        The manifest's kind ("taxonomy", "kmeans", ...); a store of another kind is refused.
    params : dict
        JSON-able parameters of the fit (with what identifies its input, e.g. rows and dim): the
        fingerprint. A store committed with other parameters is refused with a ConfigError
        naming them.
    where : str
        How the caller names the store in that error ("storage_uri", "checkpoint").

    Attributes
    ----------
    meta : dict
        The manifest's meta, committed with every checkpoint: ``meta["checkpoint"]`` is this
        module's; the fit keeps its own entries beside it (and may change them between commits).
    status : str or None
        The committed status ("fitting", "done", ...), None before the first commit.
    """

    def __init__(self, store, kind: str, params: dict, *, where: str = "store"):
        self.store, self.kind, self.params = store, kind, _plain(params)
        manifest = None if store is None else store.manifest()
        if manifest is not None:
            if manifest["kind"] != kind:
                raise StorageError(f"{store!r} holds a {manifest['kind']!r}, not a {kind}")
            if manifest["params"] != self.params:
                names = set(self.params) | set(manifest["params"])
                changed = sorted(k for k in names if manifest["params"].get(k) != self.params.get(k))
                raise ConfigError(f"{store!r} was fitted with other parameters ({', '.join(changed)}); "
                                  f"use another {where} or the same parameters")
        self.meta = {}
        self._take(manifest)

    def _take(self, manifest):
        self.status = None if manifest is None else manifest["status"]
        self.meta.clear()  # in place: callers may hold it
        self.meta.update({} if manifest is None else manifest["meta"])
        self.meta["checkpoint"] = _upgrade(self.meta.get("checkpoint"))

    def refresh(self) -> None:
        """Take the committed status and meta back from the store: after commits made by a copy of
        this object elsewhere (the leader of a collective fit, whose hooks write the checkpoints)."""
        if self.store is not None:
            self._take(self.store.manifest())

    @property
    def enabled(self) -> bool:
        """Whether anything is written (a store was given)."""
        return self.store is not None

    @property
    def done(self) -> bool:
        return self.status == "done"

    def resume_point(self) -> ResumePoint | None:
        """The last committed checkpoint, its arrays read back (verified); None when there is none
        (a fresh fit, or between stages: see :meth:`completed`)."""
        record = self.meta["checkpoint"]
        if record is None or self.store is None:
            return None
        arrays = {name: np.asarray(self.store.get_array(file)) for name, file in record["files"].items()}
        return ResumePoint(record["stage"], record["iteration"], record["round"], arrays, dict(record["info"]))

    def save(self, stage: int, iteration: int, arrays: dict, *, round: int = 0, fixed: dict | None = None,
             info: dict | None = None, **meta) -> None:
        """Commit the state after ``iteration`` of ``stage``: ``arrays`` (name -> array; None: none),
        under fresh names; ``fixed``, what the round fixes, written with the round's first
        checkpoint and carried by the later ones; ``info``, small JSON values; ``meta``, entries of
        the manifest's meta to update. Then the previous checkpoint's files not carried are deleted."""
        if self.store is None:
            return
        previous = self.meta["checkpoint"] or {"files": {}}
        same_round = previous.get("stage") == stage and previous.get("round") == round
        files = {}
        for name, array in arrays.items():
            if array is not None:
                files[name] = checkpoint_file(stage, name, round=round, iteration=iteration)
                self.store.put_array(files[name], array)
        for name, array in (fixed or {}).items():
            if array is None:
                continue
            if same_round and name in previous["files"]:
                files[name] = previous["files"][name]
            else:
                files[name] = checkpoint_file(stage, name, round=round)
                self.store.put_array(files[name], array)
        self._delete_except(previous["files"].values(), files.values())
        self.meta["checkpoint"] = {"stage": stage, "iteration": iteration, "round": round, "files": files,
                                   "info": dict(info or {})}
        self.commit(**meta)

    def complete(self, stage: int, arrays: dict, *, status: str = "fitting", **meta) -> None:
        """Commit ``stage`` as finished: its ``arrays`` (None: none) replace its checkpoint, and
        :meth:`completed` reads them back."""
        if self.store is not None:
            for name, array in arrays.items():
                if array is not None:
                    self.store.put_array(checkpoint_file(stage, name), array)
            self._delete_except((self.meta["checkpoint"] or {"files": {}})["files"].values(), ())
        self.meta["checkpoint"] = None
        self.commit(status, **meta)

    def completed(self, stage: int, names) -> dict:
        """The arrays ``names`` of a completed stage (None for one it did not save)."""
        there = set(self.store.listdir(checkpoint_dir(stage)))
        return {name: np.asarray(self.store.get_array(checkpoint_file(stage, name)))
                if checkpoint_file(stage, name) in there else None for name in names}

    def clear(self, stages) -> None:
        """Delete every file of ``stages`` (once what they held is saved elsewhere); takes effect
        with the next commit."""
        if self.store is None:
            return
        for stage in stages:
            for name in self.store.listdir(checkpoint_dir(stage)):
                self.store.delete(name)

    def commit(self, status: str = "fitting", **meta) -> None:
        """Update ``meta`` with ``meta`` and commit the manifest (nothing without a store)."""
        self.meta.update(meta)
        self.status = status
        if self.store is not None:
            self.store.commit(kind=self.kind, params=self.params, status=status, **self.meta)

    def _delete_except(self, old, kept):
        kept = set(kept)
        for name in old:
            if name not in kept:
                self.store.delete(name)


def _plain(params: dict) -> dict:
    """``params`` as the manifest's JSON gives them back (tuples as lists, numpy scalars as numbers)."""
    return json.loads(json.dumps(params, sort_keys=True, default=_numpy_value))


def _numpy_value(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"checkpoint parameters must be JSON-serializable, got {type(obj).__name__}")


def _upgrade(record: dict | None) -> dict | None:
    """A checkpoint record as this module writes it, from one written before it (a taxonomy's:
    ``level``, ``file`` for the centroids, ``penalty``, ``offsets``, ``shift``)."""
    if record is None or "files" in record:
        return record
    files = {"centroids": record["file"], "penalty": record.get("penalty"), "offsets": record.get("offsets")}
    return {"stage": record["level"], "iteration": record["iteration"], "round": record.get("round", 0),
            "files": {name: f for name, f in files.items() if f}, "info": {"shift": record.get("shift")}}
