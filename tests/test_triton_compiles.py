"""Every Triton kernel launch of the kernel tests compiles for the GPUs it runs on (sm_90: H100 /
H200), ahead of time, on a machine without one. Without a GPU those tests run the kernels in
Triton's CPU interpreter, which runs them as numpy and accepts code that the compiler refuses
(and where a GPU is lent, its time is short). Two processes of their own: ``tests/ops`` again
under the interpreter, recording each launch's signature and constexprs
(``triton_aot/record_launches.py``), then ``triton.compile`` of each for sm_90, with no
interpreter (this process's kernels were made for it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernel tests compile and run them")]

HERE = Path(__file__).resolve().parent

COMPILE = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

target = GPUTarget("cuda", 90, 32)
for module, name, signature, constexprs, options in json.load(open(sys.argv[1])):
    fn = getattr(importlib.import_module(module), name)
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                options=options)
        print(json.dumps(["ok", name, len(kernel.asm["cubin"])]))
    except Exception as exc:
        print(json.dumps(["failed", name, constexprs, f"{type(exc).__name__}: {str(exc)[:1500]}"]))
"""


def test_every_kernel_launch_of_the_kernel_tests_compiles_for_sm90(tmp_path):
    launches = tmp_path / "launches.json"
    env = {**os.environ, "TRITON_LAUNCHES": str(launches),
           "PYTHONPATH": os.pathsep.join([str(HERE / "triton_aot"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)  # tests/ops/conftest.py sets it where there is no GPU
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "record_launches",
                          str(HERE / "ops"), "-x"], env=env, capture_output=True, text=True, timeout=540)
    assert ran.returncode == 0, ran.stdout[-3000:]
    recorded = json.loads(launches.read_text())
    kernels = {name for _, name, *_ in recorded}
    # the kernels of the exact sums, the list-major probe scan and the E-step's products among them
    assert {"_accumulate_kernel", "_cluster_sums_kernel", "_list_kernel", "_resp_kernel"} <= kernels
    done = subprocess.run([sys.executable, "-c", COMPILE, str(launches)], env=env, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    failed = [r for r in results if r[0] != "ok"]
    assert len(results) == len(recorded) and not failed, failed[:3]
    assert all(size > 0 for _, _, size in results)  # a cubin each
