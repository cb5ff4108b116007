"""Every Triton kernel launch of the kernel tests compiles for the GPUs it runs on (sm_90: H100 /
H200), ahead of time, on a machine without one. Without a GPU those tests run the kernels in
Triton's CPU interpreter, which runs them as numpy and accepts code that the compiler refuses
(and where a GPU is lent, its time is short). Each launch's signature and constexprs are
recorded as the tests run (``interpreting.py``, ``triton_aot/launches.py``); this test,
collected after tests/kv and tests/ops, compiles each for sm_90 in processes of its own, with
no interpreter (``triton_aot/compile_launches.py``). Run without those tests before it, it
runs tests/ops first, in a process of its own, to record their launches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
# Compiling the launches of tests/kv and tests/ops: about 2 minutes on a 2-core machine;
# recording them too (run alone), about 7 minutes more.
pytestmark = [pytest.mark.timeout(1800),
              pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernel tests compile and run them")]

from triton_aot import compile_launches, launches  # noqa: E402  # tests/ is on sys.path (its conftest.py)

HERE = Path(__file__).resolve().parent


def test_every_kernel_launch_of_the_kernel_tests_compiles_for_sm90(tmp_path, request):
    path = tmp_path / "launches.json"
    if launches.RECORDS:  # kernel tests ran before it, in this pytest process
        launches.write(path)
        selected = {str(item.path) for item in request.session.items}
        whole = {str(f) for f in (HERE / "ops").rglob("test_*.py")} <= selected
    else:
        ran = compile_launches.record([str(HERE / "ops"), "-x"], path, timeout=1500)
        assert ran.returncode == 0, ran.stdout[-3000:]
        whole = True
    recorded = json.loads(path.read_text())
    if whole:  # the kernels of the exact sums, the list-major probe scan and the E-step's products among them
        assert {"_accumulate_kernel", "_cluster_sums_kernel", "_list_kernel", "_resp_kernel"} <= {r[1] for r in recorded}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # tests/conftest.py sets it
    done = subprocess.run([sys.executable, str(HERE / "triton_aot" / "compile_launches.py"), str(path)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    failed = [r for r in results if r[0] != "ok"]
    assert len(results) == len(recorded) and recorded and not failed, failed[:3]
    assert all(r[5] > 0 and r[6] > 0 for r in results)  # a cubin each, its registers read
