"""A pytest plugin: every Triton kernel that the tests launch in Triton's CPU interpreter,
recorded as what ``triton.compile`` needs to build it ahead of time (its module and name, the
signature Triton would give its arguments, its constexpr values, num_warps / num_stages), into
the JSON file named by ``TRITON_LAUNCHES``. Used by tests/test_triton_compiles.py."""

import inspect
import json
import os

RECORDS = set()


def pytest_configure(config):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    launch = InterpretedFunction.run

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

    InterpretedFunction.run = run


def pytest_unconfigure(config):
    with open(os.environ["TRITON_LAUNCHES"], "w") as out:
        json.dump([json.loads(r) for r in sorted(RECORDS)], out)
