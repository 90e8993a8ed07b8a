"""quantize -> save -> load reproduces the quantized model exactly, and the files follow the format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import smoothquant as sq
from smoothquant.errors import ExportError
from smoothquant.export.save import RECIPE_FILE, WEIGHTS_FILE
from tiny_models import tiny_batches, tiny_model


def _quantized(name: str, scheme: str, dtype=torch.float32):
    model = tiny_model(name, dtype=dtype)
    result = sq.quantize_model(model, tiny_batches(), scheme=scheme, seq_len=16, progress=False)
    return model, result


def _logits(model, ids=None):
    with torch.no_grad():
        return model(tiny_batches(seed=1) if ids is None else ids).logits


def _tensors(path):
    with safe_open(path / WEIGHTS_FILE, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# llama: GQA; qwen2: q/k/v biases; mixtral: MoE experts + renamed block; opt: tied lm_head + LayerNorm
@pytest.mark.parametrize(
    ("family", "scheme"),
    [("llama", s) for s in ("w8a8", "O1", "O2", "O3")]
    + [(f, s) for f in ("qwen2", "mixtral", "opt") for s in ("w8a8", "O3")],
)
def test_round_trip_identical_logits(tmp_path, family, scheme):
    model, result = _quantized(family, scheme)
    expected = _logits(model)
    sq.save_quantized(result, tmp_path / "q")
    loaded = sq.load(tmp_path / "q", backend=None)
    assert torch.equal(_logits(loaded), expected)
    ours = {n: m for n, m in model.named_modules() if isinstance(m, sq.FakeQuantLinear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, sq.FakeQuantLinear)}
    assert ours.keys() == theirs.keys()
    for name, m in ours.items():
        t = theirs[name]
        assert torch.equal(m.qweight, t.qweight) and torch.equal(m.weight_scale, t.weight_scale)
        assert (m.weight_quant, m.input_quant) == (t.weight_quant, t.input_quant)
        if m.input_scale is not None:
            assert torch.equal(m.input_scale, t.input_scale)


@pytest.mark.parametrize("scheme", ["w8a8", "O3"])
def test_load_runs_on_the_int8_runtime(tmp_path, scheme):
    """By default load() puts the linears on the INT8 runtime: the same integers as the saved
    model, identical to converting the saved model itself, and within rounding of the simulation."""
    from smoothquant.runtime import Int8Linear, convert

    model, result = _quantized("llama", scheme)
    simulated = _logits(model)
    sq.save_quantized(result, tmp_path / "q")
    loaded = sq.load(tmp_path / "q")
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, Int8Linear)
    assert torch.equal(_logits(loaded), _logits(convert(model)))
    torch.testing.assert_close(_logits(loaded), simulated, rtol=1e-4, atol=1e-4)


def test_round_trip_keeps_float64(tmp_path):
    model, result = _quantized("gemma3", "O3", dtype=torch.float64)
    sq.save_quantized(result, tmp_path / "q")
    loaded = sq.load(tmp_path / "q", backend=None)
    assert next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(_logits(loaded), _logits(model))


def test_checkpoint_fields_follow_compressed_tensors(tmp_path):
    model, result = _quantized("qwen2", "O3")
    sq.save_quantized(result, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    qc = config["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == (
        "compressed-tensors",
        "int-quantized",
        "compressed",
    )
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["Linear"]
    w, a = group["weights"], group["input_activations"]
    keys = ("num_bits", "type", "symmetric", "strategy", "dynamic")
    assert [w[k] for k in keys] == [a[k] for k in keys] == [8, "int", True, "tensor", False]
    assert qc["ignore"] == ["lm_head"]
    assert config["architectures"] == ["Qwen2ForCausalLM"]

    tensors = _tensors(tmp_path / "q")
    q = "model.layers.0.self_attn.q_proj"
    fq = model.get_submodule(q)
    assert tensors[f"{q}.weight"].dtype == torch.int8
    assert tensors[f"{q}.weight"].shape == (fq.out_features, fq.in_features)
    assert tensors[f"{q}.weight_scale"].dtype == torch.float32 and tensors[f"{q}.weight_scale"].shape == (1,)
    assert tensors[f"{q}.input_scale"].shape == (1,)
    assert tensors[f"{q}.bias"].dtype == torch.float32  # qwen2 q/k/v biases
    assert not any("zero_point" in k or "qweight" in k for k in tensors)
    # vLLM fuses q/k/v (and gate/up) with one input scale: the pipeline gives them equal ones
    for siblings in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        parent = "self_attn" if "q_proj" in siblings else "mlp"
        scales = [tensors[f"model.layers.1.{parent}.{s}.input_scale"] for s in siblings]
        assert all(torch.equal(s, scales[0]) for s in scales)
    recipe = json.loads((tmp_path / "q" / RECIPE_FILE).read_text())
    assert recipe["scheme"] == "O3" and recipe["quantized_linears"] == 14
    assert recipe["smoothquant_version"] == sq.__version__
    assert recipe["alpha"]  # alpha per smoothing group


def test_per_channel_scales_and_dynamic_inputs(tmp_path):
    model, result = _quantized("llama", "w8a8")
    sq.save_quantized(result, tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert (group["weights"]["strategy"], group["input_activations"]["strategy"]) == ("channel", "token")
    assert group["input_activations"]["dynamic"] is True
    tensors = _tensors(tmp_path / "q")
    down = "model.layers.1.mlp.down_proj"
    assert tensors[f"{down}.weight_scale"].shape == (model.get_submodule(down).out_features, 1)
    assert not any(k.endswith("input_scale") for k in tensors)


def test_moe_experts_use_original_checkpoint_names(tmp_path):
    """Mixtral's MoE block is ``mlp`` in transformers 5 but ``block_sparse_moe`` on disk (vLLM)."""
    _, result = _quantized("mixtral", "w8a8")
    sq.save_quantized(result, tmp_path / "q")
    tensors = _tensors(tmp_path / "q")
    assert tensors["model.layers.0.block_sparse_moe.experts.3.w1.weight"].dtype == torch.int8
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight_scale" in tensors
    assert tensors["model.layers.0.block_sparse_moe.gate.weight"].is_floating_point()
    assert not any(".mlp." in k for k in tensors)
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "model.layers.1.block_sparse_moe.gate" in qc["ignore"]


def test_qwen_moe_ignores_routers_and_shared_expert_gate(tmp_path):
    model, result = _quantized("qwen2_moe", "w8a8")
    sq.save_quantized(result, tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    routers = {"model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert_gate"}
    assert routers | {"lm_head"} <= set(qc["ignore"])
    assert torch.equal(_logits(sq.load(tmp_path / "q", backend=None)), _logits(model))


def test_tied_embeddings_stored_once_and_tied_back(tmp_path):
    model, result = _quantized("opt", "w8a8")
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    sq.save_quantized(result, tmp_path / "q")
    assert "lm_head.weight" not in _tensors(tmp_path / "q")
    loaded = sq.load(tmp_path / "q", backend=None)
    assert loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight


def test_save_leaves_the_model_unchanged(tmp_path):
    model, result = _quantized("llama", "O3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sq.save_quantized(result, tmp_path / "q")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_unequal_sibling_scales_are_raised_to_their_max(tmp_path, caplog):
    model, result = _quantized("llama", "O3")
    k = model.get_submodule("model.layers.0.self_attn.k_proj")
    k.input_scale.mul_(2)  # as if calibrated on another input
    sq.save_quantized(result, tmp_path / "q")
    assert "differ" in caplog.text
    tensors = _tensors(tmp_path / "q")
    for leaf in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(tensors[f"model.layers.0.self_attn.{leaf}.input_scale"], k.input_scale)
    assert torch.equal(tensors["model.layers.1.self_attn.q_proj.input_scale"],
                       model.get_submodule("model.layers.1.self_attn.q_proj").input_scale)  # fmt: skip


@pytest.mark.parametrize(
    ("scheme", "what"),
    [
        ("zeroquant", "group-wise"),
        ("llm.int8", "outlier"),
        (sq.get_scheme("O3", quantize_bmm_inputs=True), "q/k/v"),
    ],
)
def test_inexpressible_schemes_are_refused(tmp_path, scheme, what):
    _, result = _quantized("llama", scheme)
    with pytest.raises(ExportError, match=what):
        sq.save_quantized(result, tmp_path / "q")
    assert not (tmp_path / "q").exists() and list(tmp_path.iterdir()) == []


def test_conv1d_families_are_refused(tmp_path):
    _, result = _quantized("gpt2", "w8a8")
    with pytest.raises(ExportError, match="Conv1D"):
        sq.save_quantized(result, tmp_path / "q")


def test_unquantized_model_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no quantized linears"):
        sq.save_quantized(tiny_model("llama"), tmp_path / "q")


def test_quantized_lm_head_is_untied(tmp_path):
    model = tiny_model("opt", dtype=torch.float32)
    stats = sq.calibrate(model, tiny_batches(), progress=False)
    sq.quantize(model, "w8a8", sq.smooth(model, stats), quantize_lm_head=True)
    sq.save_quantized(model, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert "lm_head" not in config["quantization_config"]["ignore"]
    loaded = sq.load(tmp_path / "q", backend=None)
    assert isinstance(loaded.lm_head, sq.FakeQuantLinear)
    assert torch.equal(_logits(loaded), _logits(model))
