"""The private scikit-learn helpers we rely on, imported in one place (pinned: scikit-learn>=1.6)."""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["Interval", "StrOptions", "_fit_context"]
