"""What the tests of the Triton kernels share: where they run, the float slack per input dtype,
and the float64 brute force they are checked against."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative slack of a chosen distance against the best, for near-ties, by input dtype (float32
# products are IEEE float32 here: torch's allow_tf32 is off by default).
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def brute_force_distances(x, c, metric):
    """(n, K) float64 distances on the CPU of the rows of ``x`` to ``c``, as the kernels define
    them: squared L2, or 1 - cos."""
    x64, c64 = x.double().cpu(), c.double().cpu()
    if metric == "cosine":
        x64, c64 = torch.nn.functional.normalize(x64, dim=1), torch.nn.functional.normalize(c64, dim=1)
        return 1 - x64 @ c64.T
    return torch.cdist(x64, c64) ** 2
