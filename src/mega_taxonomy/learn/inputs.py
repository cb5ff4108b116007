"""Input of the prototype learners: dense arrays, torch tensors and scipy.sparse CSR rows, checked
as scikit-learn checks them, then served to the compute device in dense batches.

In-memory numpy and sparse input goes through scikit-learn's ``validate_data`` (the messages that
``check_estimator`` expects; other sparse formats become CSR). A tensor stays a tensor: it is
checked here (2-d, floating point, finite, ``n_features_in_``) and never copied to the host, and
the estimators answer a tensor with a tensor on its device ("arrays in, arrays out", DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import validate_data

__all__ = ["batches", "check_features", "check_mask", "compute_device", "dense_rows", "like_input", "n_rows", "require_y", "torch_dtype"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The storage dtype of the prototypes; arithmetic runs in float32 (float64 for float64)."""
    return DTYPES[name]


def compute_device(device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_features(estimator, X, *, reset: bool, y=None, **y_options):
    """``(X, y)`` checked: a tensor as it is, anything else through ``validate_data`` (dense
    float32/float64 or CSR). ``reset`` sets ``n_features_in_``, else ``X`` is held to it."""
    if isinstance(X, torch.Tensor):
        if X.ndim != 2 or not X.is_floating_point():
            raise ValueError(f"expected a 2-d floating point tensor, got {X.dtype} of shape {tuple(X.shape)}")
        if X.shape[0] == 0:
            raise ValueError(f"Found array with 0 sample(s) (shape=(0, {X.shape[1]})) while a minimum of 1 is required.")
        if not bool(torch.isfinite(X).all()):
            row = int(torch.nonzero(~torch.isfinite(X).all(1))[0, 0])
            raise ValueError(f"Input X contains NaN or infinity (row {row}).")
        if reset:
            estimator.n_features_in_ = int(X.shape[1])
        elif X.shape[1] != estimator.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
                             f"{estimator.n_features_in_} features as input.")
        if y is not None:
            y = _check_y_only(y, X.shape[0], **y_options)
        return X, y
    options = {"accept_sparse": "csr", "dtype": [np.float64, np.float32]}
    if y is None:
        return validate_data(estimator, X, reset=reset, **options), None
    return validate_data(estimator, X, y, reset=reset, **options, **y_options)


def _check_y_only(y, n, *, multi_output=False, y_numeric=False):
    from sklearn.utils.validation import check_array, column_or_1d

    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if multi_output:
        y = check_array(y, ensure_2d=False, dtype=np.float64 if y_numeric else None)
    else:
        y = column_or_1d(y, warn=True)
        if y_numeric:
            y = y.astype(np.float64)
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    return y


def check_mask(mask, X):
    """A feature mask of X's shape (1 where a value is present, 0 where missing or padding), as a
    float array or tensor, or None."""
    if mask is None:
        return None
    shape = tuple(X.shape)
    if isinstance(mask, torch.Tensor):
        if tuple(mask.shape) != shape:
            raise ValueError(f"feature_mask has shape {tuple(mask.shape)}, X has {shape}")
        return mask
    mask = mask.toarray() if sp.issparse(mask) else np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"feature_mask has shape {mask.shape}, X has {shape}")
    return mask


def n_rows(X) -> int:
    return int(X.shape[0])


def dense_rows(X, lo: int, hi: int, device, dtype) -> torch.Tensor:
    """Rows ``lo:hi`` of X (array, CSR or tensor) as a dense tensor on ``device``."""
    if isinstance(X, torch.Tensor):
        return X[lo:hi].to(device=device, dtype=dtype)
    block = X[lo:hi]
    if sp.issparse(block):
        block = block.toarray()
    return torch.as_tensor(np.ascontiguousarray(block), device=device).to(dtype)


def batches(X, batch_size: int, device, dtype, mask=None, rows=None):
    """``(lo, hi, x, m)``: dense batches of X (and of its mask, else None), optionally of the rows
    ``rows`` (an index array) in that order."""
    n = n_rows(X) if rows is None else len(rows)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        if rows is None:
            x = dense_rows(X, lo, hi, device, dtype)
            m = None if mask is None else dense_rows(mask, lo, hi, device, dtype)
        else:
            idx = rows[lo:hi]
            x = _take(X, idx, device, dtype)
            m = None if mask is None else _take(mask, idx, device, dtype)
        yield lo, hi, x, m


def _take(X, idx, device, dtype):
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(idx, device=X.device)].to(device=device, dtype=dtype)
    block = X[idx]
    if sp.issparse(block):
        block = block.toarray()
    return torch.as_tensor(np.ascontiguousarray(block), device=device).to(dtype)


def like_input(values, X):
    """``values`` (a tensor) as the caller gave X: a tensor on X's device, else a numpy array."""
    if isinstance(X, torch.Tensor):
        return values.to(X.device)
    return values.detach().cpu().numpy()


def require_y(estimator, y):
    if y is None:
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None")
