"""Errors the library raises on bad input.

Every error a user can trigger derives from :class:`SmoothQuantError`, so the CLI can print the
message (which says what to do) instead of a traceback, and callers can catch one type.
"""

from __future__ import annotations


class SmoothQuantError(Exception):
    """Base class: the message is written for the user and says how to fix the input."""


class UnsupportedModelError(SmoothQuantError):
    """The model's family has no mapping table, or its module tree does not match the table."""


class CalibrationError(SmoothQuantError):
    """Calibration data is missing, empty or malformed."""


class StatsMismatchError(SmoothQuantError):
    """Statistics do not belong to this model (names, shapes or smoothing state differ)."""


class SchemeError(SmoothQuantError):
    """A quantization scheme or one of its settings is invalid."""


class QuantizationError(SmoothQuantError):
    """Quantization was asked to do something impossible (NaN/inf input, missing static scale)."""


class ArgumentError(SmoothQuantError, ValueError):
    """An argument is out of its valid range (alpha outside [0, 1], batch size < 1...)."""


class ModelLoadError(SmoothQuantError):
    """A model cannot be found or loaded (missing package, file, or network access)."""


class DatasetError(SmoothQuantError):
    """A text dataset cannot be found, fetched or read."""


class ExportError(SmoothQuantError):
    """A model cannot be written in the requested format (scheme not expressible, bad output path)."""


class OutputExistsError(ExportError, FileExistsError):
    """The output directory exists and overwriting was not asked for."""


class DiskSpaceError(ExportError, OSError):
    """Not enough free space for the checkpoint (checked before writing, or the disk filled up)."""


class CheckpointError(SmoothQuantError):
    """A checkpoint directory is missing, corrupt, or not a W8A8 INT8 checkpoint we can load."""


class BackendError(SmoothQuantError):
    """The INT8 runtime cannot run on the requested backend (no GPU, no Triton, wrong device)."""


class KVCacheError(SmoothQuantError):
    """The INT8 KV cache cannot serve this model or call (sliding windows, soft-capping...)."""
