"""The hook that commits a taxonomy level's iterations to the Store (``fitting.FitRun``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.device import host_arrays
from ..storage import Checkpoints


@dataclass
class IterationCheckpoint:
    """Lloyd's ``on_iteration`` hook in a level: commits the centroids after every iteration (and
    the penalties of the next pass: a function of the last pass; and a balancing round's offsets:
    its structure), then tells ``callback``. Picklable: on a collective runtime, the fit's rank 0
    runs it (``lloyd`` calls it where ``runtime.leader``)."""

    checkpoints: Checkpoints
    level: int
    round: int
    offsets: np.ndarray | None
    callback: object = None

    def __call__(self, iteration, centroids, shift, penalty=None):
        if not self.checkpoints.enabled:
            return
        fixed = None
        if self.round:
            fixed = {"offsets": self.offsets if self.offsets is not None else np.array([0, len(centroids)])}
        self.checkpoints.save(self.level, iteration, {"centroids": host_arrays(centroids)[0], "penalty": penalty},
                              round=self.round, fixed=fixed, info={"shift": shift})
        if self.callback is not None:
            self.callback({"event": "iteration", "level": self.level, "iteration": iteration, "round": self.round})
