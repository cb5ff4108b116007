"""Compute kernels, one folder per op: each op is a dispatcher with a torch twin
(``*_reference``), a compiled CPU kernel (numba) and a Triton kernel on CUDA where they pay.

Layout
------
``assign/``          nearest centroid; all (n, K) distances
``grouped_assign/``  nearest / top-k child of each row's own group (a taxonomy level)
``topk/``            the k nearest centroids
``update/``          per-cluster sums, counts and inertia; centroids from sums
``exact/``           exact sums of float64 partials (any order, tree or all-reduce: the same bits)
``gmm_estep/``       a Gaussian mixture's E-step online over component tiles (no N x K array)
``select/``          the n smallest keys per group (under ``partials/``)
``hashing/``         hashes of row ids (samples by hash)
``knn/``             exact kNN in low dimensions: the kd-tree's build and queries (numba), the bucket
                     scan of its leaves on CUDA (Triton), the brute-force twin
``common.py``        what sibling ops share: checks, the centroids as a GEMM operand, tile sizes,
                     the backend choice, the fused-kernel launcher and its ``OperandCache``, the
                     numba helpers of per-cluster sums

Copies between host and device memory are not ops: they are in ``io/`` (``streaming``,
``device``, ``transfer``).

Backends: ``backend="auto"`` picks Triton for fp16 / bf16 / fp32 tensors on CUDA, numba on the
CPU where a compiled kernel exists (and wins at the shape), the torch twin otherwise;
``"torch"`` is always the twin; ``"triton"`` forces the kernel (also under ``TRITON_INTERPRET=1``
on the CPU, as the tests do).

How to add an op
----------------
1. Make a folder ``ops/<op>/``. Its ``__init__.py`` holds the public dispatcher (numpydoc, a
   runnable example), the torch twin ``<op>_reference`` of the same leading signature (readable,
   the CPU fallback and the tests' oracle) and ``__all__``.
2. Kernels go beside it: ``triton.py`` (a contract header of shapes and dtypes; N, K and D runtime
   values; 64-bit program ids; every tuned constant with its measurement; start from
   ``assign/triton.py``) and ``numba.py`` (the same header; ``cache=True, nogil=True``). The
   dispatcher imports ``triton.py`` inside the function that uses it: triton is optional.
3. Shared helpers come from ``common.py`` under public names; a helper that a second op needs
   moves there. Never import a private (underscore) name of another module, and import sibling
   ops only through their public names (``ops.<op>`` or its ``triton.py`` / ``numba.py``), so that
   no import runs in a circle.
4. Caches of prepared operands are objects the caller owns and passes (``cache=``, see
   ``common.OperandCache``), never module globals.
5. Tests go in ``tests/ops/<op>/``: kernel against twin against a float64 brute force
   (``tests/kernel_checks.py``), Triton kernels at small shapes in the interpreter
   (``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` without a GPU), bf16 and bit identity
   in ``tests/gpu``. Callers outside ``ops/`` import the dispatchers only.
"""

from .assign import distances, nearest
from .common import METRICS, OperandCache, compute_dtype, normalize_rows
from .grouped_assign import grouped_nearest, grouped_topk
from .topk import topk

__all__ = ["METRICS", "OperandCache", "compute_dtype", "distances", "grouped_nearest", "grouped_topk",
           "nearest", "normalize_rows", "topk"]
