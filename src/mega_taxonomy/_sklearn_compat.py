"""The private scikit-learn helpers we rely on, imported in one place (pinned: scikit-learn>=1.6)."""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = ["Interval", "InvalidParameterError", "StrOptions", "_fit_context", "validate_parameter_constraints"]
