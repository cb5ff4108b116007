"""Every Triton kernel that the tests launch in Triton's CPU interpreter, recorded as what
``triton.compile`` needs to build it ahead of time: its module and name, the signature Triton
would give its arguments, its constexpr values, num_warps / num_stages. tests/interpreting.py
records while the tests interpret; tests/test_triton_compiles.py compiles what was recorded."""

import inspect
import json

RECORDS = set()  # JSON lines: [module, name, signature, constexprs, options]


def record():
    """From now on, record each interpreted launch (once per process)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    launch = InterpretedFunction.run
    if getattr(launch, "records", False):
        return

    def run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        given = {**dict(zip(params, args)), **{k: v for k, v in kwargs.items() if k in params}}
        signature, constexprs = {}, {}
        for name, param in params.items():
            value = given.get(name, param.default)
            if "constexpr" in str(param.annotation) or value is None:
                signature[name], constexprs[name] = "constexpr", getattr(value, "value", value)
            else:
                signature[name] = mangle_type(value)
        options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
        RECORDS.add(json.dumps([self.fn.__module__, self.fn.__name__, signature, constexprs, options], sort_keys=True))
        return launch(self, *args, grid=grid, warmup=warmup, **kwargs)

    run.records = True
    InterpretedFunction.run = run


def write(path):
    """The launches recorded so far, as a JSON list, into ``path``."""
    with open(path, "w") as out:
        json.dump([json.loads(r) for r in sorted(RECORDS)], out)
