"""How the GPU benchmarks time what users call: wall-clock calls with the device synchronized
around them, the difference of calls of many and of one iteration (what a call does once left
out), CUDA-event medians of kernel loops, and peak device memory. On the CPU (``--smoke`` runs)
the same calls time without synchronization, and no peak is kept."""

from __future__ import annotations

import time

import torch


def sync(device="cuda"):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def wall(fn, device="cuda"):
    """(seconds, result) of ``fn()``, the device idle before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def per_iteration(fit, iters, device="cuda"):
    """(ms per iteration, seconds of a call of ``iters``): medians of 3 calls of ``fit(1)`` and of
    ``fit(iters)``, their difference over ``iters - 1``; None where it is not above 0 (noise)."""
    one = sorted(wall(lambda: fit(1), device)[0] for _ in range(3))[1]
    many = sorted(wall(lambda: fit(iters), device)[0] for _ in range(3))[1]
    per = (many - one) / (iters - 1) * 1e3
    return (per if per > 0 else None), many


def events_ms(fn, warmup=25, rep=200):
    """CUDA-event median (ms) of ``fn()`` in a loop."""
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def peak(fn, device="cuda"):
    """(peak bytes of device memory allocated during ``fn()``, its result); None bytes off CUDA."""
    if torch.device(device).type != "cuda":
        return None, fn()
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sync(device)
    return torch.cuda.max_memory_allocated(), out


def kernel_seconds(fn, calls=10):
    """Seconds of device work (kernels and copies) of one ``fn()``, the mean over ``calls`` calls
    under torch's profiler: the call without its host time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / calls / 1e6


def profile(title, fn, rows=8):
    """Where one call's time goes: its heaviest operations by GPU time, and its host time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"-- {title}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=48))
