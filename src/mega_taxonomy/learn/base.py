"""What the four prototype estimators share: parameters, the fit (seeding, Lloyd passes, pruning,
feature weights, finetuning), the streaming step, and the top-k search at inference time.

The streaming step lives in ``streaming.py`` (a mixin of this base). A subclass says how targets
become group memberships (``_memberships``), how many prototypes a group gets (``_group_k``), its
finetuning loss (``_loss``) and what a fit leaves beside the prototypes (``_after_fit``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions
from ..cluster.kmeans import seed_of
from .distance import LEARN_METRICS, exact_distances, pairwise, scale_features
from .finetune import adam_epochs, learning_rate_range
from .inputs import batches, check_features, check_mask, compute_device, n_rows, torch_dtype
from .prototypes import Prototypes, apply_means, assign, auto_k, batch_stats, seed_group
from .search import LazySearcher
from .soft import SOFT_TYPES, soft_weights
from .streaming import StreamingSteps

__all__ = ["COMMON_CONSTRAINTS", "PrototypeLearner"]

SEED_ROWS = 64  # rows sampled per starting prototype of a group (k-means++ runs on them)
PASS_BATCH = 65_536  # rows per batch of a pass and of inference

COMMON_CONSTRAINTS = {
    "metric": [StrOptions(set(LEARN_METRICS))],
    "soft_type": [StrOptions(set(SOFT_TYPES))],
    "top_k": [Interval(Integral, -1, None, closed="left")],
    "temperature": [Interval(Real, 0, None, closed="neither")],
    "init_mode": [StrOptions({"kmeans++", "random"})],
    "max_iter": [Interval(Integral, 0, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="left")],
    "ema_decay": [Interval(Real, 0, 1, closed="right")],
    "finetune_epochs": [Interval(Integral, 0, None, closed="left")],
    "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "auto_feature_weights": ["boolean"],
    "diversity_reg": [Interval(Real, 0, None, closed="left")],
    "l2_reg": [Interval(Real, 0, None, closed="left")],
    "use_index": ["boolean", StrOptions({"auto"})],
    "device": [str, torch.device],
    "dtype": [StrOptions({"float32", "float64", "float16", "bfloat16"})],
    "random_state": ["random_state"],
}


class PrototypeLearner(StreamingSteps, BaseEstimator):
    """Base of the prototype estimators (not public: use the four estimators)."""

    # -- set-up ----------------------------------------------------------------------------
    def _device(self):
        return compute_device(self.device)

    def _work_dtype(self):
        return torch.float64 if self.dtype == "float64" else torch.float32

    def _weights(self):
        fw = getattr(self, "feature_weights_", None)
        return None if fw is None else torch.as_tensor(fw, device=self._device(), dtype=self._work_dtype())

    def _new_state(self, n_groups):
        self._rng = np.random.default_rng(seed_of(self.random_state))
        self._protos = Prototypes.empty(self.n_features_in_, n_groups, self._device(), self._work_dtype())
        self._scale_sum, self._scale_mass = 0.0, 0.0
        self._k_target = {}  # group -> prototypes that fit gave it
        self._k_ratio = {}  # group -> dispersion ratio (a stream with k_init "auto")
        self._seen = None  # rows seen per group by a stream
        self._adam = None
        self.feature_weights_ = None
        self.n_iter_ = 0

    # -- fit -------------------------------------------------------------------------------
    def _fit_prototypes(self, X, rows, groups, weights, mask=None, prune=True):
        """Seed every group, run Lloyd passes, prune, and export. ``rows, groups, weights``: the
        memberships (numpy)."""
        self._seed(X, rows, groups, mask)
        stats = self._lloyd(X, rows, groups, weights, mask)
        if self.auto_feature_weights:
            # From the converged unweighted prototypes (seeds are data rows: their residuals say
            # nothing yet), then Lloyd again in the weighted space.
            self._set_feature_weights(stats)
            stats = self._lloyd(X, rows, groups, weights, mask)
        self._scale_sum, self._scale_mass = stats["dist"], stats["mass"]
        if prune:
            self._protos.prune()
        self._export()

    def _lloyd(self, X, rows, groups, weights, mask):
        """Lloyd passes until the squared shift is below ``tol`` times the data's variance; the
        last pass's statistics."""
        for _ in range(max(1, self.max_iter)):
            shift, stats = self._pass(X, rows, groups, weights, mask)
            self.n_iter_ += 1
            if shift <= self.tol * max(stats["spread"], 1e-30):
                break
        return stats

    def _seed(self, X, rows, groups, mask):
        """Starting prototypes of every group: k-means++ on up to ``SEED_ROWS`` rows per prototype."""
        order = self._rng.permutation(len(rows))
        order = order[np.argsort(groups[order], kind="stable")]
        sizes = np.bincount(groups, minlength=self._protos.n_groups)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        spread = self._global_spread(X, rows, order[: min(len(order), 4096)])
        seeds, owners = [], []
        for g in np.flatnonzero(sizes):
            upper = self._k_param() if self._k_param() != "auto" else max(1, int(math.sqrt(sizes[g])))
            take = order[starts[g]: starts[g] + min(sizes[g], SEED_ROWS * int(upper) + 64)]
            x = next(batches(X, len(take), self._device(), self._work_dtype(), rows=rows[take]))[2]
            k = self._group_k(g, (x, int(sizes[g]), spread))
            self._k_target[int(g)] = k
            seeds.append(seed_group(x, k, self._rng, self.metric, self.init_mode))
            owners.append(torch.full((seeds[-1].shape[0],), int(g), dtype=torch.int64))
        if seeds:
            self._protos.add(torch.cat(seeds), torch.cat(owners).to(self._device()))

    def _global_spread(self, X, rows, sample):
        x = next(batches(X, max(1, len(sample)), self._device(), torch.float64, rows=rows[np.sort(sample)]))[2]
        return float(((x - x.mean(0)) ** 2).sum(1).mean())

    def _group_k(self, g, info):
        """Target prototypes of group ``g``: ``k_init``, or "auto" from ``info = (rows, n, spread)``:
        a sample of the group's rows, its size and the whole data's spread."""
        k = self._k_param()
        if k != "auto":
            return int(k)
        x, n, spread = info
        return auto_k(x, spread, limit=max(1, int(math.sqrt(n))), n_total=n)

    def _k_param(self):
        return self.k_init

    def _pass(self, X, rows, groups, weights, mask, *, decay=None):
        """One Lloyd pass over the memberships (an update of all prototypes to their means)."""
        p, dim = self._protos.vectors.shape
        dev, wd = self._device(), self._work_dtype()
        sums = torch.zeros(p, dim, dtype=torch.float64, device=dev)
        mass = torch.zeros(p, dtype=torch.float64, device=dev)
        coord = None if mask is None else torch.zeros(p, dim, dtype=torch.float64, device=dev)
        resid = torch.zeros(dim, dtype=torch.float64, device=dev)
        moments = torch.zeros(2, dim, dtype=torch.float64, device=dev)
        dist_sum = 0.0
        fw = self._weights()
        for lo, hi, x, m in batches(X, PASS_BATCH, dev, wd, mask=mask, rows=rows):
            g = torch.as_tensor(groups[lo:hi], device=dev)
            w = torch.as_tensor(weights[lo:hi], device=dev, dtype=torch.float64)
            d, labels = assign(self._protos, x, g, self.metric, fw, m)
            s, ms, c = batch_stats(self._protos, x, labels, w, m)
            sums += s
            mass += ms
            if coord is not None:
                coord += c
            ok = labels >= 0
            dist_sum += float((d[ok].double() * w[ok]).sum())
            diff = (x[ok].double() - self._protos.vectors[labels[ok]].double()) ** 2
            resid += (diff * w[ok, None]).sum(0)
            moments += torch.stack([(x.double() * w[:, None]).sum(0), (x.double() ** 2 * w[:, None]).sum(0)])
        shift = apply_means(self._protos, sums, mass, coord, self.metric, decay=decay)
        total = float(mass.sum()) or 1.0
        var = moments[1] / total - (moments[0] / total) ** 2
        return shift, {"dist": dist_sum, "mass": total, "resid": resid / total, "var": var,
                       "spread": float(var.clamp_min(0).mean())}

    def _set_feature_weights(self, stats):
        """ANOVA-like weights: ``1 - within / total`` variance of each feature around its prototype,
        normalized to mean 1 (a feature that the prototypes do not explain weighs ~0)."""
        var = stats["var"].clamp_min(1e-30)
        w = (1.0 - stats["resid"] / var).clamp(0.0, 1.0)
        w = torch.where(stats["var"] > 0, w, torch.zeros_like(w))
        mean = float(w.mean())
        w = w / mean if mean > 0 else torch.ones_like(w)
        self.feature_weights_ = w.cpu().numpy().astype(np.float64)

    # -- finetuning ------------------------------------------------------------------------
    def _trainables(self):
        """Leaf tensors that the finetuning moves (subclasses add theirs)."""
        params = {"prototypes": self._protos.vectors.detach().float().clone().requires_grad_(True)}
        if self.feature_weights_ is not None:
            fw = torch.as_tensor(self.feature_weights_, device=self._device(), dtype=torch.float32)
            params["log_feature_weights"] = fw.clamp_min(1e-6).log().requires_grad_(True)
        return params

    def _set_trainables(self, params):
        with torch.no_grad():
            v = params["prototypes"].detach()
            if self.metric == "cosine":
                v = torch.nn.functional.normalize(v, dim=1)
            self._protos.vectors = v.to(self._protos.vectors.dtype)
            if "log_feature_weights" in params:
                self.feature_weights_ = params["log_feature_weights"].detach().exp().double().cpu().numpy()
        self._export()

    def _distances(self, params, x, mask=None, columns=None):
        """Differentiable (n, P) distances (or to the prototypes ``columns``)."""
        c = params["prototypes"] if columns is None else params["prototypes"][columns]
        fw = params["log_feature_weights"].exp() if "log_feature_weights" in params else None
        x = x.float()
        return pairwise(scale_features(x, fw, self.metric), scale_features(c, fw, self.metric), self.metric, mask=mask)

    def _regularizers(self, params):
        c = params["prototypes"]
        loss = c.new_zeros(())
        if self.l2_reg:
            loss = loss + self.l2_reg * (c * c).sum(1).mean()
        if self.diversity_reg and c.shape[0] > 1:
            # Penalize prototypes of one group that sit close together (mode collapse).
            same = self._protos.groups[:, None] == self._protos.groups[None, :]
            same &= ~torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
            if bool(same.any()):
                d = pairwise(c, c, "euclidean" if self.metric == "l1" else self.metric)
                loss = loss + self.diversity_reg * torch.exp(-d[same] / self.distance_scale_).mean()
        return loss

    def _finetune(self, X, targets, weights, mask, *, epochs, learning_rate, early_stopping_rounds):
        params = self._trainables()
        lr = learning_rate or self.learning_rate
        if lr is None:
            lr = learning_rate_range(self, params, X, targets, weights, mask)
        gen = torch.Generator().manual_seed(int(self._rng.integers(2 ** 31)))
        params, self.finetune_history_ = adam_epochs(self, params, X, targets, weights, mask, epochs=epochs, lr=lr,
                                                     generator=gen, early_stopping_rounds=early_stopping_rounds)
        self.learning_rate_ = lr
        self._set_trainables(params)

    def _gradient_step(self, x, t, w, mask):
        """One Adam step on one batch, the optimizer's state kept from call to call."""
        if not self._protos.vectors.shape[0]:
            raise ValueError("no prototypes yet: stream a batch with gradient_step=False (or fit) first")
        if self._adam is None:
            params = self._trainables()
            self._adam = (params, torch.optim.Adam(list(params.values()), lr=self.learning_rate or 1e-2))
        params, opt = self._adam
        opt.zero_grad()
        loss = self._loss(params, x, t, w, mask) + self._regularizers(params)
        loss.backward()
        opt.step()
        adam = self._adam
        self._set_trainables(params)
        self._adam = adam
        return float(loss.detach())

    def _weights_of(self, sample_weight, n):
        if sample_weight is None:
            return np.ones(n)
        w = sample_weight.detach().cpu().numpy() if isinstance(sample_weight, torch.Tensor) else sample_weight
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"sample_weight must be {n} finite non-negative numbers, got shape {w.shape}")
        return w

    def _batch_tensor(self, X, mask):
        _, _, x, m = next(batches(X, n_rows(X), self._device(), self._work_dtype(), mask=mask))
        return x, m

    _y_options: dict = {}  # noqa: RUF012 (read only)

    def finetune(self, X, y, *, epochs=10, learning_rate=None, early_stopping_rounds=None, sample_weight=None,
                 feature_mask=None):
        """Adam epochs on the prototypes (and what they carry). ``learning_rate`` None: the
        ``learning_rate`` parameter, else a range test (:meth:`find_learning_rate`).
        ``early_stopping_rounds``: stop when the loss on a held-out tenth of the rows has not
        improved for that many epochs, keeping the best state.

        Returns
        -------
        self
        """
        check_is_fitted(self)
        X, y = check_features(self, X, reset=False, y=y, **self._y_options)
        w = torch.as_tensor(self._weights_of(sample_weight, n_rows(X)), device=self._device())
        self._finetune(X, self._targets(y), w, check_mask(feature_mask, X), epochs=epochs,
                       learning_rate=learning_rate, early_stopping_rounds=early_stopping_rounds)
        return self

    def find_learning_rate(self, X, y, sample_weight=None, feature_mask=None) -> float:
        """Adam's rate from a range test on ``X, y``: the rate where the loss falls fastest over
        a geometric sweep from 1e-4 to 1 (the model is left unchanged)."""
        check_is_fitted(self)
        X, y = check_features(self, X, reset=False, y=y, **self._y_options)
        w = torch.as_tensor(self._weights_of(sample_weight, n_rows(X)), device=self._device())
        return learning_rate_range(self, self._trainables(), X, self._targets(y), w, check_mask(feature_mask, X))

    # -- inference -------------------------------------------------------------------------
    @property
    def distance_scale_(self):
        scale = self._scale_sum / self._scale_mass if self._scale_mass else 1.0
        return scale if scale > 0 else 1.0

    def _searcher(self):
        return self._search.get()

    def _neighbors(self, x, mask=None, k=None):
        """(distances, prototype indices) of the ``k`` (``top_k``) nearest prototypes of x."""
        p = self._protos.vectors.shape[0]
        k = p if (k or self.top_k) in (-1, 0) else min(k or self.top_k, p)
        if self.soft_type == "hard":
            k = 1
        fw = self._weights()
        if mask is None:
            _, idx = self._searcher().search(scale_features(x, fw, self.metric), k)
        else:
            c = scale_features(self._stored.to(x.dtype), fw, self.metric)
            _, idx = pairwise(scale_features(x, fw, self.metric), c, self.metric, mask=mask).topk(k, 1, largest=False)
        return exact_distances(x, self._stored, idx, self.metric, fw, mask), idx

    def _soft(self, X, feature_mask=None):
        """Per batch ``(lo, hi, weights (n, k), prototype indices (n, k))``."""
        check_is_fitted(self)
        mask = check_mask(feature_mask, X)
        for lo, hi, x, m in batches(X, PASS_BATCH, self._device(), self._work_dtype(), mask=mask):
            d, idx = self._neighbors(x, m)
            yield lo, hi, soft_weights(d.to(self._work_dtype()), self.soft_type, self.temperature,
                                       self.distance_scale_), idx

    def _export(self):
        """The fitted attributes from the internal state (numpy, on the host)."""
        # Training keeps float32 (float64) masters; what is stored and searched is rounded to
        # ``dtype`` (numpy has no bfloat16: prototypes_ holds bfloat16 values in float32 then).
        stored = self._protos.vectors.detach().to(torch_dtype(self.dtype))
        self._stored = stored.to(self._work_dtype())
        c = scale_features(self._stored, self._weights(), self.metric)
        self._search = LazySearcher(c, self.metric, self.use_index, seed_of(self.random_state))
        self.prototypes_ = (stored.float() if self.dtype == "bfloat16" else stored).cpu().numpy()
        self.prototype_groups_ = self._protos.groups.cpu().numpy()
        self.prototype_counts_ = self._protos.mass.cpu().numpy()

    @property
    def n_prototypes_(self):
        return int(self.prototypes_.shape[0])

    def model_nbytes(self) -> int:
        """Bytes of the fitted model's arrays (prototypes and what they carry), the model size."""
        check_is_fitted(self)
        arrays = [self.prototype_groups_] + [getattr(self, a) for a in self._carried]
        value_bytes = torch.tensor([], dtype=torch_dtype(self.dtype)).element_size()
        return int(self.prototypes_.size * value_bytes + sum(a.nbytes for a in arrays if a is not None))

    _carried: tuple = ()

    def _rows_all(self, X):
        return np.arange(n_rows(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = False
        return tags
