"""Launch options shared by the Triton kernels."""

from __future__ import annotations

import functools
import os

import torch


def use_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch (Hopper and newer): a kernel starts while the previous one on
    the stream finishes, prefetches what does not depend on it, then waits (``gdc_wait``) before
    reading its inputs. It hides the launch gap between the many short kernels of a decode step.
    ``SMOOTHQUANT_PDL=0`` turns it off (for A/B timing); the interpreter never uses it."""
    if device.type != "cuda" or os.environ.get("SMOOTHQUANT_PDL", "1") == "0":
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache
def _hopper_or_newer(index: int) -> bool:  # asked on every launch: once per device
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_kwargs(pdl: bool) -> dict:
    """Launch keyword arguments: ``launch_pdl`` only when on (older Triton versions lack it)."""
    return {"launch_pdl": True} if pdl else {}
