"""FastMultiLabelKMeansClassifier: an independent prototype sub-topology per tag (prototypes of
the rows that carry the tag and of those that do not), trained with the asymmetric loss."""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin, MultiOutputMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .._sklearn_compat import Interval, StrOptions, _fit_context
from .base import PASS_BATCH, PrototypeLearner
from .classifier import FastKMeansClassifier
from .distance import exact_distances, pairwise, scale_features
from .inputs import batches, check_features, check_mask, like_input, n_rows, require_y
from .soft import binary_proba, group_logsumexp, soft_weights
from .thresholds import micro_f1_thresholds, outcome_counts

__all__ = ["FastMultiLabelKMeansClassifier", "gap_cut"]


def gap_cut(proba: np.ndarray) -> np.ndarray:
    """Tags of every row above its largest drop between consecutive sorted probabilities (at
    least one tag per row): a threshold-free decision.

    >>> gap_cut(np.array([[0.9, 0.1, 0.8, 0.3]])).tolist()
    [[1, 0, 1, 0]]
    """
    order = np.argsort(-proba, axis=1, kind="stable")
    s = np.take_along_axis(proba, order, 1)
    if s.shape[1] == 1:
        return (s >= 0.5).astype(np.int64)
    cut = np.argmax(s[:, :-1] - s[:, 1:], axis=1)  # the drop after position cut
    keep = np.arange(s.shape[1])[None, :] <= cut[:, None]
    out = np.zeros_like(proba, dtype=np.int64)
    np.put_along_axis(out, order, keep.astype(np.int64), 1)
    return out


class FastMultiLabelKMeansClassifier(MultiOutputMixin, ClassifierMixin, PrototypeLearner):
    """Multi-label prototype classifier.

    Every tag ``t`` has its own prototypes: ``k_init`` of the rows that carry it (group ``2t + 1``)
    and ``k_init`` of the rows that do not (group ``2t``), grown by k-means within those groups.
    The probability of a tag is the soft share of its positive prototypes among the ``top_k``
    nearest of *its own* prototypes. Finetuning minimizes the asymmetric loss (ASL, Ridnik et al.
    2021) of ``sigmoid(logsumexp_pos(-d/T) - logsumexp_neg(-d/T))`` per tag.

    Parameters
    ----------
    k_init : int or "auto", default="auto"
        Prototypes per tag and side.
    asl_gamma_pos, asl_gamma_neg : float, default=0.0, 1.0
        Focusing exponents of the positive and negative terms of ASL (0, 0: binary cross-entropy).
    asl_clip : float, default=0.05
        Probability margin under which a negative is dropped from the loss.
    threshold : float or "auto", default="auto"
        Tag decision for ``predict(X)``: probability above it. "auto": a cut per tag
        (``thresholds_``) maximizing the micro F1 of the training rows (``fit``), or of every
        streamed batch before it is learnt (``partial_fit``); see ``learn/thresholds.py``.
        ``predict(X, strategy="gap")`` needs none.
    The other parameters are :class:`FastKMeansClassifier`'s.

    Attributes
    ----------
    classes_ : ndarray of shape (n_tags,)
        ``arange(n_tags)``: the columns of ``y``.
    prototypes_ : ndarray of shape (n_prototypes, n_features)
    prototype_groups_ : ndarray of shape (n_prototypes,)
        ``2 * tag + (1 if positive side)``.
    thresholds_ : ndarray of shape (n_tags,)
        The cut of every tag (``threshold``, or chosen for "auto").

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0, 0], [0, 1], [5, 5], [5, 6]], dtype=np.float32)
    >>> Y = np.array([[1, 0], [1, 0], [1, 1], [1, 1]])
    >>> clf = FastMultiLabelKMeansClassifier(k_init=1, random_state=0, device="cpu").fit(X, Y)
    >>> clf.predict(np.array([[0, 0.4], [5, 5.2]])).tolist()
    [[1, 0], [1, 1]]
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in FastKMeansClassifier._parameter_constraints.items()
           if k not in ("negative_sampling", "repulsion_factor")},
        "asl_gamma_pos": [Interval(Real, 0, None, closed="left")],
        "asl_gamma_neg": [Interval(Real, 0, None, closed="left")],
        "asl_clip": [Interval(Real, 0, 1, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"})],
    }

    def __init__(self, k_init="auto", *, asl_gamma_pos=0.0, asl_gamma_neg=1.0, asl_clip=0.05, threshold="auto",
                 metric="euclidean", soft_type="softmax_scaled", top_k=5, temperature=0.3, init_mode="kmeans++",
                 max_iter=10, tol=1e-4, ema_decay=1.0, finetune_epochs=0, learning_rate=None, batch_size=1024,
                 auto_feature_weights=False, diversity_reg=0.0, l2_reg=0.0, use_index=False, device="auto",
                 dtype="float32", random_state=None):
        self.k_init = k_init
        self.asl_gamma_pos = asl_gamma_pos
        self.asl_gamma_neg = asl_gamma_neg
        self.asl_clip = asl_clip
        self.threshold = threshold
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

    _y_options: dict = {"multi_output": True}

    def _targets(self, y):
        return torch.as_tensor(self._indicator(y), device=self._device(), dtype=torch.float32)

    # -- targets ---------------------------------------------------------------------------
    def _start(self, y, classes=None):
        """``classes_`` from the first ``y``: an indicator matrix (multi-label: ``arange(n_tags)``),
        or labels (one tag per class, one-vs-rest: ``predict`` then answers labels)."""
        self.multilabel_ = np.ndim(y) == 2 and np.shape(y)[1] > 1 or type_of_target(y) == "multilabel-indicator"
        if self.multilabel_:
            self.classes_ = np.arange(np.shape(y)[1])
        else:
            check_classification_targets(y)
            self.classes_ = np.unique(np.ravel(y) if classes is None else np.asarray(classes))
        self._new_state(2 * len(self.classes_))

    def _indicator(self, y):
        """``y`` as an (n, n_tags) 0/1 matrix."""
        if not self.multilabel_:
            y = column_or_1d(y, warn=True)
            check_classification_targets(y)
            pos = np.searchsorted(self.classes_, y).clip(max=len(self.classes_) - 1)
            if (self.classes_[pos] != y).any():
                raise ValueError(f"y contains labels not in classes_: {np.setdiff1d(y, self.classes_)[:5].tolist()}")
            return np.eye(len(self.classes_), dtype=np.int64)[pos]
        y = np.asarray(y)
        if y.ndim != 2 or not set(np.unique(y).tolist()) <= {0, 1}:
            raise ValueError(f"y must be a binary indicator matrix (n_samples, n_tags), got {type_of_target(y)!r} "
                             "(Unknown label type for a multi-label classifier)")
        if y.shape[1] != len(self.classes_):
            raise ValueError(f"y has {y.shape[1]} tags, the model {len(self.classes_)}")
        return y.astype(np.int64)

    def _memberships(self, y):
        """(rows, groups): every row in one group of every tag."""
        n, t = y.shape
        rows = np.repeat(np.arange(n), t)
        groups = (2 * np.tile(np.arange(t), n) + y.reshape(-1)).astype(np.int64)
        return rows, groups

    # -- fit -------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Prototypes of both sides of every tag, Lloyd passes, ``finetune_epochs`` of Adam."""
        require_y(self, y)
        X, y = check_features(self, X, reset=True, y=y, **self._y_options)
        self._start(y)
        y = self._indicator(y)
        rows, groups = self._memberships(y)
        self._fit_prototypes(X, rows, groups, np.ones(len(rows)))
        self._build_members()
        if self.finetune_epochs:
            self.finetune(X, y, epochs=self.finetune_epochs)  # cuts the thresholds after it
        else:
            self._outcomes = None
            self._count_outcomes(X, y)
        return self

    def finetune(self, X, y, **kwargs):
        """:meth:`PrototypeLearner.finetune <mega_taxonomy.learn.base.PrototypeLearner.finetune>`,
        then for ``threshold="auto"`` the cuts again on ``X, y`` (the model they were cut for is
        gone)."""
        super().finetune(X, y, **kwargs)
        X, y = check_features(self, X, reset=False, y=y, **self._y_options)
        self._outcomes = None
        w = kwargs.get("sample_weight")
        self._count_outcomes(X, self._indicator(y), None if w is None else self._weights_of(w, n_rows(X)),
                             kwargs.get("feature_mask"))
        return self

    def _count_outcomes(self, X, y, w=None, feature_mask=None):
        """Add the outcomes of the rows ``X, y`` under the current model to the counts that
        ``threshold="auto"`` cuts from, and set ``thresholds_``."""
        if self.threshold != "auto" or not self.multilabel_:
            self.thresholds_ = np.full(len(self.classes_), 0.5 if self.threshold == "auto" else float(self.threshold))
            return
        if self._protos.vectors.shape[0]:
            counts = outcome_counts(self._proba_tensor(X, feature_mask).cpu().numpy(), y, w)
            self._outcomes = counts if self._outcomes is None else self._outcomes + counts
        if self._outcomes is None:
            self.thresholds_ = np.full(len(self.classes_), 0.5)
        else:
            self.thresholds_ = micro_f1_thresholds(self._outcomes)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One streaming step (:meth:`fit_batch` without gradient); ``classes`` for label input."""
        return self.fit_batch(X, y, sample_weight=sample_weight, classes=classes)

    def fit_batch(self, X, y, sample_weight=None, feature_mask=None, gradient_step=False, classes=None):
        """One batch of a stream: an EMA step of every tag's prototypes, or one Adam step."""
        first = not hasattr(self, "classes_")
        if first:
            self._validate_params()
        X, y = check_features(self, X, reset=first, y=y, **self._y_options)
        if first:
            self._start(y, classes)
            self._outcomes = None
        y = self._indicator(y)
        w = self._weights_of(sample_weight, n_rows(X))
        mask = check_mask(feature_mask, X)
        self._count_outcomes(X, y, w, feature_mask)  # prequential: the batch judged before it is learnt
        if gradient_step:
            x, m = self._batch_tensor(X, mask)
            self._gradient_step(x, self._targets(y), torch.as_tensor(w, device=x.device), m)
        else:
            rows, groups = self._memberships(y)
            self._ema_step(X, rows, groups, w[rows], mask)
            self.n_iter_ += 1
        self._build_members()
        return self

    def _build_members(self):
        """(n_tags, width) prototype index of every tag's prototypes, -1 padding, and whether
        each slot is a positive prototype."""
        groups = self._protos.groups
        tags = groups // 2
        n_tags = len(self.classes_)
        counts = torch.bincount(tags, minlength=n_tags)
        width = max(1, int(counts.max()) if counts.numel() else 1)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        slot = torch.arange(len(tags), device=tags.device) - starts[tags]
        members = torch.full((n_tags, width), -1, dtype=torch.int64, device=tags.device)
        members[tags, slot] = torch.arange(len(tags), device=tags.device)
        self._members = members
        self._positive = (groups % 2 == 1)

    # -- finetuning ------------------------------------------------------------------------
    def _loss(self, params, x, t, w, mask):
        d = self._distances(params, x, mask)
        z = -d / (self.temperature * self.distance_scale_)
        lse = group_logsumexp(z, self._protos.groups, 2 * len(self.classes_))
        neg, pos = lse[:, 0::2], lse[:, 1::2]
        # A side without prototypes decides the tag: its logit is -inf.
        logit = torch.where(torch.isfinite(pos) & torch.isfinite(neg), pos - neg,
                            torch.where(torch.isfinite(pos), 30.0, -30.0))
        p = torch.sigmoid(logit)
        p_neg = (p - self.asl_clip).clamp_min(0) if self.asl_clip else p
        loss_pos = t * (1 - p) ** self.asl_gamma_pos * torch.nn.functional.logsigmoid(logit)
        loss_neg = (1 - t) * p_neg ** self.asl_gamma_neg * torch.log((1 - p_neg).clamp_min(1e-8))
        per_row = -(loss_pos + loss_neg).sum(1)
        w = w.to(per_row.dtype)
        return (w * per_row).sum() / w.sum().clamp_min(1e-30)

    # -- inference -------------------------------------------------------------------------
    def _proba_tensor(self, X, feature_mask=None):
        check_is_fitted(self)
        mask = check_mask(feature_mask, X)
        fw = self._weights()
        c = scale_features(self._stored, fw, self.metric)
        members, positive = self._members, self._positive
        k = members.shape[1] if self.top_k in (-1, 0) else min(self.top_k, members.shape[1])
        k = 1 if self.soft_type == "hard" else k
        out = []
        for _, _, x, m in batches(X, PASS_BATCH // 8, self._device(), self._work_dtype(), mask=mask):
            d = pairwise(scale_features(x, fw, self.metric), c, self.metric, mask=m)
            dt = d[:, members.clamp_min(0)]  # (n, tags, width)
            dt = torch.where(members[None] >= 0, dt, torch.full_like(dt, torch.inf))
            slot = dt.topk(k, dim=2, largest=False).indices
            n, n_tags = slot.shape[0], slot.shape[1]
            idx = members[None].expand(n, -1, -1).gather(2, slot).reshape(n, n_tags * k)
            # Distances again from each row alone: the same bits whatever the batch.
            dk = exact_distances(x, self._stored, idx, self.metric, fw, m).reshape(n * n_tags, k)
            idx = idx.reshape(n * n_tags, k)
            wk = soft_weights(dk, self.soft_type, self.temperature, self.distance_scale_)
            share = (wk * positive[idx.clamp_min(0)].to(wk.dtype)).sum(1).reshape(n, n_tags)
            out.append(share)
        p = torch.cat(out).double()
        if not self.multilabel_:  # one-vs-rest over labels: a distribution over the classes
            p = p / p.sum(1, keepdim=True).clamp_min(1e-300)
            if len(self.classes_) == 2:
                p = binary_proba(p)[0]
        return p

    def _tag_proba(self, X, feature_mask=None):
        """(probabilities, cut): the tags' shares, and the cut above which a tag is predicted.
        With ``threshold="auto"`` each share is mapped piecewise linearly so that its tag's cut
        lands on 0.5 (0 and 1 stay): the probabilities then agree with ``predict`` (rounded, they
        are its answer) and rank the rows of a tag as the shares do."""
        p = self._proba_tensor(X, feature_mask)
        if not self.multilabel_ or self.threshold != "auto":
            return p, (0.5 if not self.multilabel_ else float(self.threshold))
        c = torch.as_tensor(self.thresholds_, dtype=p.dtype, device=p.device)
        return torch.where(p <= c, 0.5 * p / c, 0.5 + 0.5 * (p - c) / (1 - c)), 0.5

    def predict_proba(self, X, feature_mask=None):
        """(n, n_tags) probability of every tag (for label input: of every class, rows summing to
        1); with ``threshold="auto"`` rescaled so that 0.5 is each tag's cut."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        return like_input(self._tag_proba(X, feature_mask)[0], X)

    def decision_function(self, X, feature_mask=None):
        """(n, n_tags) scores: probability minus the cut (positive: the tag is predicted); for
        label input the classifier's (``p1 - 0.5`` for two classes, else the probabilities)."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        p, cut = self._tag_proba(X, feature_mask)
        if self.multilabel_:
            return like_input(p - cut, X)
        return like_input(p[:, 1] - 0.5 if len(self.classes_) == 2 else p, X)

    def predict(self, X, strategy="threshold", feature_mask=None):
        """(n, n_tags) indicator: probability above the cut (``strategy="threshold"``: 0.5 of
        :meth:`predict_proba`), or above each row's largest probability gap (``strategy="gap"``,
        :func:`gap_cut`)."""
        check_is_fitted(self)
        X, _ = check_features(self, X, reset=False)
        p, cut = self._tag_proba(X, feature_mask)
        if not self.multilabel_:
            best = (p[:, 1] > 0.5).long() if len(self.classes_) == 2 else p.argmax(1)
            labels = self.classes_[best.cpu().numpy()]
            if isinstance(X, torch.Tensor) and labels.dtype.kind in "iuf":
                return torch.as_tensor(labels, device=X.device)
            return labels
        if strategy == "gap":
            out = torch.as_tensor(gap_cut(p.cpu().numpy()))
        elif strategy == "threshold":
            out = (p > cut).long()
        else:
            raise ValueError(f"strategy must be 'threshold' or 'gap', got {strategy!r}")
        return like_input(out, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags
