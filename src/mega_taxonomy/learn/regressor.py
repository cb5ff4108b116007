"""FastKMeansRegressor: two-stage prototypes (buckets of the targets, then prototypes of the
features within each bucket), each carrying a target; prediction blends the targets of the
``top_k`` nearest prototypes."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..cluster import KMeans
from ..cluster.kmeans import seed_of
from ..ops.update import cluster_stats
from .base import PASS_BATCH, PrototypeLearner
from .classifier import FastKMeansClassifier
from .inputs import batches, check_features, check_mask, like_input, n_rows, require_y
from .prototypes import assign
from .soft import SOFT_TYPES, soft_weights, trainable_soft_type

__all__ = ["FastKMeansRegressor"]

RIDGE = 1e-2  # of the mean diagonal of W^T W: pulls targets that few rows weigh to their hard means


class FastKMeansRegressor(RegressorMixin, PrototypeLearner):
    """Prototype regressor: the targets are cut into ``k_targets`` buckets (k-means on the
    standardized targets), ``k_features`` k-means prototypes of the features are grown inside every
    bucket, and each prototype carries a target value (``target_assignment``). A prediction is the
    soft blend (``soft_type``) of the targets of the ``top_k`` nearest prototypes. Multi-output
    targets (n, m) are clustered as vectors.

    Parameters
    ----------
    k_targets : int or "auto", default="auto"
        Target buckets; "auto": ``round(n ** (1/3))``.
    k_features : int or "auto", default="auto"
        Prototypes per bucket; "auto" as the classifier's ``k_init="auto"``.
    target_distance : {"euclidean", "cosine"}, default="euclidean"
        Metric of the bucketing of the (standardized) targets.
    target_assignment : {"hard", "mean", "scaled", "softmax_scaled"}, default="softmax_scaled"
        "hard": a prototype's target is the mean of its rows' targets; the others: the targets that
        make the blend of that rule fit the training targets best (least squares over the rows,
        with a small ridge towards the hard means).
    soft_type, top_k, temperature, ... :
        As :class:`FastKMeansClassifier` (``top_k`` default 10). Finetuning minimizes the mean
        squared error (in standardized target units); the targets are learned with the prototypes.

    Attributes
    ----------
    prototypes_ : ndarray of shape (n_prototypes, n_features)
    prototype_targets_ : ndarray of shape (n_prototypes,) or (n_prototypes, n_outputs)
    prototype_groups_ : ndarray of shape (n_prototypes,)
        Bucket of each prototype.
    target_centers_ : ndarray of shape (n_buckets, n_outputs)
        Bucket centers in target units.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.linspace(0, 1, 40, dtype=np.float32)[:, None]
    >>> reg = FastKMeansRegressor(k_targets=4, k_features=2, random_state=0, device="cpu").fit(X, 3 * X[:, 0])
    >>> bool(abs(reg.predict(np.array([[0.5]]))[0] - 1.5) < 0.2)
    True
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in FastKMeansClassifier._parameter_constraints.items()
           if k not in ("k_init", "negative_sampling", "repulsion_factor")},
        "k_targets": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "k_features": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "target_distance": [StrOptions({"euclidean", "cosine"})],
        "target_assignment": [StrOptions(set(SOFT_TYPES))],
    }
    _y_options: dict = {"y_numeric": True, "multi_output": True}
    _carried = ("prototype_targets_",)

    def __init__(self, k_targets="auto", k_features="auto", *, target_distance="euclidean", target_assignment="softmax_scaled",
                 metric="euclidean", soft_type="softmax_scaled", top_k=10, temperature=1.0, init_mode="kmeans++",
                 max_iter=10, tol=1e-4, ema_decay=1.0, finetune_epochs=0, learning_rate=None, batch_size=1024,
                 auto_feature_weights=False, diversity_reg=0.0, l2_reg=0.0, use_index=False, device="auto",
                 dtype="float32", random_state=None):
        self.k_targets = k_targets
        self.k_features = k_features
        self.target_distance = target_distance
        self.target_assignment = target_assignment
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
        return self.k_features

    # -- targets ---------------------------------------------------------------------------
    def _standard(self, y):
        y = np.asarray(y, dtype=np.float64)
        return ((y.reshape(len(y), -1) - self.y_mean_) / self.y_scale_)

    def _targets(self, y):
        return torch.as_tensor(self._standard(y), device=self._device(), dtype=torch.float32)

    def _buckets(self, ys):
        """Bucket of every (standardized) target: nearest bucket center."""
        c = torch.as_tensor(self._bucket_centers, dtype=torch.float64)
        d = torch.cdist(torch.as_tensor(ys, dtype=torch.float64), c) if self.target_distance == "euclidean" else \
            1 - torch.nn.functional.normalize(torch.as_tensor(ys), dim=1) @ torch.nn.functional.normalize(c, dim=1).T
        return d.argmin(1).numpy().astype(np.int64)

    def _start_targets(self, y):
        """Target scaling and buckets from ``y`` (the whole data, or a stream's first batch)."""
        y = np.asarray(y, dtype=np.float64)
        self._normal = None  # a stream's least-squares sums of the targets
        self._single_output = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.y_mean_ = y2.mean(0)
        self.y_scale_ = np.where(y2.std(0) > 0, y2.std(0), 1.0)
        ys = self._standard(y)
        k = self.k_targets if self.k_targets != "auto" else max(1, round(len(y) ** (1 / 3)))
        k = int(min(k, len(np.unique(ys, axis=0))))
        km = KMeans(n_clusters=k, random_state=seed_of(self.random_state), metric=self.target_distance,
                    device="cpu", max_iter=50).fit(ys.astype(np.float64))
        self._bucket_centers = km.cluster_centers_.astype(np.float64)
        self.target_centers_ = self._bucket_centers * self.y_scale_ + self.y_mean_
        return ys, k

    # -- fit -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Buckets of the targets, prototypes within buckets (Lloyd passes), their targets, and
        ``finetune_epochs`` of Adam.

        Returns
        -------
        self
        """
        require_y(self, y)
        X, y = check_features(self, X, reset=True, y=y, **self._y_options)
        ys, k = self._start_targets(y)
        self._new_state(k)
        self._protos.extra["targets"] = torch.zeros(0, ys.shape[1], dtype=torch.float64, device=self._device())
        n = n_rows(X)
        self._fit_prototypes(X, np.arange(n), self._buckets(ys), np.ones(n))
        self._fit_targets(X, ys)
        if self.finetune_epochs:
            self.finetune(X, y, epochs=self.finetune_epochs)
        return self

    def _fit_targets(self, X, ys):
        """Every prototype's target: the mean of its rows' targets ("hard"), or the targets that
        fit the soft blend best: least squares ``min |W T - Y|^2`` over the rows, ``W`` (n, P) the
        rows' soft weights of the inference rule, with a small ridge towards the hard means (for
        prototypes that no row weighs). ``W^T W`` and ``W^T Y`` add up over batches."""
        p = self._protos.vectors.shape[0]
        dev = self._device()
        hard = torch.zeros(p, ys.shape[1], dtype=torch.float64, device=dev)
        hard_w = torch.zeros(p, dtype=torch.float64, device=dev)
        gram = torch.zeros(p, p, dtype=torch.float64, device=dev)
        rhs = torch.zeros_like(hard)
        buckets = self._buckets(ys)
        for lo, hi, x, _ in batches(X, PASS_BATCH, dev, self._work_dtype()):
            t = torch.as_tensor(ys[lo:hi], device=dev)
            _, labels = assign(self._protos, x, torch.as_tensor(buckets[lo:hi], device=dev), self.metric,
                               self._weights())
            s, c, _ = cluster_stats(t, labels, torch.zeros(hi - lo, dtype=torch.float64, device=dev), p)
            hard += s
            hard_w += c.double()
            if self.target_assignment != "hard":
                d, idx = self._neighbors(x)
                w = soft_weights(d.double(), self.target_assignment, self.temperature, self.distance_scale_)
                dense = torch.zeros(hi - lo, p, dtype=torch.float64, device=dev).scatter_add_(1, idx, w)
                gram += dense.T @ dense
                rhs += dense.T @ t
        centers = torch.as_tensor(self._bucket_centers, device=dev)[self._protos.groups]
        targets = torch.where(hard_w[:, None] > 0, hard / hard_w.clamp_min(1)[:, None], centers)
        if self.target_assignment != "hard":
            ridge = RIDGE * max(float(gram.diagonal().mean()), 1e-12)
            eye = torch.eye(p, dtype=torch.float64, device=dev)
            targets = torch.linalg.solve(gram + ridge * eye, rhs + ridge * targets)
        self._protos.extra["targets"] = targets
        self._export()

    def partial_fit(self, X, y, sample_weight=None):
        """One streaming step (:meth:`fit_batch` without gradient)."""
        return self.fit_batch(X, y, sample_weight=sample_weight)

    def fit_batch(self, X, y, sample_weight=None, feature_mask=None, gradient_step=False):
        """One batch of a stream: an EMA step (the first batch fixes the target scaling and
        buckets; prototypes' targets follow their rows' targets by the same EMA) or one Adam step."""
        first = not hasattr(self, "y_mean_")
        if first:
            self._validate_params()
        X, y = check_features(self, X, reset=first, y=y, **self._y_options)
        if first:
            ys, k = self._start_targets(y)
            self._new_state(k)
            self._protos.extra["targets"] = torch.zeros(0, ys.shape[1], dtype=torch.float64, device=self._device())
        ys = self._standard(y)
        w = self._weights_of(sample_weight, n_rows(X))
        mask = check_mask(feature_mask, X)
        if gradient_step:
            x, m = self._batch_tensor(X, mask)
            self._gradient_step(x, self._targets(y), torch.as_tensor(w, device=x.device), m)
            return self
        self._ema_step(X, np.arange(n_rows(X)), self._buckets(ys), w, mask)
        self._ema_targets(X, ys, w, mask)
        self.n_iter_ += 1
        return self

    def _ema_targets(self, X, ys, w, mask):
        """Targets in a stream: hard means move as the prototypes did (by the batch's mass over
        the total mass); for a soft ``target_assignment`` the least-squares sums ``W^T W`` and
        ``W^T Y`` decay by ``ema_decay`` per batch and the targets are solved again (the sums
        restart when prototypes are added or pruned)."""
        dev = self._device()
        x, m = self._batch_tensor(X, mask)
        _, labels = assign(self._protos, x, torch.as_tensor(self._buckets(ys), device=dev), self.metric,
                           self._weights(), m)
        p = self._protos.vectors.shape[0]
        wt = torch.as_tensor(w, device=dev, dtype=torch.float64)
        t = torch.as_tensor(ys, device=dev)
        s, _, mass = cluster_stats(t * wt[:, None], labels, wt, p)
        old = self._protos.extra["targets"]
        step = torch.where(self._protos.mass > 0, mass / self._protos.mass.clamp_min(1e-300), 0.0)[:, None]
        means = torch.where(mass[:, None] > 0, s / mass.clamp_min(1e-300)[:, None], old)
        targets = old + step * (means - old)
        if self.target_assignment != "hard":
            self._export()  # the searcher of the moved prototypes
            d, idx = self._neighbors(x, m)
            soft = soft_weights(d.double(), self.target_assignment, self.temperature, self.distance_scale_)
            dense = torch.zeros(len(t), p, dtype=torch.float64, device=dev).scatter_add_(1, idx, soft * wt[:, None])
            gram, rhs = dense.T @ (dense / wt.clamp_min(1e-300)[:, None]), dense.T @ t
            if getattr(self, "_normal", None) is not None and self._normal[0].shape == gram.shape:
                gram = self.ema_decay * self._normal[0] + gram
                rhs = self.ema_decay * self._normal[1] + rhs
            self._normal = (gram, rhs)
            ridge = RIDGE * max(float(gram.diagonal().mean()), 1e-12)
            eye = torch.eye(p, dtype=torch.float64, device=dev)
            targets = torch.linalg.solve(gram + ridge * eye, rhs + ridge * targets)
        self._protos.extra["targets"] = targets
        self._export()

    # -- finetuning ------------------------------------------------------------------------
    def _trainables(self):
        params = super()._trainables()
        params["targets"] = self._protos.extra["targets"].detach().float().clone().requires_grad_(True)
        return params

    def _set_trainables(self, params):
        self._protos.extra["targets"] = params["targets"].detach().double()
        super()._set_trainables(params)

    def _blend(self, d, idx, targets, soft_type):
        w = soft_weights(d, soft_type, self.temperature, self.distance_scale_)
        return (w[:, :, None] * targets[idx]).sum(1)

    def _loss(self, params, x, t, w, mask):
        d = self._distances(params, x, mask)
        p = d.shape[1]
        k = p if self.top_k in (-1, 0) else min(self.top_k, p)
        idx = d.detach().topk(k, 1, largest=False).indices
        pred = self._blend(d.gather(1, idx), idx, params["targets"], trainable_soft_type(self.soft_type))
        w = w.to(pred.dtype)
        return (w * ((pred - t) ** 2).sum(1)).sum() / w.sum().clamp_min(1e-30)

    # -- inference -------------------------------------------------------------------------
    def _export(self):
        super()._export()
        t = self._protos.extra.get("targets")
        if t is not None and hasattr(self, "y_mean_"):
            t = t.detach().cpu().numpy() * self.y_scale_ + self.y_mean_
            self.prototype_targets_ = t[:, 0] if self._single_output else t

    def predict(self, X, feature_mask=None):
        """The blend of the targets of the ``top_k`` nearest prototypes."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        targets = self._protos.extra["targets"]
        out = []
        for _, _, w, idx in self._soft(X, feature_mask):
            out.append((w.double()[:, :, None] * targets[idx]).sum(1))
        pred = torch.cat(out) * torch.as_tensor(self.y_scale_, device=targets.device) + \
            torch.as_tensor(self.y_mean_, device=targets.device)
        if self._single_output:
            pred = pred[:, 0]
        return like_input(pred, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
