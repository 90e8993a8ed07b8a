"""Models larger than the machine: calibrate, smooth and quantize one decoder block at a time,
streaming weights from the checkpoint's shards and writing finished blocks as they complete."""

from smoothquant.layerwise.run import LayerwiseSummary, quantize_checkpoint

__all__ = ["LayerwiseSummary", "quantize_checkpoint"]
