"""evaluate: perplexity, parameter kinds, disk bytes, speed, the JSON report, on tiny models."""

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

from sharp_mlx import data, evaluate, models
from sharp_mlx.convert import main as convert_main

TINY_MLP = 3 * 64 * 128
TINY_ATTENTION = 2 * 64 * 64 + 2 * 64 * 32  # q, o: 64x64; k, v: 2 KV heads of 16 dims
PLAN = '{"1": 0, "3": 2}'
RANK = 4


@pytest.fixture(scope="module")
def tiny_sharp(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharp") / "model"
    convert_main(["--model", str(tiny_llama), "--plan", PLAN, "--rank", str(RANK),
                  "-o", str(out)])
    return out


def test_parameter_counts_by_kind(tiny_llama, tiny_sharp):
    model, *_ = evaluate.load_model_for_eval(str(tiny_llama))
    counts = evaluate.parameter_counts(model)
    assert counts["embedding"] == 260 * 64  # tied: stored once
    assert counts["attention"] == 6 * TINY_ATTENTION
    assert counts["mlp_stored"] == 6 * TINY_MLP
    assert counts["norm"] == 6 * 2 * 64 + 64
    assert counts["recovery"] == counts["other"] == 0
    assert counts["total"] == models.parameter_count(model)
    assert evaluate.mlp_saving(model, counts) == 0

    sharp, *_ = evaluate.load_model_for_eval(str(tiny_sharp))
    sharp_counts = evaluate.parameter_counts(sharp)
    assert sharp_counts["mlp_stored"] == 4 * TINY_MLP
    assert sharp_counts["recovery"] == 2 * 3 * RANK * (64 + 128)
    assert sharp_counts["attention"] == counts["attention"]
    expected = 1 - (4 * TINY_MLP + sharp_counts["recovery"]) / (6 * TINY_MLP)
    assert evaluate.mlp_saving(sharp, sharp_counts) == pytest.approx(expected)


def test_quantized_weights_count_as_logical_elements(tiny_llama, tiny_sharp):
    for path in (tiny_llama, tiny_sharp):
        model, *_ = evaluate.load_model_for_eval(str(path))
        before = evaluate.parameter_counts(model)
        nn.quantize(model, group_size=32, bits=4)
        assert isinstance(model.layers[0].mlp.up_proj, nn.QuantizedLinear)
        assert evaluate.parameter_counts(model) == before


def test_param_kind_names():
    kind = evaluate.param_kind
    assert kind("model.layers.3.mlp.up_proj.lora_a") == "recovery"
    assert kind("model.layers.3.mlp.down_proj.out_scale") == "recovery"
    assert kind("model.layers.3.mlp.up_proj.weight") == "mlp_stored"
    assert kind("model.layers.3.self_attn.q_norm.weight") == "norm"
    assert kind("model.layers.3.self_attn.q_proj.bias") == "attention"
    assert kind("model.embed_tokens.weight") == "embedding"
    assert kind("lm_head.weight") == "embedding"


def test_dtype_option(tiny_llama):
    model, *_ = evaluate.load_model_for_eval(str(tiny_llama), dtype="float16")
    assert model.layers[0].mlp.up_proj.weight.dtype == mx.float16
    assert evaluate.compute_dtype(model) == "float16"


def test_benchmark_is_positive_and_restores_eos(tiny_llama):
    model, tokenizer, config, _ = evaluate.load_model_for_eval(str(tiny_llama))
    eos = set(tokenizer.eos_token_ids)
    speed = evaluate.benchmark(model, tokenizer, prompt_tokens=16, generation_tokens=8,
                               repeats=2, vocab_size=config["vocab_size"])
    assert set(speed) == set(evaluate.SPEED_KEYS)
    assert speed["generation_tokens"] == 8  # EOS never stops the run early
    for key in ("prompt_tok_per_s", "ttft_s", "decode_tok_per_s", "peak_memory_gb"):
        assert speed[key] > 0
    assert set(tokenizer.eos_token_ids) == eos


def test_cli_json_has_every_key(tiny_llama, tiny_sharp, text_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    evaluate.main(["--model", str(tiny_llama), "--model", str(tiny_sharp), "--data",
                   str(text_dir), "--seq-len", "32", "--max-tokens", "256", "-p", "16", "-g", "8",
                   "-n", "2", "--json", str(out)])
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == [str(tiny_llama), str(tiny_sharp)]
    data_keys = {f"{text_dir.name}_{k}" for k in evaluate.DATA_KEYS}
    for r in results:
        assert set(r) == set(evaluate.RESULT_KEYS) | data_keys | set(evaluate.SPEED_KEYS)
        files = Path(r["model"]).glob("model*.safetensors")
        assert r["disk_bytes"] == sum(f.stat().st_size for f in files) > 0
        assert r["load_time_s"] > 0
        assert r["prompt_tok_per_s"] > 0 and r["decode_tok_per_s"] > 0
        assert r["ttft_s"] > 0 and r["peak_memory_gb"] > 0
        ppl = r[f"{text_dir.name}_perplexity"]
        assert 1 < ppl < 1e4 and math.isfinite(r[f"{text_dir.name}_perplexity_stderr"])
        assert r[f"{text_dir.name}_windows"] == 8 and r[f"{text_dir.name}_tokens"] == 256
        assert r["dtype"] == "float32"
    base, sharp = results
    assert base["num_shared_layers"] == 0 and sharp["num_shared_layers"] == 2
    assert sharp["model_type"] == "sharp" and sharp["base_model_type"] == "llama"
    assert sharp["params_total"] < base["params_total"]
    assert sharp["disk_bytes"] < base["disk_bytes"]
    assert sharp["net_mlp_saving_percent"] > 0
    table = capsys.readouterr().out
    assert tiny_sharp.name in table and f"{text_dir.name} ppl" in table


def test_cli_without_data_or_speed(tiny_llama, tmp_path):
    out = tmp_path / "r.json"
    evaluate.main(["--model", str(tiny_llama), "--data", "none", "--no-speed",
                   "--json", str(out)])
    (result,) = json.loads(out.read_text())
    assert set(result) == set(evaluate.RESULT_KEYS)


def test_perplexity_matches_direct_computation(tiny_llama, text_dir):
    model, tokenizer, *_ = evaluate.load_model_for_eval(str(tiny_llama))
    token_data = evaluate.load_eval_data(str(text_dir), tokenizer, "test", 32, 128)
    ppl = evaluate.perplexity(model, token_data, batch_size=3)
    tokens = mx.array(token_data.tokens)
    nll = nn.losses.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean().item()
    assert ppl.perplexity == pytest.approx(math.exp(nll), rel=1e-4)
    assert ppl.windows == 4 and ppl.tokens == 128 and ppl.stderr > 0


@pytest.mark.slow
def test_default_model_figures():
    result = evaluate.evaluate_model(None, ["wiki"], max_tokens=1024, prompt_tokens=32,
                                     generation_tokens=8, repeats=1)
    assert result["num_layers"] == 30 and result["params_total"] == 134_515_008
    assert result["params_recovery"] == 0 and result["net_mlp_saving_percent"] == 0
    assert 1 < result["wiki_perplexity"] < 30 and result["wiki_tokens"] == 1024
    assert result["decode_tok_per_s"] > 0 and result["peak_memory_gb"] > 0.5  # float32 weights


def test_local_lm_eval_task_items_hold_the_true_reply(tmp_path):
    """tools/lm_eval_tasks.py: each item's label points at the chat's real next reply."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lm_eval_tasks", Path(__file__).parent.parent / "tools" / "lm_eval_tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    (task,) = tasks.write_tasks(tmp_path, max_items=20)
    assert str((tmp_path / "sharp_chitchat_reply.jsonl").resolve()) in task.read_text()
    items = [json.loads(x) for x in (tmp_path / "sharp_chitchat_reply.jsonl").read_text()
             .splitlines()]
    assert len(items) == 20
    next_reply = {}  # every "conversation so far" of a test chat -> the reply that follows
    for chat in (r["messages"] for r in data.load_records("chitchat", "test")):
        for cut in range(1, len(chat)):
            context = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in chat[:cut])
            key = f"{context}\n{chat[cut]['role'].capitalize()}:"
            next_reply.setdefault(key, set()).add(" " + chat[cut]["content"])
    for item in items:
        assert len(set(item["choices"])) == 4
        assert item["choices"][item["label"]] in next_reply[item["context"]]
