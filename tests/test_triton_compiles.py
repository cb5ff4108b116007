"""Every Triton kernel launch of the kernel tests compiles for the GPUs it runs on (sm_90: H100 /
H200), ahead of time, on a machine without one. Without a GPU those tests run the kernels in
Triton's CPU interpreter, which runs them as numpy and accepts code that the compiler refuses
(and where a GPU is lent, its time is short). Two processes of their own: ``tests/ops`` again
under the interpreter, recording each launch's signature and constexprs
(``triton_aot/record_launches.py``), then ``triton.compile`` of each for sm_90, with no
interpreter (``triton_aot/compile_launches.py``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
# Recording runs tests/ops again under the interpreter: about 11.5 minutes on a 2-core machine.
pytestmark = [pytest.mark.timeout(1500),
              pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernel tests compile and run them")]

HERE = Path(__file__).resolve().parent


def test_every_kernel_launch_of_the_kernel_tests_compiles_for_sm90(tmp_path):
    launches = tmp_path / "launches.json"
    env = {**os.environ, "TRITON_LAUNCHES": str(launches),
           "PYTHONPATH": os.pathsep.join([str(HERE / "triton_aot"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)  # tests/ops/conftest.py sets it where there is no GPU
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "record_launches",
                          str(HERE / "ops"), "-x"], env=env, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-3000:]
    recorded = json.loads(launches.read_text())
    kernels = {name for _, name, *_ in recorded}
    # the kernels of the exact sums, the list-major probe scan and the E-step's products among them
    assert {"_accumulate_kernel", "_cluster_sums_kernel", "_list_kernel", "_resp_kernel"} <= kernels
    done = subprocess.run([sys.executable, str(HERE / "triton_aot" / "compile_launches.py"), str(launches)], env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    failed = [r for r in results if r[0] != "ok"]
    assert len(results) == len(recorded) and not failed, failed[:3]
    assert all(r[5] > 0 and r[6] > 0 for r in results)  # a cubin each, its registers read
