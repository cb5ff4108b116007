"""The Triton kernels of the exact sums compile for the GPUs they run on (sm_90: H100 / H200),
ahead of time, on a machine without one: Triton's CPU interpreter, which the kernel tests use
here, runs them as numpy and accepts code that the compiler refuses. In a process of its own:
this one's kernels were made for the interpreter (``TRITON_INTERPRET=1``, tests/ops/conftest.py)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE = """
import inspect, itertools, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mega_taxonomy.ops.exact import triton as exact
from mega_taxonomy.ops.update import triton as update

target = GPUTarget("cuda", 90, 32)

def compiled(fn, signature, constexprs):
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target)
    return len(kernel.asm["cubin"])

print("accumulate", compiled(exact._accumulate_kernel,
      {"tops_ptr": "*i64", "digits_ptr": "*i64", "values_ptr": "*fp64", "N": "i32", "EMPTY": "constexpr",
       "NONFINITE": "constexpr", "BLOCK": "constexpr"}, {"EMPTY": -64, "NONFINITE": 64, "BLOCK": 1024}))
names = list(inspect.signature(update._cluster_sums_kernel.fn).parameters)
for exact_mode, slots, accumulate in itertools.product((True, False), repeat=3):
    sums = "*i64" if exact_mode else "*fp64"
    signature = {"x_ptr": "*fp32", "order_ptr": "*i64", "w_ptr": "*fp32", "slot_ptr": "*fp64",
                 "slot_w_ptr": "*fp64", "ends_ptr": "*i64", "sums_ptr": sums, "w_sums_ptr": sums,
                 "counts_ptr": "*i64", "D": "i32", "K": "i32", "NB": "i32", "stride_x": "i32"}
    constexprs = {"CHUNK": update.CHUNK, "BLOCK_R": update.BLOCK_R, "BLOCK_D": 128, "STAGES": update.STAGES,
                  "FROM_SLOTS": slots, "ACCUMULATE": accumulate, "EXACT": exact_mode}
    signature.update({name: "constexpr" for name in constexprs})
    assert set(signature) == set(names), set(names) ^ set(signature)
    print("cluster_sums", exact_mode, slots, accumulate, compiled(update._cluster_sums_kernel, signature, constexprs))
"""


def test_exact_sum_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    assert len([line for line in lines if line.startswith("cluster_sums")]) == 8
    assert all(int(line.rsplit(" ", 1)[1]) > 0 for line in lines if line)  # a cubin each
