"""The driver changes nothing: ``quantize_model(model, data, Recipe(...))`` builds the same tensors,
bit for bit, as the stages called one by one the way the library called them before the driver
existed (calibrate -> search alpha -> smooth -> recalibrate -> search ranges -> Hessians -> quantize).

The reference below is that sequence written out with the stage functions, so a change of order,
of data, or of an option passed to a stage shows up as a tensor that differs.
"""

from __future__ import annotations

import copy

import pytest
import torch

import smoothquant as sq
from smoothquant.calibration import calibrate, collect_hessians
from smoothquant.quantization import get_scheme, quantization_targets, quantize, search_input_clip
from smoothquant.search import search_alpha
from smoothquant.smoothing import smooth
from tiny_models import plant_outliers, tiny_batches, tiny_model

DATA = tiny_batches(4, 16, seed=3)
SEARCH = {"grid": (0.3, 0.6, 0.9), "trial_tokens": 32}


def _reference(model, scheme_name, alpha, *, linear_pairs=None, rounding="nearest", ranges="absmax"):
    """The stages one by one (no model check)."""
    scheme = get_scheme(scheme_name)
    calib = {"seq_len": 16, "batch_size": 1, "num_samples": None, "progress": False}
    stats = None
    if scheme.needs_calibration:
        stats = calibrate(model, DATA, token_histograms=scheme.needs_token_histograms, **calib)
    auto = alpha == "auto"
    pairs = auto if linear_pairs is None else linear_pairs
    if auto and scheme.migration == "smoothquant":
        options = {"seq_len": 16, "batch_size": 1, "progress": False, **SEARCH}
        alpha = search_alpha(model, DATA, scheme, stats=stats, linear_pairs=pairs, **options).alpha
    elif auto:
        alpha = 0.5
    smoothed = stats
    if scheme.migration != "none":
        method = "gamma" if scheme.migration == "gamma" else "smoothquant"
        smoothed = smooth(model, stats, alpha, linear_pairs=pairs, method=method)
        if scheme.needs_token_histograms:
            smoothed = calibrate(model, DATA, token_histograms=True, **calib)
    targets = quantization_targets(model)
    clip = {}
    if ranges == "search" and not scheme.inputs.dynamic:
        clip = search_input_clip(model, DATA, targets, smoothed, **calib)
    hessians = collect_hessians(model, DATA, targets, **calib) if rounding == "gptq" else None
    quantize(
        model,
        scheme,
        smoothed,
        hessians=hessians,
        search_weight_scales=ranges == "search" and hessians is not None,
        input_clip=clip,
    )
    return model


CASES = [
    ("w8a8", 0.5, {}),
    ("O1", "auto", {"rounding": "gptq"}),
    ("O3", "auto", {"rounding": "gptq", "ranges": "search"}),
    ("O3", {"*.mlp_in": 0.8, "*": 0.5}, {"linear_pairs": True}),
    ("O2", 0.7, {"ranges": "search"}),
    ("outlier-suppression", 0.5, {}),
    ("naive", 0.5, {}),
    ("zeroquant", "auto", {}),
]


@pytest.mark.parametrize(("scheme", "alpha", "options"), CASES)
def test_driver_builds_the_same_tensors_as_the_stages_one_by_one(scheme, alpha, options) -> None:
    source = tiny_model("llama", dtype=torch.float32, seed=1)
    plant_outliers(source)
    expected = _reference(copy.deepcopy(source), scheme, alpha, **options)
    settings = {
        "linear_pairs": options.get("linear_pairs"),
        "weight_rounding": options.get("rounding", "nearest"),
        "ranges": options.get("ranges", "absmax"),
        "seq_len": 16,
        "search_options": SEARCH,
    }
    built = sq.quantize_model(copy.deepcopy(source), DATA, scheme, alpha, progress=False, **settings).model
    want, got = expected.state_dict(), built.state_dict()
    assert want.keys() == got.keys()
    for key, tensor in want.items():
        assert tensor.dtype == got[key].dtype and torch.equal(tensor, got[key]), key
    assert sum(isinstance(m, sq.FakeQuantLinear) for m in built.modules()) == 14
