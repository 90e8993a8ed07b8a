"""`smoothquant eval` and `smoothquant demo` end to end on a tiny local checkpoint and a text file."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from smoothquant.cli import main
from smoothquant.cli.evaluate import parse_alpha
from smoothquant.evaluation import demo as demo_module
from tiny_models import VOCAB, tiny_model


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny Llama with a word-level tokenizer, saved as a local checkpoint folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "tiny"
    tiny_model("llama", torch.float32).save_pretrained(folder)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    paragraphs = [
        " ".join(f"w{int(i)}" for i in torch.randint(1, VOCAB, (60,), generator=g)) for _ in range(200)
    ]
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def test_parse_alpha():
    assert parse_alpha("0.6") == 0.6
    assert parse_alpha("auto") == "auto"
    assert parse_alpha("*.mlp_out=0.85, *=0.5,model.layers.0.attn_in=none") == {
        "*.mlp_out": 0.85,
        "*": 0.5,
        "model.layers.0.attn_in": None,
    }


def test_eval_command_writes_table_json_and_csv(checkpoint, text_file, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["eval", "--model", str(checkpoint), "--data", str(text_file), "--schemes", "fp,naive,w8a8,O3"]
    argv += ["--seq-len", "64", "--max-tokens", "256", "--calib-samples", "4", "--calib-seq-len", "32"]
    argv += [
        "--alpha",
        "*.mlp_out=0.8,*=0.5",
        "--linear-pairs",
        "O3",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
    ]
    assert main([*argv, "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("FP", "naive", "w8a8", "O3", "perplexity", "KL(FP||Q)"))
    data = json.loads(out_json.read_text())
    assert [r["name"] for r in data["results"]] == ["FP", "naive", "w8a8", "O3"]
    assert data["meta"]["windows"] == 4 and data["meta"]["tokens_scored"] == 4 * 63
    assert data["results"][2]["alpha"] == {"*.mlp_out": 0.8, "*": 0.5}
    assert [r.get("linear_pairs") for r in data["results"]] == [None, None, False, True]
    assert out_csv.read_text().splitlines()[0].startswith("name,perplexity,kl,top1")


def test_eval_command_reports_bad_input_in_one_line(checkpoint, text_file, capsys):
    assert main(["eval", "--model", str(checkpoint), "--data", str(text_file), "--schemes", "fp,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothquant: error: unknown scheme 'nope'") and "Traceback" not in err


def _tiny_mode(mode, size):
    return dataclasses.replace(mode, size=size)


@pytest.mark.parametrize("flag", ["--full", None])
def test_demo_writes_table_figures_and_results(checkpoint, text_file, tmp_path, monkeypatch, capsys, flag):
    pytest.importorskip("matplotlib")
    # each mode (the full one with its alpha search) at a size a tiny model runs in seconds
    monkeypatch.setattr(
        demo_module, "FULL", _tiny_mode(demo_module.FULL, demo_module.Size(4, 32, 3, 64, (0.4, 0.8), 2))
    )
    monkeypatch.setattr(
        demo_module, "SHORT", _tiny_mode(demo_module.SHORT, demo_module.Size(2, 32, 2, 64, (0.3, 0.5), 1))
    )
    mode = demo_module.FULL if flag else demo_module.SHORT
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(checkpoint), "--data", str(text_file), "--out", str(out)]
    assert main([*argv, *([flag] if flag else []), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name, _ in mode.rows:
        assert name in printed
    assert (out / "fig4_channel_absmax.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "fig10_alpha_sweep.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "text.txt", "tiny"]  # no temporaries left
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["results"]] == [name for name, _ in mode.rows]
    assert [p["alpha"] for p in data["meta"]["sweep"]["O3"]] == list(mode.size.sweep_alphas)
    assert data["meta"]["tokens_scored"] == mode.size.eval_windows * 63
    assert data["meta"]["worst_layer"].startswith("model.layers.")
    settings = mode.smoothing()
    for row, (_, scheme) in zip(data["results"], mode.rows, strict=True):
        if scheme in settings:  # every SmoothQuant row uses its documented setting
            setting = settings[scheme]
            assert {k: row[k] for k in ("alpha", "linear_pairs")} == {
                k: setting[k] for k in ("alpha", "linear_pairs")
            }
            assert row.get("weight_rounding", "nearest") == setting.get("rounding", "nearest")
            assert row.get("ranges", "absmax") == setting.get("ranges", "absmax")
    if flag:
        assert data["results"][6]["alpha"] == "auto" and data["results"][6]["weight_rounding"] == "gptq"
    else:  # the short mode: no baselines beyond naive, no search, no GPTQ
        assert "ZeroQuant" not in printed and all("alpha_search" not in r for r in data["results"])
        assert all(r.get("weight_rounding", "nearest") == "nearest" for r in data["results"])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--out", "afile", "is a file, not a folder: choose another --out"),
        ("--out", "afile/sub", "is a file, not a directory"),
        ("--out", "/proc/x", "cannot write in /proc"),
        ("--data", "missing.txt", "unknown dataset"),
        ("--model", "no-such-model", "unknown model 'no-such-model'"),
        ("--alpha", "1.5", "alpha"),
    ],
)
def test_demo_refuses_bad_input_in_one_line(checkpoint, text_file, tmp_path, capsys, flag, value, message):
    (tmp_path / "afile").write_text("keep")
    source = sorted((p.name, p.stat().st_size) for p in checkpoint.iterdir())
    args = {"--model": str(checkpoint), "--data": str(text_file), "--out": str(tmp_path / "out")}
    args[flag] = str(tmp_path / value) if value.startswith(("afile", "missing")) else value
    argv = ["demo", *(x for kv in args.items() for x in kv), "--no-progress"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoothquant: error: ") and "Traceback" not in err, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "keep"
    assert sorted((p.name, p.stat().st_size) for p in checkpoint.iterdir()) == source


def test_eval_check_alphas_need_auto(checkpoint, text_file, capsys):
    args = [
        "eval",
        "--model",
        str(checkpoint),
        "--data",
        str(text_file),
        "--schemes",
        "fp,O1",
        "--check-alphas",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--check-alphas checks the result of --alpha auto" in err and "Traceback" not in err
