"""The SHARP architecture: shared weights stored once, exact equivalences, stock mlx-lm loading."""

import json
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from sharp_mlx import models
from sharp_mlx.convert import main as convert_main
from sharp_mlx.plan import SharingPlan
from sharp_mlx.sharp import build_sharp, fold_recovery, recovery_config

PLAN = {1: 2, 3: 2, 5: 4}


def load_base(path):
    return models.load_base(str(path), dtype="float32")


def tokens(vocab=260, length=12, seed=0):
    mx.random.seed(seed)
    return mx.random.randint(0, vocab, (2, length))


def randomize_recovery(model, seed=1):
    """Give every recovery tensor a non-trivial value so equivalences test something."""
    mx.random.seed(seed)
    for name, value in tree_flatten(model.parameters()):
        if name.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "in_scale", "out_scale"):
            noise = 0.05 * mx.random.normal(value.shape)
            model.update(_unflatten(name, (1.0 if "scale" in name else 0.0) + noise))


def _unflatten(name, value):
    from mlx.utils import tree_unflatten

    return tree_unflatten([(name, value)])


@pytest.mark.parametrize("kind", ["lora", "vectors", "lora+vectors"])
def test_shared_weights_are_parameters_once(tiny_llama, kind):
    base, _, config, _ = load_base(tiny_llama)
    model, _ = build_sharp(base, config, SharingPlan(PLAN, 6), recovery_config(kind, rank=4))
    names = [k for k, _ in tree_flatten(model.parameters())]
    for target in PLAN:
        assert not any(n.startswith(f"model.layers.{target}.mlp.") and n.endswith(".weight")
                       for n in names)
    assert len(names) == len(set(names))
    expected = {"lora": ["lora_a", "lora_b"], "vectors": ["in_scale", "out_scale"],
                "lora+vectors": ["in_scale", "lora_a", "lora_b", "out_scale"]}[kind]
    got = sorted(n.rsplit(".", 1)[1] for n in names if n.startswith("model.layers.1.mlp.up_proj"))
    assert got == expected


@pytest.mark.parametrize("kind", ["lora", "vectors", "lora+vectors"])
def test_folded_model_gives_same_logits(tiny_llama, kind):
    base, _, config, _ = load_base(tiny_llama)
    model, sharp_cfg = build_sharp(base, config, SharingPlan(PLAN, 6),
                                   recovery_config(kind, rank=4, scale=2.0))
    randomize_recovery(model)
    plain, plain_cfg = fold_recovery(model, sharp_cfg)
    assert plain_cfg["model_type"] == "llama"
    x = tokens()
    diff = mx.abs(model(x) - plain(x)).max().item()
    assert diff < 1e-4


def test_svd_init_at_full_rank_reproduces_original(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    model, _ = build_sharp(base, config, SharingPlan(PLAN, 6),
                           recovery_config("lora", rank=64), init="svd")
    x = tokens()
    assert mx.abs(model(x) - base(x)).max().item() < 1e-3


def test_svd_init_is_better_than_zero_at_low_rank(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    x = tokens()
    errors = {}
    for init in ("zero", "svd"):
        model, _ = build_sharp(base, config, SharingPlan(PLAN, 6),
                               recovery_config("lora", rank=8), init=init)
        errors[init] = mx.abs(model(x) - base(x)).mean().item()
    assert errors["svd"] < errors["zero"]


def test_zero_init_is_direct_sharing(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    model, _ = build_sharp(base, config, SharingPlan(PLAN, 6), recovery_config("lora", rank=4))
    h = mx.random.normal((1, 3, 64))
    for target, reference in PLAN.items():
        expected = base.layers[reference].mlp(h)
        assert mx.abs(model.layers[target].mlp(h) - expected).max().item() < 1e-6


def test_empty_plan_reproduces_base_exactly(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    model, _ = build_sharp(base, config, SharingPlan({}, 6), recovery_config())
    x = tokens()
    assert mx.array_equal(model(x), base(x))


def test_quantize_keeps_shared_weights_once_and_quantized(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    model, _ = build_sharp(base, config, SharingPlan(PLAN, 6), recovery_config("lora", rank=4))
    nn.quantize(model, group_size=32, bits=4)
    assert isinstance(model.layers[2].mlp.gate_proj, nn.QuantizedLinear)
    assert isinstance(model.layers[1].mlp.reference_mlp.gate_proj, nn.QuantizedLinear)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert sum(n.startswith("model.layers.2.mlp.gate_proj.") for n in names) == 3
    assert not any(n.startswith("model.layers.1.mlp.gate_proj.scales") for n in names)
    assert model(tokens()).shape == (2, 12, 260)


def test_unsupported_architecture_is_a_clear_error(tiny_llama):
    base, _, config, _ = load_base(tiny_llama)
    with pytest.raises(ValueError, match="does not support base model type 'gemma'"):
        build_sharp(base, {**config, "model_type": "gemma"}, SharingPlan(PLAN, 6),
                    recovery_config())


@pytest.fixture(scope="module")
def converted(tiny_llama, tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    for name, path in (("llama", tiny_llama), ("qwen2", tiny_qwen2)):
        convert_main(["--model", str(path), "--plan", json.dumps(PLAN), "--rank", "4",
                      "-o", str(out / name)])
    convert_main(["--model", str(tiny_llama), "--plan", "none", "-o", str(out / "plain")])
    return out


def test_converted_dir_stores_shared_weights_once(converted):
    sharp_dir = converted / "llama"
    config = json.loads((sharp_dir / "config.json").read_text())
    assert config["model_type"] == "sharp" and config["model_file"] == "sharp_model.py"
    assert config["sharp"]["plan"] == {str(k): v for k, v in sorted(PLAN.items())}
    assert (sharp_dir / "sharp_model.py").read_bytes() == (
        models.Path(models.__file__).with_name("sharp_model.py").read_bytes())
    weights = mx.load(str(sharp_dir / "model.safetensors"))
    for target in PLAN:
        assert f"model.layers.{target}.mlp.gate_proj.weight" not in weights
        assert f"model.layers.{target}.mlp.gate_proj.lora_a" in weights
    assert "model.layers.2.mlp.gate_proj.weight" in weights
    plain_bytes = models.tensor_bytes(converted / "plain")
    per_layer_mlp = 3 * 64 * 128 * 2
    lora = 3 * 4 * (64 + 128) * 2
    assert models.tensor_bytes(sharp_dir) == plain_bytes - 3 * per_layer_mlp + 3 * lora


STOCK_GENERATE = """
import sys
from mlx_lm import load, generate
model, tokenizer = load(sys.argv[1], model_config={}, tokenizer_config={},
                        **({"trust_remote_code": True}))
text = generate(model, tokenizer, prompt="hello", max_tokens=5)
assert "sharp_mlx" not in sys.modules, "sharp_mlx was imported"
print("OK", type(model).__name__, len(text))
"""


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_stock_mlx_lm_generates_without_sharp_mlx(converted, name):
    out = subprocess.run([sys.executable, "-c", STOCK_GENERATE, str(converted / name)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "OK Sharp" in out.stdout


def test_stock_mlx_lm_generate_cli(converted):
    out = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model",
                          str(converted / "llama"), "--trust-remote-code", "--prompt", "hi",
                          "--max-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Generation: 5 tokens" in out.stdout


def test_stock_mlx_lm_convert_quantizes_sharp_model(converted, tmp_path):
    q_dir = tmp_path / "q4"
    out = subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path",
                          str(converted / "llama"), "--mlx-path", str(q_dir), "-q",
                          "--q-group-size", "32", "--trust-remote-code"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    weights = mx.load(str(q_dir / "model.safetensors"))
    assert weights["model.layers.2.mlp.gate_proj.weight"].dtype == mx.uint32
    assert "model.layers.2.mlp.gate_proj.scales" in weights
    assert "model.layers.1.mlp.gate_proj.weight" not in weights
    assert "model.layers.1.mlp.gate_proj.lora_a" in weights
    gen = subprocess.run([sys.executable, "-c", STOCK_GENERATE, str(q_dir)],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
