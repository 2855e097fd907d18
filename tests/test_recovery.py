"""Warmup and SFT: they reduce error, resume to identical weights, stop on NaN, run on 2 ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sharp_mlx import data, models
from sharp_mlx import finetune as ft
from sharp_mlx import warmup as wu
from sharp_mlx.convert import main as convert_main
from sharp_mlx.plan import SharingPlan
from sharp_mlx.sharp import build_sharp, recovery_config

PLAN = {1: 2, 3: 2, 5: 4}


def sharp_and_base(path, rank=8, init="svd"):
    base, tokenizer, config, _ = models.load_base(str(path), dtype="float32")
    model, _ = build_sharp(base, config, SharingPlan(PLAN, 6), recovery_config(rank=rank),
                           init=init)
    return model, base, tokenizer


def recovery_arrays(model) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())
            if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}


def calibration(rows=8, length=32, seed=0):
    mx.random.seed(seed)
    return mx.random.randint(0, 256, (rows, length)), mx.random.randint(0, 256, (2, length))


WARMUP = wu.WarmupConfig(epochs=3, batch_tokens=64, learning_rate=3e-3)


@pytest.mark.parametrize("sequential", [False, True])
def test_warmup_reduces_each_targets_error(tiny_llama, sequential):
    model, base, _ = sharp_and_base(tiny_llama, init="zero")
    cal, _ = calibration()
    config = wu.WarmupConfig(**{**WARMUP.__dict__, "sequential": sequential})
    # Random tiny MLPs do not generalise from 256 tokens: measure on calibration rows.
    reports = wu.warmup(model, base, cal, cal[:2], config, progress=False)
    assert [r.layer for r in reports] == sorted(PLAN)
    for r in reports:
        assert r.error_after < r.error_before


def test_warmup_error_is_zero_for_an_exact_recovery(tiny_llama):
    model, base, _ = sharp_and_base(tiny_llama, rank=64)  # full rank SVD reproduces the target
    cal, held = calibration()
    config = wu.WarmupConfig(epochs=1, batch_tokens=64, learning_rate=0.0, schedule="constant")
    for r in wu.warmup(model, base, cal, held, config, progress=False):
        assert r.error_before < 1e-8


def test_warmup_resume_gives_identical_weights(tiny_llama, tmp_path, monkeypatch):
    cal, held = calibration()
    whole, base, _ = sharp_and_base(tiny_llama)
    wu.warmup(whole, base, cal, held, WARMUP, tmp_path / "a", progress=False)

    save = wu._save_checkpoint

    def stop_after_first(model, directory, reports):
        save(model, directory, reports)
        raise KeyboardInterrupt

    first, base, _ = sharp_and_base(tiny_llama)
    monkeypatch.setattr(wu, "_save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        wu.warmup(first, base, cal, held, WARMUP, tmp_path / "b", progress=False)
    monkeypatch.setattr(wu, "_save_checkpoint", save)
    resumed, base, _ = sharp_and_base(tiny_llama)
    reports = wu.warmup(resumed, base, cal, held, WARMUP, tmp_path / "b", progress=False)
    assert len(reports) == len(PLAN)
    a, b = recovery_arrays(whole), recovery_arrays(resumed)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_warmup_memory_budget_is_enforced(tiny_llama):
    model, base, _ = sharp_and_base(tiny_llama)
    cal, held = calibration()
    with pytest.raises(MemoryError, match="--warmup-tokens"):
        wu.warmup(model, base, cal, held, wu.WarmupConfig(memory_gb=1e-9))


def sft_data(tokenizer, text_dir, **overrides):
    settings = dict(data=str(text_dir), iters=6, batch_size=4, seq_len=32, learning_rate=3e-3,
                    steps_per_eval=3, save_every=1)
    config = ft.FinetuneConfig(**{**settings, **overrides})
    train, valid = ft.load_sft_data(tokenizer, config)
    return config, train, valid


@pytest.mark.parametrize("loss", ["ce", "kd", "ce+kd"])
def test_sft_lowers_validation_loss_and_trains_only_recovery(tiny_llama, text_dir, loss):
    model, base, tokenizer = sharp_and_base(tiny_llama)
    config, train, valid = sft_data(tokenizer, text_dir, loss=loss)
    frozen_before = {k: np.array(v) for k, v in tree_flatten(model.parameters())
                     if "lora" not in k}
    before = ft.validation_loss(model, valid, config)
    result = ft.finetune(model, base, train, valid, config, progress=False)
    assert result.best_val_loss < before
    assert all(np.array_equal(np.array(v), frozen_before[k])
               for k, v in tree_flatten(model.parameters()) if "lora" not in k)


def test_sft_resume_gives_identical_weights(tiny_llama, text_dir, tmp_path, monkeypatch):
    model, base, tokenizer = sharp_and_base(tiny_llama)
    config, train, valid = sft_data(tokenizer, text_dir)
    ft.finetune(model, None, train, valid, config, tmp_path / "a", progress=False)

    save = ft._save

    def stop_at_step_3(model, optimizer, result, best, directory):
        save(model, optimizer, result, best, directory)
        if result.steps == 3:
            raise KeyboardInterrupt

    resumed, _, _ = sharp_and_base(tiny_llama)
    monkeypatch.setattr(ft, "_save", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(resumed, None, train, valid, config, tmp_path / "b", progress=False)
    monkeypatch.setattr(ft, "_save", save)
    resumed, _, _ = sharp_and_base(tiny_llama)
    result = ft.finetune(resumed, None, train, valid, config, tmp_path / "b", progress=False)
    assert result.steps == 6
    a, b = recovery_arrays(model), recovery_arrays(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sft_stops_on_non_finite_loss_and_keeps_last_checkpoint(tiny_llama, text_dir, tmp_path):
    model, _, tokenizer = sharp_and_base(tiny_llama)
    config, train, valid = sft_data(tokenizer, text_dir, learning_rate=1e30, warmup_steps=0)
    with pytest.raises(ft.NonFiniteLoss, match="last good checkpoint"):
        ft.finetune(model, None, train, valid, config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "finetune.json").read_text())
    assert 1 <= saved["steps"] < 6
    assert all(np.isfinite(saved["train_losses"]))


def test_convert_chain_writes_record_and_loads(tiny_llama, text_dir, tmp_path):
    out = tmp_path / "sharp"
    convert_main(["--model", str(tiny_llama), "--plan", json.dumps(PLAN), "--rank", "8",
                  "--data", str(text_dir), "--seq-len", "32", "--warmup", "--warmup-tokens",
                  "512", "--finetune", "--iters", "4", "--steps-per-eval", "2", "--report",
                  "--report-tokens", "1024", "-o", str(out)])
    record = json.loads((out / "sharp_recovery.json").read_text())
    for name in ("wiki", "chitchat"):
        figures = record["report"][name]
        assert figures["ratio"] == pytest.approx(figures["sharp_ppl"] / figures["original_ppl"])
    assert isinstance(record["report"]["sample"], str)
    assert [t["layer"] for t in record["warmup"]["targets"]] == sorted(PLAN)
    assert record["finetune"]["result"]["steps"] == 4
    assert record["wall_time_s"] > 0
    assert not (tmp_path / "sharp.checkpoints").exists()
    model, _, config, _ = models.load_base(str(out))
    assert config["model_type"] == "sharp"


DISTRIBUTED = """
import json, sys
import sharp_mlx
import mlx.core as mx
import numpy as np
sys.path.insert(0, sys.argv[3])
from test_recovery import sharp_and_base, calibration, recovery_arrays, sft_data, WARMUP
from sharp_mlx import finetune as ft, warmup as wu
group = mx.distributed.init()
print("ranks", group.size(), flush=True)
group = group if group.size() > 1 else None
model, base, tokenizer = sharp_and_base(sys.argv[1])
cal, held = calibration()
wu.warmup(model, base, cal, held, WARMUP, group=group, progress=False)
config, train, valid = sft_data(tokenizer, sys.argv[2])
ft.finetune(model, None, train, valid, config, group=group, progress=False)
if group is None or group.rank() == 0:
    np.savez(sys.argv[4], **recovery_arrays(model))
"""


def test_two_ranks_match_one_process(tiny_llama, text_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED)
    args = [str(tiny_llama), str(text_dir), str(Path(__file__).parent)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    single = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one.npz")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr
    launch = Path(sys.executable).with_name("mlx.launch")
    double = subprocess.run([str(launch), "-n", "2", "--backend", "ring", "--starting-port",
                             free_ports(), sys.executable,
                             str(script), *args,
                             str(tmp_path / "two.npz")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert double.returncode == 0, double.stderr + double.stdout
    assert "ranks 2" in double.stdout, double.stdout + double.stderr
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:
        np.testing.assert_allclose(one[key], two[key], atol=1e-4, rtol=1e-3)


def free_ports() -> str:
    """A port p with p and p + 1 free (mlx.launch's ring backend listens on one port per rank);
    a fixed default port can still be in TIME_WAIT from the previous launch."""
    import socket

    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return str(port)
    raise RuntimeError("no two adjacent free ports")


CLI = "import sys\nfrom sharp_mlx.convert import main\nmain(sys.argv[1:])\n"


def test_convert_cli_on_two_ranks_matches_one_process(tiny_llama, text_dir, tmp_path):
    """`mlx.launch -n 2 python cli.py ...` (warmup split by target, SFT data parallel) writes
    the weights one process writes."""
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    args = ["--model", str(tiny_llama), "--plan", json.dumps(PLAN), "--rank", "4", "--warmup",
            "--warmup-tokens", "2048", "--warmup-batch-tokens", "256", "--finetune",
            "--data", str(text_dir), "--seq-len", "32", "--iters", "4", "--steps-per-eval", "2"]
    launch = Path(sys.executable).with_name("mlx.launch")
    for command, out in (([sys.executable], "one"),
                         ([str(launch), "-n", "2", "--backend", "ring", "--starting-port",
                           free_ports(), sys.executable], "two")):
        done = subprocess.run([*command, str(script), *args, "-o", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / out / "model.safetensors").exists(), (done.stdout + done.stderr)[-3000:]
    one = mx.load(str(tmp_path / "one" / "model.safetensors"))
    two = mx.load(str(tmp_path / "two" / "model.safetensors"))
    assert sorted(one) == sorted(two) and any("lora_b" in k for k in one)
    for key in one:
        np.testing.assert_allclose(np.array(one[key], np.float32), np.array(two[key], np.float32),
                                   atol=1e-3)
    record = json.loads((tmp_path / "two" / "sharp_recovery.json").read_text())
    assert record["ranks"] == 2
    assert sorted(t["layer"] for t in record["warmup"]["targets"]) == sorted(PLAN)


def test_data_dir_errors_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="train.jsonl does not exist"):
        data.load_records(str(tmp_path), "train")
    (tmp_path / "train.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(data.DataError, match="train.jsonl:1 needs"):
        data.load_records(str(tmp_path), "train")


def test_finetune_cli_on_a_sharp_dir(tiny_llama, text_dir, tmp_path):
    sharp_dir, out = tmp_path / "sharp", tmp_path / "tuned"
    convert_main(["--model", str(tiny_llama), "--plan", json.dumps(PLAN), "--rank", "4",
                  "-o", str(sharp_dir)])
    ft.main(["--model", str(sharp_dir), "--data", str(text_dir), "--seq-len", "32",
             "--iters", "2", "--steps-per-eval", "1", "--loss", "kd", "--original",
             str(tiny_llama), "-o", str(out)])
    record = json.loads((out / "sharp_recovery.json").read_text())
    assert record["finetune"]["result"]["steps"] == 2
    assert record["base_model"] == str(tiny_llama)
    assert not (tmp_path / "tuned.checkpoints").exists()
    before = mx.load(str(sharp_dir / "model.safetensors"))
    after = mx.load(str(out / "model.safetensors"))
    assert not mx.array_equal(before["model.layers.1.mlp.up_proj.lora_b"],
                              after["model.layers.1.mlp.up_proj.lora_b"])
    assert mx.array_equal(before["model.layers.2.mlp.up_proj.weight"],
                          after["model.layers.2.mlp.up_proj.weight"])


def test_warmup_feeds_each_target_its_own_layer_input(tiny_llama):
    """Direct sharing's error at every target, recomputed by hand from the original model."""
    from mlx_lm.models.base import create_attention_mask

    model, base, _ = sharp_and_base(tiny_llama, init="zero")
    cal, held = calibration()
    config = wu.WarmupConfig(epochs=1, batch_tokens=64, learning_rate=0.0, schedule="constant")
    reports = {r.layer: r for r in wu.warmup(model, base, cal, held, config, progress=False)}
    h = base.model.embed_tokens(held)
    mask = create_attention_mask(h, None)
    for index, layer in enumerate(base.layers):
        if index in PLAN:
            mid = h + layer.self_attn(layer.input_layernorm(h), mask)
            x = layer.post_attention_layernorm(mid)
            expected = wu.relative_error(base.layers[PLAN[index]].mlp(x), layer.mlp(x))
            assert reports[index].error_before == pytest.approx(expected, rel=1e-4)
        h = layer(h, mask)
