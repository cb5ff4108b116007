"""Compile recorded Triton launches (``record_launches.py``'s JSON) for sm_90 (H100 / H200) on a
machine without a GPU, one JSON line each: ["ok", module, name, constexprs, options, cubin bytes,
registers a thread, stack bytes a thread] or ["failed", module, name, constexprs, error]. The
registers and the stack (spilled values) come from the cubin (``cuobjdump -res-usage``, shipped
with Triton); a kernel whose registers cap the programs that fit an SM, or that spills, is where
a GPU's time goes before it is measured.

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


def compiled(path):
    """Per recorded launch of the JSON file ``path``, its line (module docstring) as a list."""
    target = GPUTarget("cuda", 90, 32)
    for module, name, signature, constexprs, options in json.load(open(path)):
        fn = getattr(importlib.import_module(module), name)
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                    options=options)
        except Exception as exc:  # noqa: BLE001 - reported per launch, the caller decides
            yield ["failed", module, name, constexprs, f"{type(exc).__name__}: {str(exc)[:1500]}"]
            continue
        cubin = kernel.asm["cubin"]
        yield ["ok", module, name, constexprs, options, len(cubin), *resources(cubin)]


def record(pytest_args, path):
    """The launches of the tests ``pytest_args`` under the interpreter, into ``path``."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_LAUNCHES": str(path),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "record_launches",
                    *pytest_args], env=env, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    if sys.argv[1].endswith(".json"):
        for line in compiled(sys.argv[1]):
            print(json.dumps(line), flush=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            record(sys.argv[1:], Path(tmp) / "launches.json")
            os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
            for line in compiled(Path(tmp) / "launches.json"):
                if line[0] == "ok":
                    _, module, name, constexprs, options, _, regs, stack = line
                    print(f"{name:28s} registers {regs:3d}  stack {stack:4d} B  {options}  {constexprs}")
                else:
                    print(f"{line[2]:28s} failed: {line[4][:200]}")
