"""prune: ShortGPT Block Influence, layer removal, matching a SHARP plan, direct sharing."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sharp_mlx import analyze, evaluate, models, prune
from sharp_mlx.plan import SharingPlan
from sharp_mlx.sharp import recovery_config

LAYER = 3 * 64 * 128 + 2 * 64 * 64 + 2 * 64 * 32 + 2 * 64  # MLP + attention + 2 norms


def load(path):
    return models.load_base(str(path), dtype="float32")


def tokens(seed=0):
    mx.random.seed(seed)
    return mx.random.randint(0, 256, (2, 24))


def test_block_influence_of_an_identity_layer_is_zero(tiny_llama, text_dir):
    model, tokenizer, _, _ = load(tiny_llama)
    layer = model.layers[2]  # zero outputs of attention and MLP: the layer passes h through
    layer.self_attn.o_proj.weight = mx.zeros_like(layer.self_attn.o_proj.weight)
    layer.mlp.down_proj.weight = mx.zeros_like(layer.mlp.down_proj.weight)
    calibration = analyze.calibration_data(str(text_dir), tokenizer, 128, 64)
    influence = prune.block_influence(model, calibration)
    assert influence[2] == pytest.approx(0, abs=1e-6)
    assert np.all(np.delete(influence, 2) > 1e-3)
    assert prune.choose_layers(influence, 1) == [2]
    assert 2 not in prune.choose_layers(influence, 2, keep=[2])


def test_block_influence_matches_its_definition(tiny_llama, text_dir):
    model, tokenizer, _, _ = load(tiny_llama)
    calibration = analyze.calibration_data(str(text_dir), tokenizer, 128, 64)
    influence = prune.block_influence(model, calibration, batch_size=1)
    x = model.model.embed_tokens(mx.array(calibration.tokens[:, :-1]))
    for i, layer in enumerate(model.layers):
        y = layer(x, "causal", None)
        a, b = np.array(x.reshape(-1, 64)), np.array(y.reshape(-1, 64))
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert influence[i] == pytest.approx(1 - cosine.mean(), abs=1e-5)
        x = y


def test_pruned_model_equals_skipping_the_layers(tiny_llama):
    model, _, config, _ = load(tiny_llama)
    pruned, pruned_config = prune.prune_layers(model, config, [1, 4])
    assert len(pruned.layers) == 4 and pruned_config["num_hidden_layers"] == 4
    assert config["num_hidden_layers"] == 6  # the input config is untouched
    x = tokens()
    skipped = pruned(x)
    model.model.layers = [layer for i, layer in enumerate(model.layers) if i not in (1, 4)]
    assert mx.abs(model(x) - skipped).max().item() < 1e-5
    assert evaluate.parameter_counts(pruned)["total"] == (
        sum(v.size for _, v in tree_flatten(model.parameters())))
    with pytest.raises(ValueError):
        prune.prune_layers(load(tiny_llama)[0], config, range(6))


def test_prune_quantized_model(tiny_llama):
    import mlx.nn as nn

    model, _, config, _ = load(tiny_llama)
    nn.quantize(model, group_size=32, bits=4)
    config = {**config, "quantization": {"group_size": 32, "bits": 4}}
    pruned, _ = prune.prune_layers(model, config, [0])
    assert isinstance(pruned.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert mx.array_equal(pruned.layers[0].mlp.up_proj.weight, model.layers[1].mlp.up_proj.weight)


def test_layers_to_match_a_plan(tiny_llama):
    model, *_ = load(tiny_llama)
    per_layer = prune.layer_params(model)
    assert per_layer == [LAYER] * 6
    recovery = recovery_config("lora", rank=4)
    plan = SharingPlan({1: 0, 3: 2}, 6)
    saving = prune.sharp_saving(model, plan, recovery)
    assert saving == 2 * (3 * 64 * 128 - 3 * 4 * (64 + 128))
    influence = np.array([0.5, 0.1, 0.4, 0.2, 0.3, 0.9])
    assert prune.layers_to_match(influence, per_layer, saving) == [1]  # 36992 is nearest 44544
    assert prune.layers_to_match(influence, per_layer, 2 * LAYER) == [1, 3]
    assert prune.layers_to_match(influence, per_layer, 2 * LAYER, keep=[3]) == [1, 4]
    assert prune.layers_to_match(influence, per_layer, 10) == []


def test_direct_sharing_computes_with_the_reference(tiny_llama):
    model, _, config, _ = load(tiny_llama)
    plan = SharingPlan({4: 3}, 6)
    shared, sharp_config = prune.direct_sharing(model, config, plan)
    assert sharp_config["sharp"]["recovery"]["rank"] == 1
    x = tokens(1)
    expected_model = load(tiny_llama)[0]
    expected_model.layers[4].mlp = expected_model.layers[3].mlp
    assert mx.abs(shared(x) - expected_model(x)).max().item() < 1e-5


def test_cli_removes_lowest_influence_layers(tiny_llama, text_dir, tmp_path, capsys):
    from mlx_lm import generate
    from mlx_lm import load as mlx_load

    out = tmp_path / "pruned"
    prune.main(["--model", str(tiny_llama), "--layers", "2", "--data", str(text_dir),
                "--tokens", "128", "--seq-len", "64", "-o", str(out)])
    config = json.loads((out / "config.json").read_text())
    info = config["sharp_prune"]
    assert config["num_hidden_layers"] == 4 and len(info["removed_layers"]) == 2
    influence = info["block_influence"]
    assert sorted(np.argsort(influence)[:2].tolist()) == info["removed_layers"]
    assert info["saved_params"] == 2 * LAYER
    model, tokenizer = mlx_load(str(out))  # stock mlx-lm loads it
    assert len(model.layers) == 4
    assert isinstance(generate(model, tokenizer, "hello", max_tokens=4), str)
    assert "removing 2 of 6 layers" in capsys.readouterr().out
    result = evaluate.evaluate_model(str(out), [], speed=False)
    assert result["num_removed_layers"] == 2 and result["params_total"] == 4 * LAYER + 260 * 64 + 64
    assert result["net_mlp_saving_percent"] == pytest.approx(100 * 2 / 6, abs=1e-3)
    with pytest.raises(SystemExit):  # refuses to overwrite
        prune.main(["--model", str(tiny_llama), "--layers", "1", "--data", str(text_dir),
                    "--tokens", "128", "--seq-len", "64", "-o", str(out)])


def test_cli_matches_a_sharp_model_dir(tiny_llama, text_dir, tmp_path):
    from sharp_mlx.convert import main as convert_main

    sharp_dir = tmp_path / "sharp"
    convert_main(["--model", str(tiny_llama), "--plan", '{"1": 0, "3": 2, "5": 4}', "--rank",
                  "4", "-o", str(sharp_dir)])
    out = tmp_path / "matched"
    prune.main(["--model", str(tiny_llama), "--match-plan", str(sharp_dir), "--data",
                str(text_dir), "--tokens", "128", "--seq-len", "64", "-o", str(out)])
    info = json.loads((out / "config.json").read_text())["sharp_prune"]
    assert info["matched_saving_params"] == 3 * (3 * 64 * 128 - 3 * 4 * (64 + 128))
    assert len(info["removed_layers"]) == 2  # 66816 is nearer 2 layers (73984) than 1 (36992)
    assert info["matched_recovery"]["rank"] == 4


@pytest.mark.slow
def test_default_model_pruned_still_runs():
    model, tokenizer, config, _ = models.load_base(None, dtype="float32")
    influence = prune.block_influence(model, analyze.calibration_data("wiki", tokenizer, 512))
    assert influence.shape == (30,) and np.all(influence > 0)
    pruned, pruned_config = prune.prune_layers(model, config, prune.choose_layers(influence, 2))
    test = analyze.calibration_data("wiki", tokenizer, 512, split="test")
    base = evaluate.perplexity(model, test).perplexity
    ppl = evaluate.perplexity(pruned, test).perplexity
    assert pruned_config["num_hidden_layers"] == 28
    assert base < ppl < 10 * base
