"""FastKMeansClassifier: per-class prototypes grown by streaming k-means, finetuned with Adam,
soft votes of the ``top_k`` nearest at inference."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions, _fit_context
from .base import COMMON_CONSTRAINTS, PrototypeLearner
from .inputs import check_features, check_mask, like_input, n_rows, require_y
from .soft import binary_proba, group_logsumexp, top_group

__all__ = ["FastKMeansClassifier"]


class FastKMeansClassifier(ClassifierMixin, PrototypeLearner):
    """Multi-prototype classifier: a few k-means prototypes per class, soft nearest-prototype votes.

    ``fit`` seeds ``k_init`` prototypes per class by k-means++ on the class's rows, runs Lloyd
    passes within each class (every row against its own class's prototypes only, the grouped
    assignment op), prunes dead prototypes and, with ``finetune_epochs``, moves the prototypes
    with Adam on the cross-entropy of a softmax over all prototypes (plus a GLVQ repulsion term).
    ``partial_fit`` / ``fit_batch`` stream: new classes get prototypes from their first batch,
    classes grow as their rows come in, and a few Lloyd iterations of each batch move the
    prototypes from their running means. Prediction soft-votes over the ``top_k``
    nearest prototypes (``soft_type``).

    Parameters
    ----------
    k_init : int or "auto", default="auto"
        Prototypes per class; "auto": ``round(r * sqrt(n_c))`` from the class's spread ``r``
        relative to the data's (``prototypes.auto_k``). A stream (``partial_fit``) takes ``r`` from
        the first batch that holds the class and grows the class to ``r * sqrt(rows seen)`` by
        splitting its widest prototypes, so it ends with about the prototypes ``fit`` makes
        (``learn/streaming.py``; the 600k benchmark set, 50k-row batches: 0.855 with 2190
        prototypes against ``fit``'s 0.871 with 2228).
    metric : {"euclidean", "cosine", "l1"}, default="euclidean"
        Squared L2, ``1 - cos`` or L1.
    soft_type : {"hard", "mean", "scaled", "softmax_scaled"}, default="softmax_scaled"
    top_k : int, default=5
        Prototypes that vote (-1 or 0: all).
    temperature : float, default=0.3
        For "softmax_scaled" (and the finetuning's softmax), in units of the mean distance of a
        row to its prototype.
    init_mode : {"kmeans++", "random"}, default="kmeans++"
    max_iter : int, default=10
        Lloyd passes of ``fit``.
    tol : float, default=1e-4
        Stop when the squared shift of the prototypes is below ``tol`` times the data's variance.
    ema_decay : float in (0, 1], default=1.0
        Streaming: the prototypes' mass decays by this factor per batch (1: running means).
    finetune_epochs : int, default=0
        Adam epochs at the end of ``fit`` (``finetune`` runs more).
    learning_rate : float or None, default=None
        Adam's rate; None: :meth:`find_learning_rate` on the data.
    batch_size : int, default=1024
        Rows per Adam step.
    auto_feature_weights : bool, default=False
        Weigh each feature by how much of its variance the prototypes explain (``1 - within /
        total``, after the first pass); the finetuning learns them further.
    diversity_reg, l2_reg : float, default=0.0
        Finetuning penalties: prototypes of a class close together; squared norms.
    negative_sampling : int or None, default=None
        Finetuning: the softmax runs over the batch's classes and this many other classes drawn
        at random (sampled softmax, for very many classes).
    repulsion_factor : float, default=0.0
        Weight of the GLVQ term ``(d+ - d-) / (d+ + d-)`` (nearest own-class vs other-class
        prototype) in the finetuning loss: it pushes the nearest wrong prototype away.
    use_index : bool or "auto", default=False
        Search the prototypes through an inverted file (``learn/search.py``; its probes calibrated
        to find 90% of the nearest prototypes); "auto": from 20,000 prototypes.
    device : str, default="auto"
    dtype : {"float32", "float64", "float16", "bfloat16"}, default="float32"
        Storage of the prototypes (arithmetic in float32, float64 for "float64").
    random_state : int, RandomState or None, default=None

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    prototypes_ : ndarray of shape (n_prototypes, n_features)
    prototype_groups_ : ndarray of shape (n_prototypes,)
        Index into ``classes_`` of each prototype (``prototype_labels_``: the labels).
    prototype_counts_ : ndarray of shape (n_prototypes,)
        Rows (weights) each prototype holds.
    feature_weights_ : ndarray of shape (n_features,) or None
    n_features_in_ : int
    n_iter_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0, 0], [0, 1], [5, 5], [5, 6]], dtype=np.float32)
    >>> clf = FastKMeansClassifier(k_init=1, random_state=0, device="cpu").fit(X, [0, 0, 1, 1])
    >>> clf.predict(np.array([[0, 0.4], [5, 5.2]])).tolist()
    [0, 1]
    >>> clf.prototypes_.tolist()
    [[0.0, 0.5], [5.0, 5.5]]
    """

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        "k_init": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "negative_sampling": [Interval(Integral, 1, None, closed="left"), None],
        "repulsion_factor": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, k_init="auto", *, metric="euclidean", soft_type="softmax_scaled", top_k=5, temperature=0.3,
                 init_mode="kmeans++", max_iter=10, tol=1e-4, ema_decay=1.0, finetune_epochs=0, learning_rate=None,
                 batch_size=1024, auto_feature_weights=False, diversity_reg=0.0, l2_reg=0.0, negative_sampling=None,
                 repulsion_factor=0.0, use_index=False, device="auto", dtype="float32", random_state=None):
        self.k_init = k_init
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
        self.negative_sampling = negative_sampling
        self.repulsion_factor = repulsion_factor
        self.use_index = use_index
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    # -- targets ---------------------------------------------------------------------------
    def _encode(self, y):
        pos = np.searchsorted(self.classes_, y).clip(max=len(self.classes_) - 1)
        unknown = self.classes_[pos] != y
        if unknown.any():
            raise ValueError(f"y contains labels not in classes_: {np.unique(y[unknown])[:5].tolist()}")
        return pos.astype(np.int64)

    def _targets(self, y):
        return torch.as_tensor(self._encode(y), device=self._device())

    # -- fit -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Prototypes of every class: k-means++ seeds, Lloyd passes within classes, pruning, and
        ``finetune_epochs`` of Adam.

        Returns
        -------
        self
        """
        require_y(self, y)
        X, y = check_features(self, X, reset=True, y=y)
        check_classification_targets(y)
        self.classes_, t = np.unique(y, return_inverse=True)
        self._new_state(len(self.classes_))
        n = n_rows(X)
        self._fit_prototypes(X, np.arange(n), t.astype(np.int64), np.ones(n))
        if self.finetune_epochs:
            self.finetune(X, y, epochs=self.finetune_epochs)
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One streaming step (:meth:`fit_batch` without gradient). ``classes`` (all labels the
        stream will hold) is needed on the first call unless that batch holds every class."""
        return self.fit_batch(X, y, sample_weight=sample_weight, classes=classes)

    def fit_batch(self, X, y, sample_weight=None, feature_mask=None, gradient_step=False, classes=None):
        """One batch of a stream: an EMA step of the prototypes (``gradient_step=False``: new
        classes seeded, rows assigned within their class, prototypes moved) or one Adam step.

        ``feature_mask`` (X's shape, 1 present / 0 missing): distances and means use the present
        coordinates only.
        """
        first = not hasattr(self, "classes_")
        if first:
            self._validate_params()
        X, y = check_features(self, X, reset=first, y=y)
        check_classification_targets(y)
        if first:
            self.classes_ = np.unique(y if classes is None else np.asarray(classes))
            self._new_state(len(self.classes_))
        t = self._encode(y)
        w = self._weights_of(sample_weight, n_rows(X))
        mask = check_mask(feature_mask, X)
        if gradient_step:
            x, m = self._batch_tensor(X, mask)
            self._gradient_step(x, torch.as_tensor(t, device=x.device), torch.as_tensor(w, device=x.device), m)
        else:
            self._ema_step(X, np.arange(n_rows(X)), t, w, mask)
            self.n_iter_ += 1
        return self

    def _loss(self, params, x, t, w, mask):
        groups, cols = self._protos.groups, None
        if self.negative_sampling and self.negative_sampling + 1 < len(self.classes_):
            present = torch.unique(t)
            rng_pick = torch.as_tensor(self._rng.choice(len(self.classes_), self.negative_sampling, replace=False),
                                       device=t.device)
            keep = torch.zeros(len(self.classes_), dtype=torch.bool, device=t.device)
            keep[present] = True
            keep[rng_pick] = True
            cols = torch.nonzero(keep[groups]).flatten()
            groups = groups[cols]
        d = self._distances(params, x, mask, cols)
        z = -d / (self.temperature * self.distance_scale_)
        logits = group_logsumexp(z, groups, len(self.classes_))
        ce = torch.logsumexp(logits, 1) - logits.gather(1, t[:, None]).squeeze(1)
        w = w.to(ce.dtype)
        loss = (w * ce).sum() / w.sum().clamp_min(1e-30)
        if self.repulsion_factor:
            own = groups[None, :] == t[:, None]
            inf = torch.full_like(d, torch.inf)
            d_plus = torch.where(own, d, inf).min(1).values
            d_minus = torch.where(~own, d, inf).min(1).values
            ok = torch.isfinite(d_plus) & torch.isfinite(d_minus)
            mu = (d_plus - d_minus) / (d_plus + d_minus).clamp_min(1e-12)
            loss = loss + self.repulsion_factor * (w * torch.where(ok, mu, torch.zeros_like(mu))).sum() / w.sum()
        return loss

    # -- inference -------------------------------------------------------------------------
    @property
    def prototype_labels_(self):
        return self.classes_[self.prototype_groups_]

    def _proba_tensor(self, X, feature_mask=None):
        """(proba, decision): the class scores, and for two classes :func:`binary_proba`'s."""
        out = []
        for _, _, w, idx in self._soft(X, feature_mask):
            g = self._protos.groups[idx]
            scores = torch.zeros(w.shape[0], len(self.classes_), dtype=w.dtype, device=w.device)
            out.append(scores.scatter_add_(1, g, w))
        p = torch.cat(out).double()
        if len(self.classes_) == 2:
            return binary_proba(p)
        return p, p

    def predict_proba(self, X, feature_mask=None):
        """Class probabilities: the soft weights of the ``top_k`` nearest prototypes summed per class
        (for two classes clipped to ``[1e-9, 1 - 1e-9]``)."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        return like_input(self._proba_tensor(X, feature_mask)[0], X)

    def decision_function(self, X, feature_mask=None):
        """The class probabilities; for two classes ``p1 - 0.5`` (positive: the second class)."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        return like_input(self._proba_tensor(X, feature_mask)[1], X)

    def predict(self, X, feature_mask=None):
        """The class of highest probability."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        if len(self.classes_) == 2:
            best = (self._proba_tensor(X, feature_mask)[1] > 0).long()
        else:
            best = torch.cat([top_group(w, self._protos.groups[idx]) for _, _, w, idx in self._soft(X, feature_mask)])
        labels = self.classes_[best.cpu().numpy()]
        if isinstance(X, torch.Tensor) and labels.dtype.kind in "iuf":
            return torch.as_tensor(labels, device=X.device)
        return labels

    _carried = ()
