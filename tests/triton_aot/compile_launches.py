"""Compile recorded Triton launches (``launches.py``'s JSON) for sm_90 (H100 / H200) on a
machine without a GPU, a process a core, one JSON line each in the file's order: ["ok", module,
name, constexprs, options, cubin bytes, registers a thread, stack bytes a thread] or ["failed",
module, name, constexprs, error]. The registers and the stack (spilled values) come from the
cubin (``cuobjdump -res-usage``, shipped with Triton); a kernel whose registers cap the programs
that fit an SM, or that spills, is where a GPU's time goes before it is measured.

    python tests/triton_aot/compile_launches.py launches.json           # JSON lines
    python tests/triton_aot/compile_launches.py tests/ops/hash_table    # record those tests' launches
                                                                        # first, then a table
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) a thread of the cubin's kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return int(m[1]), int(m[2])


def compiled_launch(launch):
    """One recorded launch, compiled: its line (module docstring) as a list."""
    module, name, signature, constexprs, options = launch
    fn = getattr(importlib.import_module(module), name)
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as exc:  # noqa: BLE001 - reported per launch, the caller decides
        return ["failed", module, name, constexprs, f"{type(exc).__name__}: {str(exc)[:1500]}"]
    cubin = kernel.asm["cubin"]
    return ["ok", module, name, constexprs, options, len(cubin), *resources(cubin)]


def compiled(path):
    """Per recorded launch of the JSON file ``path``, its line, compiled on every core."""
    with ProcessPoolExecutor(min(len(os.sched_getaffinity(0)), 8)) as pool:  # each holds torch and triton
        yield from pool.map(compiled_launch, json.load(open(path)))


def record(pytest_args, path, timeout=None):
    """Run the tests ``pytest_args`` under the interpreter, their launches into ``path``
    (tests/conftest.py records them); the finished pytest process, its output captured."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_LAUNCHES": str(path)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], env=env,
                          capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    if sys.argv[1].endswith(".json"):
        for line in compiled(sys.argv[1]):
            print(json.dumps(line), flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ran = record(sys.argv[1:], Path(tmp) / "launches.json")
            if ran.returncode != 0:
                sys.exit(ran.stdout[-3000:])
            os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
            for line in compiled(Path(tmp) / "launches.json"):
                if line[0] == "ok":
                    _, module, name, constexprs, options, _, regs, stack = line
                    print(f"{name:28s} registers {regs:3d}  stack {stack:4d} B  {options}  {constexprs}")
                else:
                    print(f"{line[2]:28s} failed: {line[4][:200]}")
