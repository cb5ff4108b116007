"""Without a GPU, the tests run the Triton kernels in Triton's CPU interpreter: small shapes,
fp32 and fp16 (the interpreter computes bf16 dots wrongly: bf16, and run-to-run bit identity,
are checked on the GPU, tests/gpu). tests/conftest.py calls ``interpret_without_gpu`` before
any test module imports triton."""

import importlib.util
import inspect
import os


def interpret_without_gpu():
    """Set TRITON_INTERPRET=1 where there is no CUDA device and triton is installed; then patch
    the language once a launch and record each launch (``triton_aot/launches.py``) for
    tests/test_triton_compiles.py, which compiles them for the GPU."""
    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    from triton_aot import launches

    patch_the_language_once_a_launch()
    look_up_numpy_dtypes_in_one_table()
    launches.record()


def patch_the_language_once_a_launch():
    """Triton's interpreter patches ``triton.language`` (each builtin found by
    ``inspect.getmembers``) at each launch, restoring it when the launch ends, and again at each
    call of a ``@triton.jit`` helper inside the kernel, never restored: a no-op where the launch
    has patched the modules that the helper sees, and most of the time of kernels that call
    helpers in loops (a fifth of the hash table's tests). Here a helper's call patches only
    modules that its launch has not."""
    import triton.language as tl
    from triton.runtime import interpreter

    patch = interpreter._patch_lang
    if getattr(patch, "once_a_launch", False):
        return
    patched = set()  # the ids of the language modules that the running launch has patched
    seen = {}  # per jit function, the ids of the language modules it sees

    def patch_lang(fn):
        if fn not in seen:
            seen[fn] = {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}
        langs = seen[fn]
        if patched and langs <= patched:  # a helper's call inside a launch that patched them
            return interpreter._LangPatchScope()
        scope = patch(fn)
        if not patched:  # a launch: its scope is restored when it ends
            restore = scope.restore

            def restore_and_forget():
                patched.clear()
                restore()
            scope.restore = restore_and_forget
        patched.update(langs)
        return scope

    patch_lang.once_a_launch = True
    interpreter._patch_lang = patch_lang


def look_up_numpy_dtypes_in_one_table():
    """The interpreter's ``_get_np_dtype`` builds its table of 17 dtypes at every call (a tensor
    made, a value cast): 8% of a hash table test. Here the table is built once, for the same
    answers."""
    from triton.runtime import interpreter

    build = interpreter._get_np_dtype
    if getattr(build, "one_table", False):
        return
    table = {}

    def np_dtype(tt_dtype):
        try:
            return table[tt_dtype]
        except KeyError:
            table[tt_dtype] = build(tt_dtype)
            return table[tt_dtype]
        except TypeError:  # not hashable
            return build(tt_dtype)

    np_dtype.one_table = True
    interpreter._get_np_dtype = np_dtype
