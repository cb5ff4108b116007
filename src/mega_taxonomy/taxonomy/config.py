"""The parameters of a taxonomy, grouped where they belong together, and checked in one place.

``TaxonomyEngine`` keeps its flat keywords (``balance_factor=...``, ``hnsw_ef=...``: the seed's
and every release's), and also takes the groups as values: ``balance=Balancing("split",
factor=1.5)``, ``router=Routing("hnsw", ef=128)``. A fit then runs from one frozen
:class:`FitConfig` (``fitting.FitRun``), never from the engine.

Examples
--------
>>> Balancing("split", factor=1.5)
Balancing(mode='split', factor=1.5, merge=0.1, rounds=3, strength=0.5)
>>> Routing("hnsw", ef=128).threshold
4096
>>> Balancing("split", merge=1.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
mega_taxonomy.errors.ConfigError: The 'merge' parameter of Balancing must be a float in the range [0, 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from numbers import Integral, Real

import numpy as np

from .._sklearn_compat import InvalidParameterError, Interval, StrOptions, validate_parameter_constraints
from ..errors import ConfigError
from ..ops import METRICS
from .levels import branching_list, sample_size_list

BALANCE_MODES = ("split", "penalty")
ROUTERS = ("exact", "hnsw")
CLUSTERERS = ("kmeans", "gmm")


def check_constraints(constraints: dict, params: dict, caller: str) -> None:
    """scikit-learn's parameter validation, raising the project's ConfigError (a ValueError)."""
    try:
        validate_parameter_constraints(constraints, params, caller_name=caller)
    except InvalidParameterError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Balancing:
    """How a level's node sizes are evened out (``TaxonomyEngine``'s ``balance*`` parameters).

    Parameters
    ----------
    mode : {None, "split", "penalty"}
        None: not at all; "split": split oversized nodes and merge tiny ones, then fit the level
        again, up to ``rounds`` times; "penalty": one round of size-penalised passes.
    factor, merge : float
        "split": nodes above ``factor`` times the level's mean size are split, below ``merge``
        times it merged into their siblings.
    rounds : int
    strength : float
        "penalty": weight of the size penalty, in (0, 1).
    """

    mode: str | None = None
    factor: float = 2.0
    merge: float = 0.1
    rounds: int = 3
    strength: float = 0.5

    _parameter_constraints = {
        "mode": [None, StrOptions(set(BALANCE_MODES))],
        "factor": [Interval(Real, 1, None, closed="neither")],
        "merge": [Interval(Real, 0, 1, closed="left")],
        "rounds": [Interval(Integral, 0, None, closed="left")],
        "strength": [Interval(Real, 0, 1, closed="neither")],
    }

    def __post_init__(self):
        check_constraints(self._parameter_constraints, asdict(self), type(self).__name__)

    @property
    def max_rounds(self) -> int:
        """Balancing rounds a level may run after its first fit."""
        return 0 if self.mode is None else 1 if self.mode == "penalty" else self.rounds


@dataclass(frozen=True)
class Routing:
    """How predict and search find a node's nearest children (``TaxonomyEngine``'s ``router``,
    ``hnsw_threshold`` and ``hnsw_ef``): exactly, or through an hnswlib graph for nodes with at
    least ``threshold`` children, searched ``ef`` wide. Fits always route exactly."""

    kind: str = "exact"
    threshold: int = 4096
    ef: int = 64

    _parameter_constraints = {
        "kind": [StrOptions(set(ROUTERS))],
        "threshold": [Interval(Integral, 1, None, closed="left")],
        "ef": [Interval(Integral, 1, None, closed="left")],
    }

    def __post_init__(self):
        check_constraints(self._parameter_constraints, asdict(self), type(self).__name__)


def grouped(value, group, flat: dict, name: str):
    """The group that ``value`` (an engine parameter: a group, or the group's first field) and the
    flat keywords make (``flat``: engine keyword -> (the group's field, value, default)); a group
    given with a flat keyword apart from its default is refused."""
    if isinstance(value, group):
        moved = sorted(keyword for keyword, (_, v, default) in flat.items() if v != default)
        if moved:
            raise ConfigError(f"{name}={value!r} and {', '.join(moved)} given together: set them in one place")
        return value
    return group(value, **{field: v for field, v, _ in flat.values()})


@dataclass(frozen=True)
class FitConfig:
    """Everything a fit needs, checked (``TaxonomyEngine._config``); ``params()`` is the
    manifest's record of it, the fingerprint a resumed fit must match."""

    n_levels: int
    factors: tuple[int, ...]
    max_iter: int
    tol: float
    metric: str
    random_state: int
    dtype: str
    sample_size: object  # as given: None, an int, or one (or None) per level
    min_cluster_size: int
    balancing: Balancing
    routing: Routing
    members: int
    search_index: bool
    storage_uri: str | None
    storage_options: dict | None = field(default=None, repr=False, compare=False)  # never shown
    clusterer: str = "kmeans"
    max_train_points_per_centroid: int | None = None  # None: every level reads all rows in every pass
    partition_level: int | None = None  # None: every level over all rows (see subtrees.py)

    def __post_init__(self):
        branching_list(list(self.factors), self.n_levels)
        sample_size_list(self.sample_size, self.n_levels)
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        points = self.max_train_points_per_centroid
        if points is not None and (isinstance(points, bool) or not isinstance(points, Integral) or points < 1):
            raise ConfigError(f"max_train_points_per_centroid must be None or a positive int, got {points!r}")
        if self.clusterer not in CLUSTERERS:
            raise ConfigError(f"clusterer must be one of {CLUSTERERS}, got {self.clusterer!r}")
        if self.clusterer == "gmm" and (self.metric != "euclidean" or self.balancing.mode == "penalty"):
            raise ConfigError("clusterer='gmm' needs metric='euclidean' and no balance='penalty' (rows choose "
                              "children by responsibility, not by a distance that penalties or cosine could shift)")
        level = self.partition_level
        if level is not None:
            if isinstance(level, bool) or not isinstance(level, Integral) or not 1 <= level < self.n_levels:
                raise ConfigError(f"partition_level must be None or an int in [1, n_levels - 1] = [1, "
                                  f"{self.n_levels - 1}], got {level!r}")
            if self.storage_uri is None:
                raise ConfigError("partition_level needs a storage_uri: the rows' partitions are written there")

    @property
    def seed(self) -> int:
        return int(self.random_state)

    def sample_sizes(self) -> list[int | None]:
        return sample_size_list(self.sample_size, self.n_levels)

    def _levels(self, first: int, stop: int, **changes) -> FitConfig:
        sample_size = self.sample_sizes()[first:stop] if isinstance(self.sample_size, (list, tuple)) else self.sample_size
        return replace(self, n_levels=stop - first, factors=self.factors[first:stop], sample_size=sample_size,
                       partition_level=None, search_index=False, **changes)

    def top(self, uri: str) -> FitConfig:
        """The fit of the levels above ``partition_level``, over all rows, stored under ``uri``."""
        return self._levels(0, self.partition_level, storage_uri=uri)

    def subtree(self, node: int, n_children: int, uri: str) -> FitConfig:
        """The fit of the subtree below ``node`` of level ``partition_level - 1``, from its own
        rows: ``n_children`` children (``levels.plan_children``), then the branching factors below,
        a random state of its own (from the fit's and the node's), stored under ``uri``."""
        first = self.partition_level
        seed = int(np.random.SeedSequence([self.seed, first, node]).generate_state(1, np.uint32)[0])
        return replace(self._levels(first, self.n_levels, storage_uri=uri, random_state=seed),
                       factors=(int(n_children),) + self.factors[first + 1:])

    def params(self, source) -> dict:
        """The parameters that change the fitted tree (the engine's keywords, flat, as stores have
        always recorded them), and the input's rows and dim."""
        b = self.balancing
        sample_size = self.sample_sizes() if isinstance(self.sample_size, (list, tuple)) else self.sample_size
        return {"n_levels": self.n_levels, "branching_factor": list(self.factors), "max_iter": self.max_iter,
                "tol": self.tol, "metric": self.metric, "random_state": self.random_state, "dtype": self.dtype,
                "sample_size": sample_size, "min_cluster_size": self.min_cluster_size, "balance": b.mode,
                "balance_factor": b.factor, "balance_merge": b.merge, "balance_rounds": b.rounds,
                "balance_strength": b.strength, "input": {"rows": len(source), "dim": source.dim},
                # (recorded only where not k-means: stores fitted before it existed resume as they were)
                **({"clusterer": self.clusterer} if self.clusterer != "kmeans" else {}),
                # (recorded only where levels may train on samples: None is how every earlier fit ran)
                **({"max_train_points_per_centroid": self.max_train_points_per_centroid}
                   if self.max_train_points_per_centroid is not None else {}),
                **({"partition_level": self.partition_level} if self.partition_level is not None else {})}
