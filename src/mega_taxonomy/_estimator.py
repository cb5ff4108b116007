"""One input adapter for every estimator and the CLI: what a user hands over becomes a VectorSource.

Estimators take numpy arrays (and anything ``np.asarray`` reads), torch tensors on any device,
paths, globs, directories, fsspec URIs, lists of them, or a :class:`VectorSource` (DESIGN.md,
Contracts: "arrays in, arrays out"). Files stream; arrays and tensors are served in place, never
copied. A scikit-learn estimator (KMeans, the learners) passes itself: in-memory arrays then go
through scikit-learn's ``validate_data`` (dtype, shape, ``n_features_in_``, the messages that
``check_estimator`` expects) and every other input is held to the same ``n_features_in_``. Bad
values (NaN, Inf) are the source's to report, since it names the file, row and column.

Examples
--------
>>> import numpy as np
>>> as_source(np.zeros((5, 3), dtype=np.float32)).dim
3
>>> as_source([[1.0, 2.0]]).dim
2
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from .io import VectorSource, is_source_like

__all__ = ["as_source", "check_n_features", "is_source_like"]


def as_source(data, estimator=None, *, reset=True, dim=None, column=None, id_column=None, batch_size=65_536,
              storage_options=None, on_invalid="raise") -> VectorSource:
    """``data`` as a VectorSource.

    Parameters
    ----------
    data : array-like, torch.Tensor, str, path, list of paths, or VectorSource
        A VectorSource is used as it is (the reading options are then its own).
    estimator : scikit-learn estimator, optional
        Checks ``data`` as scikit-learn does and sets (``reset=True``) or checks
        ``n_features_in_``; tensors must then be 2-d and floating point.
    dim : int, optional
        Expected dimension (DataError otherwise).
    column, id_column, batch_size, storage_options, on_invalid
        How files are read (see :class:`VectorSource`); not used for arrays and tensors.
    """
    if is_source_like(data):
        source = VectorSource.of(data, column=column, id_column=id_column, dim=dim, batch_size=batch_size,
                                 storage_options=storage_options, on_invalid=on_invalid)
    elif isinstance(data, torch.Tensor):
        if estimator is not None and (data.ndim != 2 or not data.is_floating_point()):
            raise ValueError(f"expected a 2-d floating point tensor, got {data.dtype} of shape {tuple(data.shape)}")
        source = VectorSource(data, dim=dim)
    elif estimator is not None:
        # ensure_all_finite=False: the source's own check names the row and column. float16 rows
        # stay as they are, as half tensors and files do: converted to float64 (scikit-learn's
        # default) they were four times the bytes to copy, and the conversion alone took seconds
        data = validate_data(estimator, data, reset=reset, dtype=[np.float64, np.float32, np.float16],
                             ensure_all_finite=False)
        return VectorSource(data, dim=dim)
    else:
        return VectorSource(np.asarray(data), dim=dim)
    if estimator is not None:
        check_n_features(estimator, source, reset=reset)
    return source


def check_n_features(estimator, source: VectorSource, *, reset: bool) -> None:
    """Set ``estimator.n_features_in_`` (``reset``), or check ``source`` against it, with
    scikit-learn's message."""
    if reset:
        estimator.n_features_in_ = source.dim
    elif source.dim != estimator.n_features_in_:
        raise ValueError(
            f"X has {source.dim} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
