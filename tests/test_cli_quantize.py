"""``smoothquant quantize``: a local tiny checkpoint in, a loadable export and a summary out."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import smoothquant as sq
from smoothquant.cli import main
from tiny_models import VOCAB, tiny_model

WORDS = [f"w{i}" for i in range(VOCAB - 1)]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Llama folder with a word-level tokenizer, and a text file to calibrate on."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama", dtype=torch.float32)
    model.save_pretrained(root / "model")
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    paragraphs = [
        " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (60,), generator=g)) for _ in range(100)
    ]
    (root / "calib.txt").write_text("\n\n".join(paragraphs))
    return root


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quantize_command_writes_a_loadable_checkpoint(tiny_checkpoint, capsys, tmp_path):
    out = tmp_path / "q"
    args = [
        "quantize",
        str(tiny_checkpoint / "model"),
        "-o",
        str(out),
        "--calib",
        str(tiny_checkpoint / "calib.txt"),
    ]
    code, stdout, stderr = _run(
        [*args, "--scheme", "O3", "--alpha", "0.7", "--num-samples", "4", "--seq-len", "32"], capsys
    )
    assert code == 0, stderr
    assert "quantized 14 linears" in stdout and "alpha 0.7" in stdout and "MiB" in stdout
    recipe = json.loads((out / "smoothquant_recipe.json").read_text())
    assert recipe["scheme"] == "O3" and set(recipe["alpha"].values()) == {0.7}
    assert recipe["calibration"]["num_sequences"] == 4 and recipe["calibration"]["seq_len"] == 32
    assert (out / "tokenizer.json").is_file()
    loaded = sq.load(out, backend=None)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, sq.FakeQuantLinear)
    # the same command again refuses to overwrite, then replaces with --force
    code, _, stderr = _run(args, capsys)
    assert code == 2 and "already exists" in stderr and "Traceback" not in stderr
    code, _, stderr = _run([*args, "--force", "--num-samples", "2", "--seq-len", "32"], capsys)
    assert code == 0, stderr
    assert json.loads((out / "smoothquant_recipe.json").read_text())["scheme"] == "w8a8"


def test_quantize_command_with_automatic_alpha(tiny_checkpoint, capsys, tmp_path):
    out = tmp_path / "q"
    args = [
        "quantize",
        str(tiny_checkpoint / "model"),
        "-o",
        str(out),
        "--calib",
        str(tiny_checkpoint / "calib.txt"),
    ]
    code, _, stderr = _run([*args, "--alpha", "auto", "--num-samples", "4", "--seq-len", "32"], capsys)
    assert code == 0, stderr
    recipe = json.loads((out / "smoothquant_recipe.json").read_text())
    assert recipe["linear_pairs"] is True and recipe["alpha_search"] is not None
    assert "model.layers.0.mlp_out" in recipe["alpha"]  # linear -> linear groups searched too
    assert sq.alphas_from_recipe(recipe) == recipe["alpha"]


def test_gptq_rounding_changes_integers_not_the_format(tiny_checkpoint, capsys, tmp_path):
    common = ["--calib", str(tiny_checkpoint / "calib.txt"), "--scheme", "o1", "--num-samples", "4"]
    loaded = {}
    for rounding in ("nearest", "gptq"):
        out = tmp_path / rounding
        args = ["quantize", str(tiny_checkpoint / "model"), "-o", str(out), *common, "--seq-len", "32"]
        code, _, stderr = _run([*args, "--rounding", rounding], capsys)
        assert code == 0, stderr
        assert json.loads((out / "smoothquant_recipe.json").read_text())["weight_rounding"] == rounding
        loaded[rounding] = sq.load(out, backend=None).model.layers[1].mlp.down_proj
    near, gptq = loaded["nearest"], loaded["gptq"]
    assert torch.equal(near.weight_scale, gptq.weight_scale)  # same scales: nothing clipped
    changed = (near.qweight != gptq.qweight).float().mean().item()
    assert 0.01 < changed < 0.9, changed  # GPTQ moves a share of the integers, by one step mostly
    assert (near.qweight.int() - gptq.qweight.int()).abs().float().mean() < 1.0


def test_searched_ranges_clip_scales_and_are_recorded(tiny_checkpoint, capsys, tmp_path):
    out = tmp_path / "search"
    args = ["quantize", str(tiny_checkpoint / "model"), "-o", str(out), "--scheme", "o3", "--seq-len", "32"]
    args += ["--calib", str(tiny_checkpoint / "calib.txt"), "--num-samples", "4", "--rounding", "gptq"]
    code, _, stderr = _run([*args, "--ranges", "search"], capsys)
    assert code == 0, stderr
    recipe = json.loads((out / "smoothquant_recipe.json").read_text())
    assert recipe["ranges"] == "search" and recipe["input_clip"]
    assert all(0.5 <= c <= 1.0 for c in recipe["input_clip"].values())
    assert sq.load(out, backend=None).model.layers[1].mlp.down_proj.input_scale is not None
    # layer by layer: the same searched ranges, the same tensors
    code, _, stderr = _run(
        [*args[:3], str(tmp_path / "lw"), *args[4:], "--ranges", "search", "--layerwise"], capsys
    )
    assert code == 0, stderr
    ours, theirs = sq.load(tmp_path / "lw", backend=None), sq.load(out, backend=None)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert (
        json.loads((tmp_path / "lw" / "smoothquant_recipe.json").read_text())["input_clip"]
        == recipe["input_clip"]
    )


def test_check_alphas_are_recorded_and_refused_without_auto(tiny_checkpoint, capsys, tmp_path):
    out = tmp_path / "checked"
    args = ["quantize", str(tiny_checkpoint / "model"), "-o", str(out), "--scheme", "o1", "--seq-len", "32"]
    args += ["--calib", str(tiny_checkpoint / "calib.txt"), "--num-samples", "2"]
    code, stdout, stderr = _run([*args, "--alpha", "auto", "--check-alphas", "0.3,0.9"], capsys)
    assert code == 0, stderr
    assert "model check (3 candidates" in stdout
    recipe = json.loads((out / "smoothquant_recipe.json").read_text())
    assert set(recipe["model_check"]["losses"]) == {"searched", "0.3", "0.9"}
    assert recipe["model_check"]["chosen"] in recipe["model_check"]["losses"]
    for extra, message in (
        (["--check-alphas"], "--alpha auto"),
        (["--alpha", "auto", "--check-alphas", "0.5,x"], "comma-separated numbers"),
        (["--alpha", "auto", "--check-alphas", "0.5,1.5"], "[0, 1]"),
        (["--alpha", "auto", "--check-alphas", "--layerwise"], "--layerwise"),
    ):
        code, _, stderr = _run([*args[:3], str(tmp_path / "bad"), *args[4:], *extra], capsys)
        assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
        (["--alpha", "half"], "--alpha must be a number in [0, 1] or 'auto'"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(tiny_checkpoint, capsys, tmp_path, extra, message):
    code, _, stderr = _run(
        ["quantize", str(tiny_checkpoint / "model"), "-o", str(tmp_path / "q"), *extra], capsys
    )
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "q").exists()


def test_output_checks_come_before_any_work(capsys, tmp_path):
    """A missing parent directory fails at once, before the (here nonexistent) model is loaded."""
    code, _, stderr = _run(["quantize", "no-such-model", "-o", str(tmp_path / "missing" / "q")], capsys)
    assert code == 2 and "does not exist" in stderr


def test_inexpressible_schemes_are_not_offered(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["quantize", "m", "-o", str(tmp_path / "q"), "--scheme", "zeroquant"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_layerwise_writes_the_same_checkpoint(tiny_checkpoint, capsys, tmp_path, rounding):
    common = ["--calib", str(tiny_checkpoint / "calib.txt"), "--num-samples", "4", "--seq-len", "32"]
    common += ["--rounding", rounding]
    model = str(tiny_checkpoint / "model")
    code, _, stderr = _run(["quantize", model, "-o", str(tmp_path / "memory"), *common], capsys)
    assert code == 0, stderr
    code, stdout, stderr = _run(
        ["quantize", model, "-o", str(tmp_path / "lw"), *common, "--layerwise"], capsys
    )
    assert code == 0, stderr
    assert "layer by layer" in stdout and "peak RSS" in stdout and "layer 2/2" in stderr
    ours, theirs = sq.load(tmp_path / "lw", backend=None), sq.load(tmp_path / "memory", backend=None)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    recipe = json.loads((tmp_path / "lw" / "smoothquant_recipe.json").read_text())
    assert recipe == json.loads((tmp_path / "memory" / "smoothquant_recipe.json").read_text())
    assert (tmp_path / "lw" / "tokenizer.json").is_file()
    code, _, stderr = _run(["quantize", model, "-o", str(tmp_path / "x"), "--device", "cpu"], capsys)
    assert code == 2 and "need --layerwise" in stderr


def test_recipe_reproduces_the_checkpoint_byte_for_byte(tiny_checkpoint, capsys, tmp_path):
    """quantize, then quantize again from the written recipe (no other flag): the same bytes."""
    model = str(tiny_checkpoint / "model")
    first = [
        "quantize",
        model,
        "-o",
        str(tmp_path / "a"),
        "--scheme",
        "o3",
        "--alpha",
        "auto",
        "--rounding",
        "gptq",
    ]
    first += ["--ranges", "search", "--calib", str(tiny_checkpoint / "calib.txt"), "--num-samples", "3"]
    code, _, stderr = _run([*first, "--seq-len", "24", "--dtype", "float32"], capsys)
    assert code == 0, stderr
    code, _, stderr = _run(
        ["quantize", model, "-o", str(tmp_path / "b"), "--recipe", str(tmp_path / "a")], capsys
    )
    assert code == 0, stderr
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / "smoothquant_recipe.json").read_text()) for d in "ab")
    assert a["recipe"] == b["recipe"] and a["recipe"]["seq_len"] == 24 and a["recipe"]["alpha"] == "auto"
    assert sq.Recipe.from_dict(a) == sq.Recipe.from_file(tmp_path / "b")
    # a flag beside --recipe replaces that one setting
    code, _, stderr = _run(
        ["quantize", model, "-o", str(tmp_path / "c"), "--recipe", str(tmp_path / "a"), "--alpha", "0.6"],
        capsys,
    )
    assert code == 0, stderr
    c = json.loads((tmp_path / "c" / "smoothquant_recipe.json").read_text())["recipe"]
    assert c == {**a["recipe"], "alpha": 0.6, "linear_pairs": True}
    code, _, stderr = _run(
        ["quantize", model, "-o", str(tmp_path / "d"), "--recipe", str(tmp_path / "no")], capsys
    )
    assert code == 2 and "cannot read the recipe" in stderr and "Traceback" not in stderr


def test_alpha_per_group_pattern_is_accepted(tiny_checkpoint, capsys, tmp_path):
    out = tmp_path / "q"
    args = ["quantize", str(tiny_checkpoint / "model"), "-o", str(out), "--alpha", "*.mlp_in=0.85,*=0.5"]
    calib = ["--calib", str(tiny_checkpoint / "calib.txt"), "--num-samples", "2", "--seq-len", "16"]
    code, stdout, stderr = _run([*args, *calib], capsys)
    assert code == 0, stderr
    alphas = json.loads((out / "smoothquant_recipe.json").read_text())["alpha"]
    assert alphas["model.layers.1.mlp_in"] == 0.85 and alphas["model.layers.1.attn_in"] == 0.5
    assert "alpha 0.5..0.85" in stdout
