"""FastKMeansClusterer: streaming k-means with EMA prototypes, as a scikit-learn clusterer."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, _fit_context
from .base import COMMON_CONSTRAINTS, PASS_BATCH, PrototypeLearner
from .distance import pairwise, scale_features
from .inputs import batches, check_features, check_mask, like_input, n_rows

__all__ = ["FastKMeansClusterer"]


class FastKMeansClusterer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, PrototypeLearner):
    """K-means on the learners' machinery: k-means++ seeds, Lloyd passes (``fit``) or EMA steps
    (``partial_fit`` / ``fit_batch``), euclidean, cosine or l1 (means, not medians), feature masks,
    dead-centroid pruning off (a clusterer keeps ``n_clusters``), and an optional finetuning of
    the soft distortion with ``diversity_reg`` against collapsed centroids.

    Parameters
    ----------
    n_clusters : int, default=8
    The other parameters are :class:`FastKMeansClassifier`'s (``top_k`` and ``soft_type`` only
    matter for the finetuning's soft distortion).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The prototypes (``prototypes_`` too).
    labels_ : ndarray of shape (n_samples,)
    inertia_ : float
        Sum of the distances of the rows to their centroid.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=np.float32)
    >>> km = FastKMeansClusterer(n_clusters=2, random_state=0, device="cpu").fit(X)
    >>> sorted(km.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in COMMON_CONSTRAINTS.items()},
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_clusters=8, *, metric="euclidean", soft_type="softmax_scaled", top_k=5, temperature=1.0,
                 init_mode="kmeans++", max_iter=100, tol=1e-4, ema_decay=1.0, finetune_epochs=0, learning_rate=None,
                 batch_size=1024, auto_feature_weights=False, diversity_reg=0.0, l2_reg=0.0, use_index=False,
                 device="auto", dtype="float32", random_state=None):
        self.n_clusters = n_clusters
        self.metric = metric
        self.soft_type = soft_type
        self.top_k = top_k
        self.temperature = temperature
        self.init_mode = init_mode
        self.max_iter = max_iter
        self.tol = tol
        self.ema_decay = ema_decay
        self.finetune_epochs = finetune_epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.auto_feature_weights = auto_feature_weights
        self.diversity_reg = diversity_reg
        self.l2_reg = l2_reg
        self.use_index = use_index
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def _k_param(self):
        return self.n_clusters

    def _check_rows(self, n):
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")

    def _targets(self, y):
        return torch.zeros(n_rows(y) if y is not None else 0, device=self._device())

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, feature_mask=None):
        """Seeds, Lloyd passes, ``finetune_epochs`` of Adam, then ``labels_``.

        Returns
        -------
        self
        """
        X, _ = check_features(self, X, reset=True)
        n = n_rows(X)
        self._check_rows(n)
        self._new_state(1)
        mask = check_mask(feature_mask, X)
        self._fit_prototypes(X, np.arange(n), np.zeros(n, dtype=np.int64), np.ones(n), mask, prune=False)
        if self.finetune_epochs:
            self._finetune(X, torch.zeros(n, device=self._device()), torch.ones(n, device=self._device()), mask,
                           epochs=self.finetune_epochs, learning_rate=None, early_stopping_rounds=None)
        self._labels(X, mask)
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One streaming step (:meth:`fit_batch` without gradient)."""
        return self.fit_batch(X, sample_weight=sample_weight)

    def fit_batch(self, X, y=None, sample_weight=None, feature_mask=None, gradient_step=False):
        """One batch of a stream: EMA step (the first batch seeds ``n_clusters`` centroids) or one
        Adam step on the soft distortion."""
        first = not hasattr(self, "cluster_centers_")
        if first:
            self._validate_params()
        X, _ = check_features(self, X, reset=first)
        n = n_rows(X)
        if first:
            self._check_rows(n)
            self._new_state(1)
        w = self._weights_of(sample_weight, n)
        mask = check_mask(feature_mask, X)
        if gradient_step:
            x, m = self._batch_tensor(X, mask)
            self._gradient_step(x, torch.zeros(n, device=x.device), torch.as_tensor(w, device=x.device), m)
        else:
            self._ema_step(X, np.arange(n), np.zeros(n, dtype=np.int64), w, mask, prune=False)
            self.n_iter_ += 1
        return self

    def _loss(self, params, x, t, w, mask):
        d = self._distances(params, x, mask)
        loss = d.min(1).values
        w = w.to(loss.dtype)
        return (w * loss).sum() / w.sum().clamp_min(1e-30)

    def _export(self):
        super()._export()
        self.cluster_centers_ = self.prototypes_
        self._n_features_out = self.prototypes_.shape[0]

    def _labels(self, X, mask=None):
        labels, dist = self._assign_rows(X, mask)
        self.labels_ = labels.cpu().numpy()
        self.inertia_ = float(dist.double().sum())

    def _assign_rows(self, X, mask=None):
        out_l, out_d = [], []
        for _, _, x, m in batches(X, PASS_BATCH, self._device(), self._work_dtype(), mask=mask):
            d, idx = self._neighbors(x, m, k=1)
            out_l.append(idx[:, 0])
            out_d.append(d[:, 0])
        return torch.cat(out_l), torch.cat(out_d)

    def predict(self, X, feature_mask=None):
        """Index of the nearest centroid of every row."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        return like_input(self._assign_rows(X, check_mask(feature_mask, X))[0], X)

    def transform(self, X):
        """(n, n_clusters) distances to the centroids (squared for euclidean)."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        fw = self._weights()
        c = scale_features(self._stored, fw, self.metric)
        out = [pairwise(scale_features(x, fw, self.metric), c, self.metric)
               for _, _, x, _ in batches(X, PASS_BATCH // 8, self._device(), self._work_dtype())]
        d = torch.cat(out)
        if not isinstance(X, torch.Tensor):
            d = d.to(torch.float64 if X.dtype == np.float64 else torch.float32)
        return like_input(d, X)

    def score(self, X, y=None):
        """Opposite of the sum of the distances of ``X`` to their centroids."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        return -float(self._assign_rows(X)[1].double().sum())
