"""Bad input to `convert`: one clear error message, exit 1, and nothing written."""

import json
import shutil

import pytest

from sharp_mlx import assets
from sharp_mlx.convert import main as convert_main

from .conftest import make_model_dir


def run_convert(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def assert_nothing_written(parent):
    assert not [p for p in parent.iterdir() if p.name.startswith((".out", "out"))]


@pytest.mark.parametrize("plan, message", [
    ('{"2": 2}', "maps layer 2 to itself"),
    ('{"2": 3, "3": 4}', "plan chains"),
    ('{"9": 1}', "out of range"),
])
def test_invalid_plan(tiny_llama, tmp_path, capsys, plan, message):
    error = run_convert(["--model", str(tiny_llama), "--plan", plan, "-o", str(tmp_path / "out")],
                        capsys)
    assert message in error
    assert_nothing_written(tmp_path)


def test_unsupported_architecture(tmp_path, capsys):
    model = make_model_dir(tmp_path / "gemma", "gemma", head_dim=16)
    error = run_convert(["--model", str(model), "-o", str(tmp_path / "out")], capsys)
    assert "does not support base model type 'gemma'" in error
    assert_nothing_written(tmp_path)


def test_missing_and_truncated_safetensors(tiny_llama, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    error = run_convert(["--model", str(broken), "-o", str(tmp_path / "out")], capsys)
    assert "model.safetensors is truncated" in error
    weights.unlink()
    error = run_convert(["--model", str(broken), "-o", str(tmp_path / "out")], capsys)
    assert "model.safetensors is missing" in error or "no model*.safetensors" in error
    assert_nothing_written(tmp_path)


def test_existing_output_needs_force(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    error = run_convert(["--model", str(tiny_llama), "-o", str(out)], capsys)
    assert "already exists; pass --force" in error
    assert (out / "keep.txt").read_text() == "mine"


def test_asset_with_wrong_sha256(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SHARP_MLX_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "cache" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the pinned model")
    error = run_convert(["-o", str(tmp_path / "out")], capsys)
    assert "sha256" in error and "does not match the pinned" in error
    with pytest.raises(assets.AssetError, match="does not match"):
        assets.asset_path("smollm2")


def test_failure_midway_leaves_no_partial_output(tiny_llama, tmp_path, capsys, monkeypatch):
    from sharp_mlx import models

    def fail(*args, **kwargs):
        raise ValueError("disk full")

    monkeypatch.setattr(models, "copy_tokenizer", fail)
    out = tmp_path / "out"
    error = run_convert(["--model", str(tiny_llama), "--plan", json.dumps({"1": 2}), "--rank",
                         "4", "-o", str(out)], capsys)
    assert "disk full" in error
    assert_nothing_written(tmp_path)


def test_auto_plan_meets_its_budget(tiny_llama, tmp_path):
    out = tmp_path / "auto"
    convert_main(["--model", str(tiny_llama), "--plan", "auto", "--budget", "0.3", "--rank", "4",
                  "-o", str(out)])
    record = json.loads((out / "sharp_recovery.json").read_text())
    assert record["accounting"]["net_mlp_saving_percent"] >= 30
    plan = {int(t): r for t, r in record["plan"].items()}
    assert plan and not set(plan) & set(plan.values())
