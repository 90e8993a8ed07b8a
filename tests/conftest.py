"""Without a GPU, run the Triton kernels in Triton's CPU interpreter (set before they are imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
