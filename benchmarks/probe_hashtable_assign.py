"""Where a HashTable.assign's time goes on a GPU: the call, each of its launches alone (both ways:
the sorted upsert's, and the claims' where the source tree has them), and the profiler's kernels.

The benchmark's protocol at dim 8: 2^27 slots filled to load factor 0.5 (LRU), a batch of 2^20
keys, 60% of them present. Times are ``triton.testing.do_bench``'s means (warmup 5, rep 60 ms).
"One call" below is its wall time from the host, the GPU idle before: it waits for the kernels,
since the call reads the reserved-key flag they set. Run once per source tree to compare them:

    PYTHONPATH=path/to/tree/src python benchmarks/probe_hashtable_assign.py
"""
import sys
import time

import numpy as np
import torch
from triton.testing import do_bench
sys.path.insert(0, "benchmarks")
from bench_hashtable_gpu import BATCH, batch_keys
from mega_taxonomy.kv import EvictStrategy, HashTable
from mega_taxonomy.ops import hash_table as ht
from mega_taxonomy.ops.hash_table import triton as T


def ms(fn):
    return do_bench(fn, warmup=5, rep=60)


dim, capacity = 8, 1 << 27
t = HashTable(dim=dim, init_capacity=capacity, max_capacity=capacity, max_hbm_for_vectors=capacity * dim * 4,
              max_load_factor=1.0, evict_strategy=EvictStrategy.LRU, device="cuda")
rng = np.random.default_rng(0)
present = rng.choice(2**40, capacity // 2, replace=False)
for s in range(0, len(present), BATCH):
    k = torch.from_numpy(present[s:s + BATCH]).cuda()
    t.insert_or_assign(k, torch.ones(len(k), dim, device="cuda"))
keys = batch_keys(rng, present, BATCH)
values = torch.ones(BATCH, dim, device="cuda")
b, storage = t._b, t._v.single_on(keys.device)
desired = torch.arange(1, BATCH + 1, device="cuda", dtype=torch.int64) + (1 << 40)
skeys, slots, status, fb = T.locate_triton(b, keys, inserting=False)
sk, order = torch.sort(skeys, stable=True)
out = {"assign": ms(lambda: t.assign(keys, values)),
       "locate": ms(lambda: T.locate_triton(b, keys, inserting=False)),
       "sort": ms(lambda: torch.sort(skeys, stable=True)),
       "sort_unstable": ms(lambda: torch.sort(skeys)),
       "upsert_triton": ms(lambda: T.upsert_triton(b, keys, desired, ht.SCORE_SET, ht.OP_ASSIGN, None,
                                                   order, sk, slots.clone(), status.clone(), values, storage)),
       **({"assign_triton": ms(lambda: T.assign_triton(b, keys, desired, ht.SCORE_SET, values, storage))}
          if hasattr(T, "assign_triton") else {}),
       "clone2": ms(lambda: (slots.clone(), status.clone())),
       "scorer": ms(lambda: t.scorer.desired(BATCH, None, t.device, inserting=False, global_epoch=None))}
print(f"found {int(fb.sum())} of {BATCH}; " + "; ".join(f"{k} {v * 1000:.0f}us" for k, v in out.items()), flush=True)
torch.cuda.synchronize()
for _ in range(3):
    h = time.perf_counter(); t.assign(keys, values); h = time.perf_counter() - h; torch.cuda.synchronize()
print(f"one call, from the host {h * 1e6:.0f} us")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        t.assign(keys, values)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=40))
