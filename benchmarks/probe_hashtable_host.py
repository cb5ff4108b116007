"""Where a HashTable lookup's host time goes on a GPU, before and after its kernel.

Two tables: 2^20 slots half full with batches of 256 keys, where the host's work is all there is
(wall time a call over 500 calls, each waiting on its reserved-key flag, then with that read
skipped; then the pieces: the flag's read, ``torch.empty``, a sync, Triton's launch of the lookup
kernel and its parts, a pinned host flag written by a kernel, and cProfile of 500 find* calls);
and the benchmark's protocol at dim 8 (2^27 slots at load factor 0.5, 2^20 keys, 60% present):
CUDA-event medians of 30 calls, with and without the flag's read, and the calls' device time
(``gpu_timing.kernel_seconds``). It prints; ``benchmarks/results/hashtable_gpu_host.json`` keeps
one run's output.

    PYTHONPATH=src python benchmarks/probe_hashtable_host.py
"""
import cProfile, io, pstats, sys, time
import torch, triton
sys.path.insert(0, "benchmarks")
from bench_hashtable_gpu import time_call
from gpu_timing import kernel_seconds
from mega_taxonomy.kv import HashTable
from mega_taxonomy.ops.hash_table import triton as K
from mega_taxonomy.ops import hash_table as ht
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())
dev = torch.device("cuda")

def per_call(fn, reps=500, sync_each=False):
    fn(); torch.cuda.synchronize()
    s = time.perf_counter()
    for _ in range(reps):
        fn()
        if sync_each: torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (time.perf_counter() - s) / reps * 1e6

def ev(fn, reps=30):
    """Microseconds of a call: the benchmark's CUDA-event median, after a call to warm up."""
    fn(); torch.cuda.synchronize()
    return time_call(fn, reps) * 1e6

# --- small table, small batch: host bound
t = HashTable(dim=8, init_capacity=1 << 20, max_capacity=1 << 20, max_hbm_for_vectors=(1 << 20) * 32)
g = torch.Generator(device="cuda").manual_seed(0)
fill = torch.randint(0, 2**62, (1 << 19,), device=dev, generator=g)
t.insert_or_assign(fill, torch.ones(len(fill), 8, device=dev))
n = 256
keys = fill[:n].clone(); vals = torch.ones(n, 8, device=dev)
calls = {"find": lambda: t.find(keys), "find*": lambda: t.find_ptr(keys), "contains": lambda: t.contains(keys),
         "assign": lambda: t.assign(keys, vals), "insert_or_assign": lambda: t.insert_or_assign(keys, vals),
         "find_or_insert*": lambda: t.find_or_insert_ptr(keys, vals), "insert_and_evict": lambda: t.insert_and_evict(keys, vals)}
print(f"n={n}: wall us a call (each call waits on its flag)")
for name, fn in calls.items():
    print(f"  {name:18s} {per_call(fn):7.1f}")
# without the flag's read (the call's host work alone, launches queued)
take = ht.Buckets.take_flag
ht.Buckets.take_flag = lambda self: False
print("flag read skipped:")
for name, fn in calls.items():
    print(f"  {name:18s} {per_call(fn):7.1f}")
ht.Buckets.take_flag = take
# pieces
flag = t._b.flag
print("int(flag) alone", per_call(lambda: int(flag)))
print("torch.empty(n) cuda", per_call(lambda: torch.empty(n, dtype=torch.int64, device=dev)))
print("torch.cuda.synchronize", per_call(lambda: None, sync_each=True))
b = t._b
slots = torch.empty(n, dtype=torch.int64, device=dev); founds = torch.empty(n, dtype=torch.bool, device=dev)
print("lookup_triton slots+founds", per_call(lambda: K.lookup_triton(b, keys, scores=False, founds=founds)))
nb, bs = b.keys.shape
args = (b.keys, b.digest_words, b.scores, keys, slots, slots, slots, slots, founds, slots, slots, slots, slots, 1, n,
        nb - 1, K.M1, K.M2, *b.reserved, b.flag)
kw = dict(SHIFT=b.shift, BS=bs, BLOCK=K.BLOCK, DIM=1, COPY=False, SCORES=False, FOUNDS=True, LOCATE=False,
          MARK=False, CLAIM=False, num_warps=K.LOOKUP_WARPS)
grid = (-(-n // K.BLOCK),)
print("launch _lookup_words", per_call(lambda: K._lookup_words[grid](*args, **kw)))
try:
    from triton.runtime import driver
    from triton.runtime.jit import compute_cache_key
    from triton import knobs
    fn = K._lookup_words
    d = driver.active.get_current_device()
    kc, kkc, target, backend, binder = fn.device_caches[d]
    print("  get device+stream", per_call(lambda: driver.active.get_current_stream(driver.active.get_current_device())))
    kw2 = dict(kw, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode)
    print("  binder", per_call(lambda: binder(*args, **kw2)))
    bound, spec, opts = binder(*args, **kw2)
    print("  cache key", per_call(lambda: compute_cache_key(kkc, spec, opts)))
    kern = kc[compute_cache_key(kkc, spec, opts)]
    stream = driver.active.get_current_stream(d)
    vals_ = tuple(bound.values())
    print("  launch_metadata", per_call(lambda: kern.launch_metadata(grid, stream, *vals_)))
    lm = kern.launch_metadata(grid, stream, *vals_)
    print("  kernel.run", per_call(lambda: kern.run(grid[0], 1, 1, stream, kern.function, kern.packed_metadata, lm,
                                                    None, None, *vals_)))
    print("  n args", len(vals_))
except Exception as e:
    print("pieces failed", type(e).__name__, e)

@triton.jit
def _tiny(a, n, BLOCK: triton.language.constexpr):
    o = triton.language.arange(0, BLOCK)
    triton.language.store(a + o, o, mask=o < n)
print("launch tiny 2 args", per_call(lambda: _tiny[(1,)](slots, n, BLOCK=64)))
# the flag's read: a device int32 read back (now) against a pinned host int32 the kernel writes itself
@triton.jit
def _set(f):
    triton.language.store(f, 1)
hf = torch.zeros(1, dtype=torch.int32, pin_memory=True)
try:
    _set[(1,)](hf); torch.cuda.synchronize(); print("pinned host flag written by a kernel:", int(hf[0]))
    hf[0] = 0
    st = torch.cuda.current_stream()
    print("tiny launch + int(device flag)", per_call(lambda: (_tiny[(1,)](slots, n, BLOCK=64), int(flag))))
    print("tiny launch + stream sync + host flag", per_call(lambda: (_tiny[(1,)](slots, n, BLOCK=64), st.synchronize(), int(hf[0]))))
    print("tiny launch + stream sync + hf.numpy()[0]", per_call(lambda: (_tiny[(1,)](slots, n, BLOCK=64), st.synchronize(), hf.numpy()[0])))
    print("tiny launch + torch.cuda.synchronize", per_call(lambda: (_tiny[(1,)](slots, n, BLOCK=64), torch.cuda.synchronize())))
except Exception as e:
    print("pinned flag failed", type(e).__name__, str(e)[:300])
pr = cProfile.Profile(); pr.enable()
for _ in range(500): t.find_ptr(keys)
pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])

# --- the protocol's scale: capacity 2^27, dim 8, lf 0.5, 2^20 keys 60% present
del t; torch.cuda.empty_cache()
cap = 1 << 27
T = HashTable(dim=8, init_capacity=cap, max_capacity=cap, max_hbm_for_vectors=cap * 32)
B = 1 << 20
start = 0
while T.size() < cap // 2:
    k = torch.arange(start, start + B, device=dev) * 2654435761 + 12345
    T.insert_or_assign(k, torch.ones(B, 8, device=dev)); start += B
present = (torch.arange(0, int(0.6 * B), device=dev) * 2654435761 + 12345)
missing = torch.arange(1 << 40, (1 << 40) + B - len(present), device=dev)
pk = torch.cat([present, missing])[torch.randperm(B, device=dev)]
pv = torch.ones(B, 8, device=dev)
big = {"find": lambda: T.find(pk), "find*": lambda: T.find_ptr(pk), "contains": lambda: T.contains(pk),
       "assign": lambda: T.assign(pk, pv)}
print("protocol batch, events us a call (median of 30)")
for name, fn in big.items():
    a = ev(fn)
    ht.Buckets.take_flag = lambda self: False
    c = ev(fn)
    ht.Buckets.take_flag = take
    print(f"  {name:10s} {a:7.1f}  flag read skipped {c:7.1f}")
fo = torch.empty(B, dtype=torch.bool, device=dev)
print("  lookup_triton slots+founds", ev(lambda: K.lookup_triton(T._b, pk, scores=False, founds=fo)))
for name, fn in big.items():
    print(f"  kernel_seconds {name}: {kernel_seconds(fn) * 1e6:.1f} us")
