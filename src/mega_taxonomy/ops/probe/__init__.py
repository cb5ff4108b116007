"""Probe and re-rank: the ``k`` nearest stored rows of every query among the rows of the lists
(inverted lists, or a taxonomy's leaves) that it probes, ranked exactly.

The stored rows are grouped by list (CSR: ``offsets``). A distance is written as
``q_base + x_add + x_scale * q.x`` with per-row terms computed once by :func:`row_terms`:

================  ===========  ===========  =============  =====================
metric            q_base       x_add        x_scale        distance
================  ===========  ===========  =============  =====================
"euclidean"       ``|q|^2``    ``|x|^2``    -2             squared L2 (>= 0)
"cosine"          1            0            ``-1/|x|``     ``1 - cos`` (q unit)
"inner_product"   0            0            -1             ``-<q, x>``
================  ===========  ===========  =============  =====================

``probe_rerank`` is the dispatcher (the compiled CPU kernel of ``probe/numba.py``, queries
grouped by list so that each probed list is scanned once per chunk of queries; on CUDA the
Triton kernel of ``probe/triton.py``), ``probe_rerank_reference`` its torch twin (any device).
"""

from __future__ import annotations

import numpy as np
import torch

from ...threads import cpu_threads, parallel_map
from ..common import use_triton

__all__ = ["PROBE_METRICS", "first_probes", "merge_sorted", "probe_rerank", "probe_rerank_reference", "query_terms",
           "row_terms", "smallest"]

PROBE_METRICS = ("euclidean", "cosine", "inner_product")


def _np(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def row_terms(vectors, metric: str):
    """(x_add, x_scale), each (N,), in the vectors' dtype (float32 unless float64): the per-row
    terms of the distance (see the module's table). Computed once per stored row."""
    if metric not in PROBE_METRICS:
        raise ValueError(f"metric must be one of {PROBE_METRICS}, got {metric!r}")
    v = _np(vectors)
    dtype = np.float64 if v.dtype == np.float64 else np.float32
    n = len(v)
    if metric == "inner_product":
        return np.zeros(n, dtype), np.full(n, -1.0, dtype)
    sq = np.einsum("nd,nd->n", v, v, dtype=dtype) if n else np.zeros(0, dtype)
    if metric == "euclidean":
        return sq, np.full(n, -2.0, dtype)
    norm = np.sqrt(sq)
    # a zero vector has no direction: scale 0, so its cosine distance is 1 to every query
    return np.zeros(n, dtype), np.where(norm > 0, -1.0 / np.where(norm > 0, norm, 1), 0).astype(dtype)


def query_terms(q: np.ndarray, metric: str):
    """(queries as the kernel takes them, q_base): cosine queries normalized (zero stays zero)."""
    q = np.ascontiguousarray(q)
    if metric == "euclidean":
        return q, np.einsum("nd,nd->n", q, q)
    if metric == "cosine":
        norm = np.sqrt(np.einsum("nd,nd->n", q, q))
        return np.ascontiguousarray(q / np.where(norm > 0, norm, 1)[:, None]), np.ones(len(q), q.dtype)
    return q, np.zeros(len(q), q.dtype)


def _check(q, probes, offsets, vectors, ids, k, metric):
    if metric not in PROBE_METRICS:
        raise ValueError(f"metric must be one of {PROBE_METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if q.ndim != 2 or vectors.ndim != 2 or q.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} and vectors {tuple(vectors.shape)} must be 2-d with the same width")
    if probes.ndim != 2 or probes.shape[0] != q.shape[0]:
        raise ValueError(f"probes {tuple(probes.shape)} must be (n_queries, nprobe) for {q.shape[0]} queries")
    if len(ids) != len(vectors) or int(offsets[-1]) != len(vectors):
        raise ValueError(f"{len(ids)} ids, {len(vectors)} vectors and offsets ending at {int(offsets[-1])} disagree")


def probe_rerank_reference(q, probes, offsets, vectors, ids, k, *, metric="euclidean", terms=None, dedup=False,
                           batch_elements: int = 1 << 24):
    """Torch twin of :func:`probe_rerank` (any device; the CUDA fallback and the tests' oracle).

    Each batch of queries gathers its candidates into one padded (queries, candidates, d) tile,
    so the re-rank is one batched product and a top-k. Duplicated ids (``dedup``) keep their
    first copy in (distance, id) order.
    """
    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    q, probes, vectors = (torch.as_tensor(_np(a) if not isinstance(a, torch.Tensor) else a) for a in
                          (q, probes, vectors))
    q, probes, vectors = q.to(device), probes.to(device, torch.int64), vectors.to(device)
    offsets = torch.as_tensor(_np(offsets), dtype=torch.int64, device=device)
    ids = torch.as_tensor(_np(ids), dtype=torch.int64, device=device)
    _check(q, probes, offsets, vectors, ids, k, metric)
    dtype = torch.float64 if vectors.dtype == torch.float64 else torch.float32
    x_add, x_scale = (torch.as_tensor(t, device=device) for t in (terms or row_terms(vectors, metric)))
    qn, q_base = (torch.as_tensor(a, device=device) for a in query_terms(_np(q.to(dtype)), metric))
    n = q.shape[0]
    out_d = torch.full((n, k), torch.inf, dtype=dtype, device=device)
    out_i = torch.full((n, k), -1, dtype=torch.int64, device=device)
    sizes = offsets[1:] - offsets[:-1]
    lengths = torch.where(probes >= 0, sizes[probes.clamp_min(0)], 0)
    starts = offsets[:-1][probes.clamp_min(0)]
    per_query = lengths.sum(1)
    width = max(int(per_query.max()) if n else 1, 1)
    step = max(1, batch_elements // (width * max(q.shape[1], 1)))
    slot = torch.arange(width, device=device)
    for r0 in range(0, n, step):
        rows = slice(r0, min(r0 + step, n))
        ln, st = lengths[rows], starts[rows]
        ends = ln.cumsum(1)
        which = torch.searchsorted(ends, slot.expand(ln.shape[0], -1).contiguous(), right=True)
        valid = which < ln.shape[1]
        which = which.clamp_max(ln.shape[1] - 1)
        within = slot[None, :] - (ends - ln).gather(1, which)
        pos = torch.where(valid, st.gather(1, which) + within, 0)
        dots = torch.einsum("qwd,qd->qw", vectors[pos].to(dtype), qn[rows].to(dtype))
        d = q_base[rows, None] + x_add[pos] + x_scale[pos] * dots
        if metric == "euclidean":
            d = d.clamp_min(0)
        d = torch.where(valid, d, torch.inf)
        cand = torch.where(valid, ids[pos], torch.iinfo(torch.int64).max)
        # order by (distance, id): sort by id, then a stable sort by distance
        cand, by_id = cand.sort(dim=1, stable=True)
        d = d.gather(1, by_id)
        d, by_d = d.sort(dim=1, stable=True)
        cand = cand.gather(1, by_d)
        if dedup:
            d, cand = _first_copies(d, cand)
        kk = min(k, width)
        out_d[rows, :kk] = torch.where(torch.isfinite(d[:, :kk]), d[:, :kk], torch.inf)
        out_i[rows, :kk] = torch.where(torch.isfinite(d[:, :kk]), cand[:, :kk], -1)
    return out_d, out_i


def _first_copies(d, cand):
    """Rows sorted by (distance, id): later copies of an id become (inf, max) and move last."""
    by_id, order = cand.sort(dim=1, stable=True)
    repeat = torch.zeros_like(by_id, dtype=torch.bool)
    repeat[:, 1:] = by_id[:, 1:] == by_id[:, :-1]
    dup = torch.zeros_like(repeat).scatter_(1, order, repeat)
    d = torch.where(dup, torch.inf, d)
    cand = torch.where(dup, torch.iinfo(torch.int64).max, cand)
    d, again = d.sort(dim=1, stable=True)
    return d, cand.gather(1, again)


def probe_rerank(q, probes, offsets, vectors, ids, k: int, *, metric: str = "euclidean", terms=None,
                 dedup: bool = False, backend: str = "auto", layout: str = "auto"):
    """The ``k`` nearest stored rows of every query among the lists it probes, exactly ranked.

    Parameters
    ----------
    q : torch.Tensor or ndarray of shape (n, d)
        Queries (not normalized: cosine normalizes them here).
    probes : (n, nprobe) int64
        The lists each query probes, -1 for none (a list probed twice is scanned twice).
    offsets : (n_lists + 1,) int64
        CSR: the rows of list ``l`` are ``vectors[offsets[l]:offsets[l + 1]]``.
    vectors : (N, d) float32 or float64
        The stored rows, grouped by list. Queries are computed in their dtype.
    ids : (N,) int64
        The id of every stored row (returned, and what ``dedup`` compares).
    k : int
    metric : {"euclidean", "cosine", "inner_product"}
    terms : (x_add, x_scale), optional
        :func:`row_terms` of ``vectors``, kept by the caller (computed here otherwise).
    dedup : bool, default=False
        An id stored in several lists (multi-assignment) is returned once.
    backend : {"auto", "numba", "torch", "triton"}
    layout : {"auto", "query", "list"}, default="auto"
        Of the Triton scan (``probe/triton.py``): one program per (query, probed list), or per tile
        of a list's queries (each list read once for them, tensor-core products). "auto": "list"
        where the lists are probed ``LIST_MAJOR_MIN_PAIRS`` times each on average.

    Returns
    -------
    distances : (n, k), ascending; ties in ascending id; inf where fewer than k rows were reached
    ids : (n, k) int64, -1 there
        numpy arrays for numpy queries, tensors on the queries' device for tensors.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([[0, 0], [1, 0], [5, 5]], dtype=np.float32)
    >>> d, i = probe_rerank(np.array([[0.9, 0.0]], dtype=np.float32), np.array([[0]]),
    ...                     np.array([0, 2, 3]), v, np.array([10, 11, 12]), 3)
    >>> i.tolist(), [round(float(x), 2) for x in d[0]]
    ([[11, 10, -1]], [0.01, 0.81, inf])
    """
    if backend not in ("auto", "numba", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'numba', 'torch' or 'triton', got {backend!r}")
    if layout not in ("auto", "query", "list"):
        raise ValueError(f"layout must be 'auto', 'query' or 'list', got {layout!r}")
    is_tensor = isinstance(q, torch.Tensor)
    on_cuda = is_tensor and q.device.type != "cpu"
    if (backend == "triton" or (backend == "auto" and on_cuda and use_triton(q, "auto"))) and k <= PROBE_KERNEL_MAX_K:
        return _probe_triton(q, probes, offsets, vectors, ids, k, metric, terms, dedup, layout)
    if backend == "torch" or on_cuda:
        return probe_rerank_reference(q, probes, offsets, vectors, ids, k, metric=metric, terms=terms, dedup=dedup)
    d, i = _probe_numba(_np(q), _np(probes), _np(offsets), _np(vectors), _np(ids), k, metric, terms, dedup)
    return (torch.from_numpy(d).to(q.device), torch.from_numpy(i).to(q.device)) if is_tensor else (d, i)


PROBE_KERNEL_MAX_K = 16  # triton.MAX_K (not imported here: triton is optional)
# Probes per list (on average over the lists) from which the list-major scan is chosen: a tile of
# its 64 queries then holds a few on average. A first choice, not yet measured against the other.
LIST_MAJOR_MIN_PAIRS = 16


def _probe_triton(q, probes, offsets, vectors, ids, k, metric, terms, dedup, layout="auto"):
    """The Triton scan (every probed list's best rows of each query), then the twin's merge:
    candidates ordered by (distance, id), later copies of an id dropped, the first k kept."""
    from .triton import probe_scan_list_triton, probe_scan_triton

    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    as_t = (lambda a, dtype=None: torch.as_tensor(_np(a) if not isinstance(a, torch.Tensor) else a, device=device,
                                                  dtype=dtype))
    q, vectors = as_t(q), as_t(vectors)
    probes, offsets, ids = as_t(probes, torch.int64), as_t(offsets, torch.int64), as_t(ids, torch.int64)
    _check(q, probes, offsets, vectors, ids, k, metric)
    x_add, x_scale = (as_t(t, torch.float32) for t in (terms or row_terms(vectors, metric)))
    if metric == "cosine":
        q = q / torch.linalg.vector_norm(q.float(), dim=1, keepdim=True).clamp_min(1e-30).to(q.dtype)
    q_base = {"euclidean": (q.float() ** 2).sum(1), "cosine": torch.ones(len(q), device=device),
              "inner_product": torch.zeros(len(q), device=device)}[metric]
    if layout == "auto":
        layout = "list" if probes.numel() >= LIST_MAJOR_MIN_PAIRS * (len(offsets) - 1) else "query"
    scan = probe_scan_list_triton if layout == "list" else probe_scan_triton
    floor = 0.0 if metric == "euclidean" else -float("inf")
    d, pos = scan(q, q_base, probes, offsets, vectors, x_add, x_scale, k, floor)
    cand = torch.where(pos >= 0, ids[pos.clamp_min(0)], torch.iinfo(torch.int64).max)
    cand, by_id = cand.sort(dim=1, stable=True)
    d, by_d = d.gather(1, by_id).sort(dim=1, stable=True)
    cand = cand.gather(1, by_d)
    if dedup:
        d, cand = _first_copies(d, cand)
    out_d = torch.full((len(q), k), torch.inf, device=device)
    out_i = torch.full((len(q), k), -1, dtype=torch.int64, device=device)
    kk = min(k, d.shape[1])
    found = torch.isfinite(d[:, :kk])
    out_d[:, :kk] = torch.where(found, d[:, :kk], torch.inf)
    out_i[:, :kk] = torch.where(found, cand[:, :kk], -1)
    return out_d, out_i


def _probe_numba(q, probes, offsets, vectors, ids, k, metric, terms, dedup):
    from .numba import probe_chunk

    _check(q, probes, offsets, vectors, ids, k, metric)
    dtype = np.float64 if vectors.dtype == np.float64 else np.float32
    vectors = np.ascontiguousarray(vectors, dtype=dtype)
    x_add, x_scale = terms if terms is not None else row_terms(vectors, metric)
    qn, q_base = query_terms(np.asarray(q, dtype=dtype), metric)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n = len(qn)
    out_d = np.empty((n, k), dtype=dtype)
    out_i = np.empty((n, k), dtype=np.int64)
    floor = dtype(0.0 if metric == "euclidean" else -np.inf)
    # A few large chunks: the larger a chunk, the more of its queries share each list scan; two
    # per thread so that an unlucky chunk (long lists) does not leave a core idle.
    n_chunks = max(1, min(2 * cpu_threads(), -(-n // 64)))
    bounds = np.linspace(0, n, n_chunks + 1).astype(np.int64)
    first = first_probes(probes, offsets, k)

    def work(c):
        probe_chunk(qn, np.asarray(q_base, dtype), probes, offsets, vectors, x_add, x_scale, ids, floor, dedup,
                    first, bounds[c], bounds[c + 1], out_d, out_i)

    parallel_map(work, range(n_chunks))
    return out_d, out_i


def first_probes(probes: np.ndarray, offsets: np.ndarray, k: int) -> int:
    """How many leading probes of each query the CPU kernel scans in its first pass: about enough
    lists (at their mean probed size) to hold 2k rows, so that the second pass starts with a good
    k-th best. Probes come nearest first (a quantizer's, a beam's), so these are the near rows;
    with a heap of k = 128 (the taxonomy's beam) this halves the rows pushed."""
    if probes.size == 0 or probes.shape[1] == 1:
        return probes.shape[1] if probes.ndim == 2 else 1
    sizes = np.diff(offsets)
    mean = float(sizes[probes[:256].clip(0)].mean()) if len(sizes) else 0.0
    return int(min(probes.shape[1], max(1, np.ceil(2 * k / max(mean, 1.0)))))


def merge_sorted(a_d: np.ndarray, a_i: np.ndarray, b_d: np.ndarray, b_i: np.ndarray, m: int):
    """(values, labels), both (n, m): the ``m`` first of each row's merge of two ascending rows,
    ``a``'s entry first where values are equal, entries labelled -1 left out, (inf, -1) padding
    (a stable sort of the rows side by side, in one linear pass; the taxonomy's beam pools its
    leaves level by level with it).

    Examples
    --------
    >>> v, i = merge_sorted(np.array([[1.0, 3.0]]), np.array([[10, 11]]), np.array([[1.0, 2.0, 5.0]]),
    ...                     np.array([[20, -1, 22]]), 4)
    >>> v.tolist(), i.tolist()
    ([[1.0, 1.0, 3.0, 5.0]], [[10, 20, 11, 22]])
    """
    from .numba import merge_rows

    a_d, b_d = np.ascontiguousarray(a_d), np.ascontiguousarray(b_d, dtype=a_d.dtype)
    a_i, b_i = np.ascontiguousarray(a_i, dtype=np.int64), np.ascontiguousarray(b_i, dtype=np.int64)
    if a_d.shape != a_i.shape or b_d.shape != b_i.shape or len(a_d) != len(b_d):
        raise ValueError(f"values and labels must match: a {a_d.shape} / {a_i.shape}, b {b_d.shape} / {b_i.shape}")
    if not 0 <= m <= a_d.shape[1] + b_d.shape[1]:
        raise ValueError(f"m={m} is more than the {a_d.shape[1] + b_d.shape[1]} columns of both")
    out_d = np.empty((len(a_d), m), a_d.dtype)
    out_i = np.empty((len(a_d), m), np.int64)
    merge_rows(a_d, a_i, b_d, b_i, out_d, out_i)
    return out_d, out_i


def smallest(scores: np.ndarray, m: int):
    """(values, columns), both (n, m): the ``m`` smallest of every row of ``scores``, ascending,
    ties to the lower column (a coarse quantizer's probes). Compiled (one heap pass per row);
    5-10x faster than ``argpartition`` + sort at 10k x 1024.

    Examples
    --------
    >>> v, i = smallest(np.array([[3.0, 1.0, 2.0, 1.0]], dtype=np.float32), 3)
    >>> v.tolist(), i.tolist()
    ([[1.0, 1.0, 2.0]], [[1, 3, 2]])
    """
    from .numba import smallest_rows

    scores = np.ascontiguousarray(scores)
    n, cols = scores.shape
    if not 1 <= m <= cols:
        raise ValueError(f"m={m} must be between 1 and the number of columns ({cols})")
    out_v = np.empty((n, m), scores.dtype)
    out_i = np.empty((n, m), np.int64)
    smallest_rows(scores, m, 0, n, out_v, out_i)
    return out_v, out_i
