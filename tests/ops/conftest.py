"""Without a GPU, the tests of the Triton kernels run them in Triton's CPU interpreter
(TRITON_INTERPRET=1, set here, before any test module of this folder imports triton): small
shapes, fp32 and fp16 (the interpreter computes bf16 dots wrongly: bf16, and run-to-run bit
identity, are checked on the GPU, tests/gpu)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
