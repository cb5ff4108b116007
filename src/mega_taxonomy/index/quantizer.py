"""Coarse quantizers of an IVF index: k-means centroids or a Gaussian mixture, and how a vector is
assigned to one list or several (multi-assignment).

Both quantizers score a vector against every list with one matrix product of an augmented
operand (``features(x) @ W.T``), lower is better:

- k-means: the metric's distance to the centroid (squared L2, ``1 - cos`` with unit centroids
  from spherical k-means, or ``-<x, c>`` for inner product, as FAISS's IVF probes);
- GMM ("diag" or "spherical"): ``-log(w_k N(x | mu_k, Sigma_k))``, the negated weighted
  log-likelihood; the responsibilities are ``exp(-score - logsumexp(-scores))``. Cosine data
  is normalized before it is fitted and scored. Which lists a query probes (and a vector's
  first list) follows ``probe``: "mean" (the default) ranks the components by the metric's
  distance to their means, as k-means does; "likelihood" by responsibility. Ranking by
  likelihood finds a query's neighbours badly: on GloVe (50-d, diag) the query's most likely
  components hold its neighbours far less often than its nearest means do (recall@10 0.88 vs
  0.95 at nprobe 16 of 256 lists), because the log-determinant and per-dimension precisions
  favour broad or tight components regardless of where the neighbours lie.

Multi-assignment (``add``): "single" puts every vector in its best list. "multi" with k-means
(spilling) adds the next lists, up to ``max_assign`` in all, whose score ``s`` is within
``threshold`` of the best ``s1``: ``s <= s1 + (threshold - 1) |s1|``, i.e. ``s <= threshold *
s1`` for non-negative distances (default 1.1). "multi" with a GMM adds the next lists, up to
``max_assign``, whose responsibility is at least ``threshold`` (the seed's tau; default
``1 / nlist``), by responsibility. The first list (the probe rule's best) is always kept.

"soar" (k-means, after ScaNN's SOAR: Sun et al., "SOAR: Improved Indexing for Approximate
Nearest Neighbor Search", NeurIPS 2023) stores every vector twice: in its nearest list, with
residual r = x - c1, and in the list c (among the ``SOAR_CANDIDATES`` nearest) of least
``|x - c|^2 + lambda <r, x - c>^2 / |r|^2`` (``threshold`` = lambda, default 1). A query whose
nearest-list probe misses x is one whose direction from x lies along r; the second list is
chosen so that its residual is nearly orthogonal to r, where plain spilling picks the next
nearest list, whose residual tends to point the same way and so fails for the same queries.
Cosine rows and centroids are unit vectors here; inner product takes the rows as they are.

Grouped coarse search (``search_grouped``): the lists' centroids (or means) grouped under
``group_centroids`` (about sqrt(nlist), from a k-means of the centroids: ``group_of`` is each
list's group), a row is scored against the groups, then against the lists of its
``groups_probed`` nearest groups only; the best of those are its probes. Its coarse distances are
the groups plus the lists of the groups probed, where the flat search scores every list (FAISS's
``IndexIVFFlat`` with its flat quantizer): at nlist 4096 that was 4,096 of the 10.5k distances a
GloVe query needed at recall 0.90 (``benchmarks/results/ivf_soar.json``). A list whose group is not
probed is missed even when it is among the nearest: recall per probe drops a little.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ops.probe import smallest
from ..threads import cpu_threads, parallel_map

GMM_COVARIANCES = ("diag", "spherical")
SOAR_CANDIDATES = 32  # lists scored for a vector's second list: the nearest ones (the loss grows with |x - c|^2)
GMM_PROBES = ("mean", "likelihood")


class Quantizer:
    """Scores of vectors against ``nlist`` lists (see the module's docstring).

    Parameters
    ----------
    kind : {"kmeans", "gmm"}
    metric : {"euclidean", "cosine", "inner_product"}
    arrays : dict
        k-means: ``centroids`` (L, d); GMM: ``weights`` (L,), ``means`` (L, d), ``precisions``
        (L, d) for "diag" or (L,) for "spherical".
    probe : {"mean", "likelihood"}, default="mean"
        GMM only: rank lists by the distance to the means, or by responsibility.
    """

    def __init__(self, kind: str, metric: str, arrays: dict, probe: str = "mean"):
        if probe not in GMM_PROBES:
            raise ValueError(f"probe must be one of {GMM_PROBES}, got {probe!r}")
        self.kind, self.metric, self.arrays = kind, metric, {k: np.asarray(v) for k, v in arrays.items()}
        self.probe = probe
        self.centroids = np.asarray(self.arrays["centroids" if kind == "kmeans" else "means"], dtype=np.float32)
        self.nlist, self.dim = self.centroids.shape
        # by_distance: scores are the metric's distance to the centroids / means (else likelihood)
        self.by_distance = kind == "kmeans" or probe == "mean"
        self._w = self._operand(self.by_distance).astype(np.float32)
        self._w_lik = self._operand(False).astype(np.float32) if kind == "gmm" else None

    def _operand(self, by_distance: bool) -> np.ndarray:
        c = self.centroids.astype(np.float64)
        if by_distance and self.kind == "gmm" and self.metric == "cosine":
            c = unit_rows(c)  # the means of unit rows are shorter than 1
        if by_distance:
            if self.metric == "euclidean":
                return np.concatenate([-2 * c, (c * c).sum(1, keepdims=True)], 1)
            if self.metric == "cosine":
                return np.concatenate([-c, np.ones((self.nlist, 1))], 1)
            return np.concatenate([-c, np.zeros((self.nlist, 1))], 1)
        prec = np.asarray(self.arrays["precisions"], dtype=np.float64)
        w = np.asarray(self.arrays["weights"], dtype=np.float64)
        prec = np.broadcast_to(prec[:, None] if prec.ndim == 1 else prec, c.shape)
        const = 0.5 * ((c * c * prec).sum(1) - np.log(prec).sum(1) + self.dim * math.log(2 * math.pi)) - np.log(w)
        return np.concatenate([0.5 * prec, -c * prec, const[:, None]], 1)

    def _features(self, x: np.ndarray, by_distance: bool) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.metric == "cosine":
            x = unit_rows(x)
        ones = np.ones((len(x), 1), np.float32)
        return np.concatenate([x, ones] if by_distance else [x * x, x, ones], 1)

    def scores(self, x: np.ndarray, *, likelihood: bool = False) -> np.ndarray:
        """(n, nlist) float32 scores (lower is better) of the probe rule; squared L2 includes
        ``|x|^2``. ``likelihood``: the GMM's negated weighted log-likelihoods whatever the rule."""
        by_distance = self.by_distance and not likelihood
        s = self._features(x, by_distance) @ (self._w if by_distance or self._w_lik is None else self._w_lik).T
        if by_distance and self.metric == "euclidean":
            s += np.einsum("nd,nd->n", x, x, dtype=np.float32)[:, None]
            np.maximum(s, 0, out=s)
        return s

    def search_torch(self, x: torch.Tensor, m: int):
        """(scores, lists) of the ``m`` best lists of rows on any device (the GPU's search: one
        product and ``torch.topk`` there, the operand moved once per device)."""
        key = str(x.device)
        if getattr(self, "_w_on", None) is None or self._w_on[0] != key:
            self._w_on = (key, torch.as_tensor(self._w, device=x.device))
        w = self._w_on[1]
        x = x.to(torch.float32)
        if self.metric == "cosine":
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        ones = torch.ones(len(x), 1, device=x.device)
        feats = torch.cat([x, ones] if self.by_distance else [x * x, x, ones], 1)
        s = feats @ w.T
        if self.by_distance and self.metric == "euclidean":
            s = (s + (x * x).sum(1, keepdim=True)).clamp_min(0)
        return torch.topk(s, min(m, self.nlist), dim=1, largest=False, sorted=True)

    def search_grouped(self, x: np.ndarray, m: int, groups_probed: int):
        """(scores (n, m), lists (n, m), coarse distances (n,)) of the ``m`` best lists of every
        row among the lists of its ``groups_probed`` nearest groups (see the module's docstring;
        the distance rule only), best first, -1 / inf where those lists number fewer than m.

        Group-major: the rows of a tile are sorted by the groups they probe, and each group's
        lists are scored against all its rows at once, one product a group, into each row's
        candidates end to end (nearest group first); then the m best of every row. Gathering each
        row's candidate centroids instead moved s x group size x (d + 1) floats a row (1.6 MB at
        nlist 8192, s = 42) and bounded the search at 0.6x FAISS's queries/s."""
        if not self.by_distance:
            raise ValueError("a grouped coarse search ranks lists by distance: not a GMM probed by likelihood")
        x = np.asarray(x, dtype=np.float32)
        group_of = self.arrays["group_of"]
        groups = Quantizer("kmeans", self.metric, {"centroids": self.arrays["group_centroids"]})
        n_groups = groups.nlist
        s = min(groups_probed, n_groups)
        members = np.argsort(group_of, kind="stable")  # lists in group order
        sizes = np.bincount(group_of, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        n = len(x)
        out_s = np.full((n, m), np.inf, np.float32)
        out_l = np.full((n, m), -1, np.int64)
        coarse = np.empty(n, np.int64)
        step = max(1, min((1 << 23) // max(int(np.sort(sizes)[-s:].sum()), 1), -(-n // (2 * cpu_threads()))))

        def work(r0):
            rows = slice(r0, min(r0 + step, n))
            _, near = groups.search(x[rows], s)  # (r, s) groups, nearest first
            count = sizes[near]
            coarse[rows] = n_groups + count.sum(1)
            at = np.cumsum(count, 1) - count  # where each probed group's lists start among the row's candidates
            score = np.full((len(near), max(int(count.sum(1).max()), m)), np.inf, np.float32)
            lists = np.full(score.shape, -1, np.int64)
            feats = self._features(x[rows], True)
            pairs = np.argsort(near, axis=None, kind="stable")  # (row, slot) pairs by group
            cuts = np.searchsorted(near.ravel()[pairs], np.arange(n_groups + 1))
            for g in np.flatnonzero(np.diff(cuts)):
                row, slot = np.divmod(pairs[cuts[g]:cuts[g + 1]], s)
                mine = members[starts[g]:starts[g + 1]]
                cols = at[row, slot][:, None] + np.arange(len(mine))
                score[row[:, None], cols] = feats[row] @ self._w[mine].T
                lists[row[:, None], cols] = mine
            if self.metric == "euclidean":
                score += np.einsum("nd,nd->n", x[rows], x[rows], dtype=np.float32)[:, None]
                np.maximum(score, 0, out=score)
            best_s, best = smallest(score, m)
            out_s[rows] = best_s
            found = np.isfinite(best_s)  # fewer lists than m in the groups probed: padding
            out_l[rows] = np.where(found, np.take_along_axis(lists, np.where(found, best, 0), 1), -1)

        parallel_map(work, range(0, n, step))
        return out_s, out_l, coarse

    def search(self, x: np.ndarray, m: int, *, with_lse: bool = False, likelihood: bool = False):
        """(scores (n, m), lists (n, m)) of the ``m`` best lists of every row, best first; and
        with ``with_lse`` the log-sum-exp of ``-scores`` over all lists (GMM responsibilities,
        with ``likelihood``). Rows are scored in tiles of at most 2^22 scores, in parallel threads."""
        x = np.asarray(x, dtype=np.float32)
        n, m = len(x), min(m, self.nlist)
        out_s = np.empty((n, m), np.float32)
        out_l = np.empty((n, m), np.int64)
        lse = np.empty(n, np.float64)
        step = max(1, min((1 << 22) // self.nlist, -(-n // (2 * cpu_threads()))))

        def work(r0):
            rows = slice(r0, min(r0 + step, n))
            s = self.scores(x[rows], likelihood=likelihood)
            out_s[rows], out_l[rows] = smallest(s, m)  # by score, ties to the lower list
            if with_lse:
                neg = -s.astype(np.float64)
                peak = neg.max(1, keepdims=True)
                lse[rows] = peak[:, 0] + np.log(np.exp(neg - peak).sum(1))

        parallel_map(work, range(0, n, step))
        return (out_s, out_l, lse) if with_lse else (out_s, out_l)

    def assign(self, x: np.ndarray, assignment: str, max_assign: int, threshold: float) -> np.ndarray:
        """(n, max_assign) lists of every row (best first), -1 where a row goes to fewer."""
        if assignment == "single" or max_assign == 1:
            return self.search(x, 1)[1]
        if assignment == "soar":
            return self._soar(x, threshold)
        if self.kind == "kmeans":
            s, lists = self.search(x, max_assign)
            keep = s <= s[:, :1] + (threshold - 1.0) * np.abs(s[:, :1])
            keep[:, 0] = True
            return np.where(keep, lists, -1)
        s, lists, lse = self.search(x, max_assign, with_lse=True, likelihood=True)
        keep = np.exp(-s.astype(np.float64) - lse[:, None]) >= threshold
        if not self.by_distance:
            keep[:, 0] = True
            return np.where(keep, lists, -1)
        # the first list is the nearest mean; then the others of enough responsibility, by it
        first = self.search(x, 1)[1]
        extra = np.where(keep & (lists != first), lists, -1)
        extra = np.take_along_axis(extra, np.argsort(extra < 0, axis=1, kind="stable"), 1)[:, :max_assign - 1]
        return np.concatenate([first, extra], 1)

    def _soar(self, x: np.ndarray, lam: float) -> np.ndarray:
        """(n, 2): every row's nearest list and its SOAR spill (see the module's docstring)."""
        x = np.asarray(x, dtype=np.float32)
        c = unit_rows(self.centroids) if self.metric == "cosine" else self.centroids
        out = np.empty((len(x), 2), np.int64)
        m = min(SOAR_CANDIDATES, self.nlist)
        step = max(1, min((1 << 22) // max(m * self.dim, 1), -(-len(x) // (2 * cpu_threads()))))

        def work(r0):
            rows = slice(r0, min(r0 + step, len(x)))
            xs = unit_rows(x[rows]) if self.metric == "cosine" else x[rows]
            lists = self.search(xs, m)[1]
            residual = xs - c[lists[:, 0]]  # r
            others = xs[:, None, :] - c[lists[:, 1:]]  # x - c for the other candidates
            along = np.einsum("nd,nmd->nm", residual, others) ** 2 / np.maximum(
                np.einsum("nd,nd->n", residual, residual), 1e-30)[:, None]
            loss = np.einsum("nmd,nmd->nm", others, others) + lam * along
            out[rows, 0] = lists[:, 0]
            out[rows, 1] = lists[np.arange(len(xs)), 1 + np.argmin(loss, 1)] if m > 1 else -1
        parallel_map(work, range(0, len(x), step))
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero."""
    norm = np.sqrt(np.einsum("nd,nd->n", x, x))
    return x / np.where(norm > 0, norm, 1).astype(x.dtype)[:, None]


def gmm_arrays(gm) -> dict:
    """A fitted :class:`~mega_taxonomy.cluster.GaussianMixture`'s arrays as the quantizer keeps them."""
    if gm.covariance_type not in GMM_COVARIANCES:
        raise ValueError(f"the IVF quantizer takes covariance_type in {GMM_COVARIANCES}, got {gm.covariance_type!r}")
    return {"weights": gm.weights_, "means": gm.means_, "precisions": np.asarray(gm.precisions_cholesky_) ** 2}


def cluster_precisions(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, covariance_type: str,
                       reg: float = 1e-6) -> np.ndarray:
    """Per-cluster precisions (diag: (L, d), spherical: (L,)) of the rows around their centroid:
    the start of the GMM's EM from a k-means fit (an empty or one-row cluster gets the global
    variance)."""
    n_lists, d = centroids.shape
    diff = x.astype(np.float64) - centroids[labels]
    counts = np.bincount(labels, minlength=n_lists).astype(np.float64)
    sq = np.zeros((n_lists, d))
    np.add.at(sq, labels, diff * diff)
    overall = (diff * diff).mean(0) + reg
    var = np.where(counts[:, None] > 1, sq / np.maximum(counts, 1)[:, None] + reg, overall)
    return 1.0 / (var if covariance_type == "diag" else var.mean(1))
