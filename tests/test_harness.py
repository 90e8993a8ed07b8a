"""The lm-evaluation-harness adapter, on a multiple-choice task made from a local file (no network)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from smoothquant import quantize_model
from smoothquant.evaluation import harness
from smoothquant.evaluation.harness import HarnessError, headline, run_tasks
from tiny_models import VOCAB, tiny_batches, tiny_model

pytest.importorskip("lm_eval")


@pytest.fixture
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, eos_token="w1")


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(6):
        words = [f"w{int(i)}" for i in torch.randint(2, VOCAB, (9,), generator=g)]
        items.append({"question": " ".join(words[:6]), "choices": [" " + w for w in words[6:]], "answer": 1})
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local_mc.yaml").write_text(
        "task: local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return tmp_path / "tasks"


def test_local_task_on_float_and_quantized_models(tokenizer, task_dir):
    model = tiny_model("llama", torch.float32)
    fp = run_tasks(model, tokenizer, ["local_mc"], include_path=task_dir)
    assert set(fp) == {"local_mc"}
    name, acc = headline(fp["local_mc"])
    assert name == "acc" and acc in {i / 6 for i in range(7)}
    assert run_tasks(copy.deepcopy(model), tokenizer, ["local_mc"], include_path=task_dir) == fp

    quantized = copy.deepcopy(model)
    quantize_model(quantized, tiny_batches(4, 16), "w8a8", progress=False)
    result = run_tasks(quantized, tokenizer, ["local_mc"], include_path=task_dir)
    assert 0.0 <= headline(result["local_mc"])[1] <= 1.0


def test_unknown_task_is_a_clear_error(tokenizer, task_dir, monkeypatch):
    class NoTasks:  # the harness's full task index takes a minute to build; its answer is the same
        def match_tasks(self, names):
            return []

    monkeypatch.setattr(harness, "_task_manager", lambda path, defaults: NoTasks())
    with pytest.raises(HarnessError, match=r"unknown lm-eval task.*no_such_task"):
        run_tasks(tiny_model("llama", torch.float32), tokenizer, ["no_such_task"], include_path=task_dir)


def test_eval_command_adds_task_scores_to_every_row(tokenizer, task_dir, tmp_path, capsys):
    from smoothquant.cli import main

    folder = tmp_path / "ckpt"
    tiny_model("llama", torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    g = torch.Generator().manual_seed(1)
    text.write_text(
        "\n\n".join(
            " ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB, (50,), generator=g)) for _ in range(60)
        )
    )
    argv = ["eval", "--model", str(folder), "--data", str(text), "--schemes", "fp,w8a8", "--seq-len", "32"]
    argv += ["--max-tokens", "64", "--calib-samples", "2", "--calib-seq-len", "32", "--no-progress"]
    argv += ["--tasks", "local_mc", "--task-dir", str(task_dir), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert "local_mc:acc" in capsys.readouterr().out
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [sorted(r["tasks"]) for r in rows] == [["local_mc:acc"], ["local_mc:acc"]]
