"""Real clients: compressed-tensors validates our config, transformers loads our export, and a
checkpoint written by hand from the documented format (as another tool would) loads with ``load``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import smoothquant as sq
from tiny_models import tiny_batches, tiny_model

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def _export(tmp_path, family: str, scheme: str):
    model = tiny_model(family, dtype=torch.float32)
    result = sq.quantize_model(model, tiny_batches(), scheme=scheme, seq_len=16, progress=False)
    sq.save_quantized(result, tmp_path / "q")
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("scheme", ["w8a8", "O1", "O2", "O3"])
def test_compressed_tensors_accepts_our_config(tmp_path, scheme):
    _export(tmp_path, "llama", scheme)
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.format == "int-quantized" and parsed.quantization_status == "compressed"
    assert parsed.ignore == ["lm_head"]


# relative logit difference transformers vs ours, as a fraction of our own quantization error:
# static scales agree exactly (only values beyond the calibrated range clamp differently: we use
# -127, compressed-tensors -128); dynamic scales differ by design (compressed-tensors divides
# absmax by 127.5, vLLM and we by 127), so rounding differs by up to one step per activation.
BOUND = {"w8a8": 1.25, "O1": 1.25, "O3": 0.5}


@pytest.mark.parametrize(
    ("family", "scheme"), [("llama", "w8a8"), ("llama", "O3"), ("qwen2", "O1"), ("opt", "O3")]
)
def test_transformers_loads_our_export(tmp_path, family, scheme):
    ours = _export(tmp_path, family, scheme)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    ids = tiny_batches(seed=1)
    theirs, mine, fp = (
        _logits(hf, ids),
        _logits(ours, ids),
        _logits(tiny_model(family, dtype=torch.float32), ids),
    )
    # transformers decompresses int8 weights to float on the first forward: the same numbers as ours
    quantized = {n: m for n, m in ours.named_modules() if isinstance(m, sq.FakeQuantLinear)}
    for name, m in quantized.items():
        linear = hf.get_submodule(name)
        assert torch.equal(linear.weight, m.dequantized_weight()), name
        if m.input_scale is not None:
            assert torch.equal(linear.input_scale.float(), m.input_scale), name
    assert not hasattr(hf.lm_head, "quantization_scheme")  # ignored, stays float
    assert (theirs - mine).norm() <= BOUND[scheme] * (mine - fp).norm()
    assert (theirs - mine).norm() <= 0.05 * mine.norm()


def test_static_linears_bit_exact_with_transformers(tmp_path):
    """For inputs inside the calibrated range each static linear computes the same as ours."""
    ours = _export(tmp_path, "llama", "O3")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    _logits(hf, tiny_batches())  # decompresses
    g = torch.Generator().manual_seed(0)
    for name, m in ours.named_modules():
        if isinstance(m, sq.FakeQuantLinear):
            x = (torch.rand(3, 7, m.in_features, generator=g) * 2 - 1) * m.input_scale * 127
            with torch.no_grad():
                assert torch.equal(hf.get_submodule(name)(x), m(x)), name


def _hand_written_checkpoint(path, model: nn.Module, calib: torch.Tensor) -> dict[str, tuple]:
    """Write ``model`` the way llm-compressor does (per-channel int8 weights, static per-tensor
    inputs, bf16 scales, explicit zero points, two shards), using only the documented format."""
    absmax: dict[str, float] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: absmax.__setitem__(n, inp[0].abs().max().item()))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    ]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    tensors, expected = {}, {}
    for name, tensor in model.state_dict().items():
        module = name.rpartition(".")[0]
        if module in absmax and name.endswith(".weight"):
            scale = (tensor.abs().amax(1, keepdim=True) / 127).to(torch.bfloat16)
            q = torch.clamp(torch.round(tensor / scale.float()), -128, 127).to(torch.int8)
            # 4x headroom: no activation reaches the clamp, so both clients round identically
            input_scale = torch.tensor([4 * absmax[module] / 127], dtype=torch.bfloat16)
            tensors |= {
                name: q,
                f"{module}.weight_scale": scale,
                f"{module}.weight_zero_point": torch.zeros_like(scale, dtype=torch.int8),
                f"{module}.input_scale": input_scale,
                f"{module}.input_zero_point": torch.zeros(1, dtype=torch.int8),
            }
            expected[module] = (q, scale.float(), input_scale.float())
        elif name != "lm_head.weight" or not model.config.tie_word_embeddings:
            tensors[name] = tensor.contiguous()
    keys = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    path.mkdir()
    for file, names in shards.items():
        save_file({k: tensors[k] for k in names}, path / file, metadata={"format": "pt"})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: f for f, names in shards.items() for k in names}})
    )
    int8 = {"num_bits": 8, "type": "int", "symmetric": True}
    config = model.config.to_dict() | {
        "architectures": [type(model).__name__],
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "int-quantized",
            "quantization_status": "compressed",
            "global_compression_ratio": 1.5,
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": int8 | {"strategy": "channel", "dynamic": False, "observer": "minmax"},
                    "input_activations": int8
                    | {"strategy": "tensor", "dynamic": False, "observer": "minmax"},
                    "output_activations": None,
                }
            },
            "ignore": ["lm_head"],
            "kv_cache_scheme": None,
            "version": "0.9.0",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    return expected


def test_hand_written_checkpoint_loads(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    expected = _hand_written_checkpoint(tmp_path / "other", model, tiny_batches())
    loaded = sq.load(tmp_path / "other", backend=None)
    quantized = {n: m for n, m in loaded.named_modules() if isinstance(m, sq.FakeQuantLinear)}
    assert quantized.keys() == expected.keys()
    for name, (q, scale, input_scale) in expected.items():
        m = quantized[name]
        assert torch.equal(m.qweight, q) and torch.equal(m.weight_scale, scale)
        assert torch.equal(m.input_scale, input_scale)
        assert (m.weight_quant.granularity, m.input_quant.granularity, m.input_quant.dynamic) == (
            "channel",
            "tensor",
            False,
        )
    ids = tiny_batches(seed=1)
    ours = _logits(loaded, ids)
    # an independent reading of the same files: transformers + compressed-tensors
    assert torch.allclose(
        ours, _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "other"), ids), atol=1e-5
    )
    fp = _logits(model, ids)
    assert (ours - fp).norm() <= 0.1 * fp.norm()  # a sane W8A8 model of the same weights
