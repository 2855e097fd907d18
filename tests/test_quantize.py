"""Quantizing SHARP and plain model dirs: shared weights once, recovery kept, stock mlx-lm."""

import json
import subprocess
import sys

import mlx.core as mx
import pytest

from sharp_mlx import models
from sharp_mlx.convert import main as convert_main
from sharp_mlx.quantize import main as quantize_main
from sharp_mlx.quantize import quantize_model_dir

PLAN = {1: 2, 3: 2, 5: 4}
RECOVERY = ("lora_a", "lora_b")


@pytest.fixture(scope="module")
def converted(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharp")
    convert_main(["--model", str(tiny_llama), "--plan", json.dumps(PLAN), "--rank", "4",
                  "-o", str(out / "sharp")])
    convert_main(["--model", str(tiny_llama), "--plan", "none", "-o", str(out / "plain")])
    return out


@pytest.fixture(scope="module")
def quantized(converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    runs = {"q4": ("sharp", dict(q_bits=4)), "q8": ("sharp", dict(q_bits=8, q_group_size=32)),
            "mixed": ("sharp", dict(mixed="mixed_3_6", q_group_size=32)),
            "plain_q4": ("plain", dict(q_bits=4))}
    summaries = {name: quantize_model_dir(converted / src, out / name, verbose=False, **kw)
                 for name, (src, kw) in runs.items()}
    return out, summaries


@pytest.mark.parametrize("name,bits,group", [("q4", 4, 64), ("q8", 8, 32)])
def test_shared_weights_quantized_once_recovery_kept(converted, quantized, name, bits, group):
    out, summaries = quantized
    q_dir = out / name
    config = json.loads((q_dir / "config.json").read_text())
    assert config["quantization"] == {"group_size": group, "bits": bits, "mode": "affine"}
    assert config["model_type"] == "sharp" and config["sharp"]["plan"] == {
        str(k): v for k, v in PLAN.items()}
    weights = mx.load(str(q_dir / "model.safetensors"))
    source = mx.load(str(converted / "sharp" / "model.safetensors"))
    for reference in set(PLAN.values()):
        for matrix in ("gate_proj", "up_proj", "down_proj"):
            prefix = f"model.layers.{reference}.mlp.{matrix}"
            assert weights[f"{prefix}.weight"].dtype == mx.uint32
            assert sorted(k for k in weights if k.startswith(prefix + ".")) == [
                f"{prefix}.{p}" for p in ("biases", "scales", "weight")]
    for target in PLAN:
        mine = sorted(k.split(".mlp.")[1] for k in weights
                      if k.startswith(f"model.layers.{target}.mlp."))
        assert mine == sorted(f"{m}.{p}" for m in ("down_proj", "gate_proj", "up_proj")
                              for p in RECOVERY)
        for key in (k for k in weights if k.startswith(f"model.layers.{target}.mlp.")):
            assert weights[key].dtype == mx.float16
            assert mx.array_equal(weights[key], source[key])  # recovery untouched
    assert weights["model.embed_tokens.weight"].dtype == mx.uint32
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == mx.uint32
    # copied along
    assert (q_dir / "sharp_model.py").read_bytes() == (
        converted / "sharp" / "sharp_model.py").read_bytes()
    record = json.loads((q_dir / "sharp_recovery.json").read_text())
    assert record["plan"] == json.loads((converted / "sharp" / "sharp_recovery.json")
                                        .read_text())["plan"]
    assert record["quantization"]["bits"] == bits
    summary = summaries[name]
    assert summary["tensor_bytes_after"] == models.tensor_bytes(q_dir)
    assert summary["tensor_bytes_before"] == models.tensor_bytes(converted / "sharp")
    assert summary["tensor_bytes_after"] < summary["tensor_bytes_before"]


def test_quantized_sharp_computes_like_the_unquantized_model(converted, quantized):
    from mlx_lm.utils import load_model

    x = mx.array([[1, 5, 9, 33, 70, 2, 11, 250]])
    reference, _ = load_model(converted / "sharp", trust_remote_code=True)
    models.cast(reference, mx.float32)
    expected = reference(x)
    errors = {}
    for name in ("q4", "q8"):
        model, _ = load_model(quantized[0] / name, trust_remote_code=True)
        errors[name] = mx.abs(model(x).astype(mx.float32) - expected).mean().item()
    scale = mx.abs(expected).mean().item()
    assert errors["q8"] < 0.02 * scale
    assert errors["q8"] < errors["q4"] < 0.3 * scale


def test_mixed_recipe_uses_mlx_lm_per_layer_bits(quantized):
    config = json.loads((quantized[0] / "mixed" / "config.json").read_text())
    overrides = {k: v["bits"] for k, v in config["quantization"].items() if isinstance(v, dict)}
    assert set(overrides.values()) == {3, 6}
    assert overrides["model.layers.2.mlp.down_proj"] == 6  # mlx-lm's "use more bits" layers
    assert overrides["model.layers.2.mlp.gate_proj"] == 3
    assert not any(k.startswith(f"model.layers.{t}.mlp.") for t in PLAN for k in overrides)


def test_plain_model_quantizes(quantized):
    weights = mx.load(str(quantized[0] / "plain_q4" / "model.safetensors"))
    assert weights["model.layers.1.mlp.gate_proj.weight"].dtype == mx.uint32
    assert not (quantized[0] / "plain_q4" / "sharp_recovery.json").exists()


STOCK_GENERATE = """
import sys
from mlx_lm import load, generate
for path in sys.argv[1:]:
    model, tokenizer = load(path, tokenizer_config={}, model_config={},
                            **({"trust_remote_code": True}))
    text = generate(model, tokenizer, prompt="hello", max_tokens=4)
    print("OK", path, type(model).__name__)
assert "sharp_mlx" not in sys.modules, "sharp_mlx was imported"
"""


def test_stock_mlx_lm_loads_and_generates(quantized):
    names = ("q4", "q8", "mixed", "plain_q4")
    out = subprocess.run([sys.executable, "-c", STOCK_GENERATE,
                          *(str(quantized[0] / n) for n in names)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("OK")]
    assert len(lines) == 4
    assert all("Sharp" in line for line in lines[:3]) and "Sharp" not in lines[3]


def test_existing_output_needs_force(converted, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        quantize_main(["--model", str(converted / "sharp"), "-o", str(out)])
    assert e.value.code == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    quantize_main(["--model", str(converted / "sharp"), "-o", str(out), "--force"])
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temp dirs left


@pytest.mark.parametrize("case", ["missing", "quantized", "not_a_model"])
def test_bad_input_is_one_clear_error_and_writes_nothing(quantized, tmp_path, capsys, case):
    source = {"missing": tmp_path / "nope", "quantized": quantized[0] / "q4",
              "not_a_model": tmp_path}[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        quantize_main(["--model", str(source), "-o", str(out)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert {"missing": "not a model directory", "quantized": "already quantized",
            "not_a_model": "no config.json"}[case] in err[0]
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())
