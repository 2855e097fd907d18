"""Bundles for the iPhone app (manifest, sha256, accounting, Swift verification) and the parity
fixture the Swift tests read."""

import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import pytest

from sharp_mlx import export, models
from sharp_mlx.convert import main as convert_main
from sharp_mlx.quantize import quantize_model_dir

REPO = Path(__file__).resolve().parent.parent
PLAN = {1: 2, 3: 2, 5: 4}


@pytest.fixture(scope="module")
def models_dir(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    convert_main(["--model", str(tiny_llama), "--plan", json.dumps(PLAN), "--rank", "4",
                  "-o", str(out / "sharp")])
    convert_main(["--model", str(tiny_llama), "--plan", "none", "-o", str(out / "plain")])
    quantize_model_dir(out / "sharp", out / "sharp_q4", verbose=False)
    quantize_model_dir(out / "plain", out / "plain_q4", verbose=False)
    return out


@pytest.fixture(scope="module")
def bundle(models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "q4"
    export.export_bundle(models_dir / "sharp_q4", out, models_dir / "plain_q4", verbose=False)
    return out


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / export.MANIFEST).read_text())


def test_manifest_lists_every_file_with_size_and_sha256(bundle, models_dir):
    manifest = manifest_of(bundle)
    assert manifest["format"] == "sharp-bundle" and manifest["version"] == 1
    assert manifest["model_dir"] == "sharp" and manifest["original_dir"] == "original"
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    listed = [f["path"] for f in manifest["files"]]
    assert listed == [p for p in on_disk if p != export.MANIFEST]
    for entry in manifest["files"]:
        data = (bundle / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (bundle / "sharp").iterdir()) == sorted(
        p.name for p in (models_dir / "sharp_q4").iterdir())
    for name in ("sharp_model.py", "config.json", "tokenizer.json", "sharp_recovery.json"):
        source = models_dir / "sharp_q4" / name
        assert (bundle / "sharp" / name).read_bytes() == source.read_bytes()


def test_manifest_accounting_is_the_stored_tensors(bundle, models_dir):
    manifest = manifest_of(bundle)
    assert manifest["plan"] == {str(k): v for k, v in PLAN.items()}
    accounting = manifest["accounting"]
    sharp = bundle / "sharp"
    # real bytes of the 4-bit tensors, not params x 2 bytes
    assert accounting["tensor_bytes"] == models.tensor_bytes(sharp)
    assert accounting["tensor_bytes"] < accounting["total_params"]  # under 8 bits a parameter
    # the recovery record's counts (used) agree with counting the headers
    assert accounting["source"] == "sharp_recovery.json"
    config = json.loads((sharp / "config.json").read_text())
    counted = export.header_accounting(sharp, config)
    assert {k: accounting[k] for k in counted} == counted
    per_layer_mlp = 3 * 64 * 128
    assert counted["mlp_params_original"] == 6 * per_layer_mlp
    assert counted["mlp_params_stored"] == 3 * per_layer_mlp
    assert counted["recovery_params"] == 3 * 3 * 4 * (64 + 128)
    assert manifest["quantization"] == config["quantization"]
    plain = models_dir / "plain_q4"
    assert manifest["original"] == {
        "tensor_bytes": models.tensor_bytes(plain),
        "total_params": export.header_accounting(plain, json.loads(
            (plain / "config.json").read_text()))["total_params"]}
    assert manifest["original"]["total_params"] == counted["total_params"] + 3 * per_layer_mlp - \
        counted["recovery_params"]


def test_unquantized_export_without_record_counts_headers(models_dir, tmp_path):
    sharp = tmp_path / "sharp"
    shutil.copytree(models_dir / "sharp", sharp)
    (sharp / "sharp_recovery.json").unlink()
    manifest = export.export_bundle(sharp, tmp_path / "b", verbose=False)
    accounting = manifest["accounting"]
    assert accounting["source"] == "safetensors headers"
    record = json.loads((models_dir / "sharp" / "sharp_recovery.json").read_text())["accounting"]
    for key in export.ACCOUNTING_KEYS:
        assert accounting[key] == pytest.approx(record[key], abs=1e-3), key
    assert accounting["tensor_bytes"] == record["tensor_bytes"]  # fp16: params x 2 holds here
    assert manifest["original_dir"] is None and manifest["original"] is None
    assert manifest["quantization"] is None


def test_export_quantizes_both_models_the_same_way(models_dir, tmp_path):
    manifest = export.export_bundle(models_dir / "sharp", tmp_path / "b", models_dir / "plain",
                                    quantize=8, q_group_size=32, verbose=False)
    for name in ("sharp", "original"):
        config = json.loads((tmp_path / "b" / name / "config.json").read_text())
        assert config["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert manifest["accounting"]["tensor_bytes"] == models.tensor_bytes(tmp_path / "b" / "sharp")


EVALUATE_JSON = [  # the keys `python -m sharp_mlx.evaluate --json` writes (a subset)
    {"model": "PLAIN", "name": "plain", "model_type": "llama", "num_shared_layers": 0,
     "wiki_perplexity": 20.5, "chitchat_perplexity": 30.0, "prompt_tok_per_s": 900.0,
     "decode_tok_per_s": 80.0, "peak_memory_gb": 0.5},
    {"model": "SHARP", "name": "sharp", "model_type": "sharp", "num_shared_layers": 3,
     "chitchat_perplexity": 33.0, "decode_tok_per_s": 85.0},
]


def test_python_metrics_from_evaluate_json(models_dir, tmp_path):
    results = json.loads(json.dumps(EVALUATE_JSON).replace(
        "PLAIN", str(models_dir / "plain")).replace("SHARP", str(models_dir / "sharp")))
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps(results))
    manifest = export.export_bundle(models_dir / "sharp", tmp_path / "b", models_dir / "plain",
                                    metrics=metrics_file, verbose=False)
    metrics = manifest["python_metrics"]
    assert metrics["original"]["perplexity"] == 20.5  # wiki preferred
    assert metrics["original"]["decode_tok_s"] == 80.0
    assert metrics["original"]["prompt_tok_s"] == 900.0
    assert metrics["original"]["peak_memory_gb"] == 0.5
    assert metrics["sharp"]["perplexity"] == 33.0 and metrics["sharp"]["perplexity_data"] == \
        "chitchat"
    assert metrics["sharp"]["decode_tok_s"] == 85.0
    assert "prompt_tok_s" not in metrics["sharp"] and "peak_memory_gb" not in metrics["sharp"]
    # no path match (e.g. metrics of the unquantized models, bundle of quantized ones): by kind
    by_kind = export.python_metrics(EVALUATE_JSON, tmp_path / "x", tmp_path / "y")
    assert by_kind["sharp"]["decode_tok_s"] == 85.0 and by_kind["original"]["perplexity"] == 20.5


@pytest.mark.parametrize("case", ["exists", "missing_model", "sharp_original", "missing_metrics",
                                  "bundle_contains_model"])
def test_bad_input_is_one_clear_error_and_writes_nothing(models_dir, tmp_path, capsys, case):
    out = tmp_path / "bundle"
    argv = ["--model", str(models_dir / "sharp"), "-o", str(out)]
    message = {"exists": "already exists; pass --force", "missing_model": "does not exist",
               "sharp_original": "is a SHARP model", "missing_metrics": "metrics file",
               "bundle_contains_model": "must not contain or be the model"}[case]
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "missing_model":
        argv[1] = str(tmp_path / "nope")
    elif case == "sharp_original":
        argv += ["--original", str(models_dir / "sharp")]
    elif case == "missing_metrics":
        argv += ["--metrics", str(tmp_path / "nope.json")]
    elif case == "bundle_contains_model":  # --force would delete the model with the old bundle
        shutil.copytree(models_dir / "sharp", out / "m")
        argv[1] = str(out / "m")
        argv.append("--force")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    if case == "bundle_contains_model":
        assert (out / "m" / "model.safetensors").is_file()


# ---------------------------------------------------------------- Swift verification


def sharp_report() -> Path | None:
    """The sharp-report binary, built if Swift is installed (incremental: fast once built)."""
    swift = shutil.which("swift") or ("/opt/swift/usr/bin/swift"
                                      if Path("/opt/swift/usr/bin/swift").exists() else None)
    if swift is None:
        return None
    build = subprocess.run([swift, "build", "--product", "sharp-report"], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    binary = subprocess.run([swift, "build", "--show-bin-path"], cwd=REPO, capture_output=True,
                            text=True, timeout=120).stdout.strip()
    return Path(binary) / "sharp-report"


def test_swift_verifies_the_bundle_and_names_a_tampered_file(bundle, tmp_path):
    report = sharp_report()
    if report is None:
        pytest.skip("swift is not installed")
    good = subprocess.run([str(report), str(bundle)], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Bundle verification: OK" in good.stdout
    checks = [line for line in good.stdout.splitlines() if " manifest " in line]
    assert len(checks) == 7 and all(line.endswith(" ok") for line in checks), checks

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = tampered / "sharp" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one tensor byte; the size and the header stay valid
    weights.write_bytes(bytes(data))
    bad = subprocess.run([str(report), str(tampered)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "sha256 mismatch: sharp/model.safetensors" in bad.stderr
    assert "Bundle verification: FAILED" in bad.stdout


# ---------------------------------------------------------------- parity fixture


def load_fixture_tool():
    spec = importlib.util.spec_from_file_location(
        "make_parity_fixture", REPO / "tools" / "make_parity_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_parity_fixture_is_current(tmp_path):
    tool = load_fixture_tool()
    committed = tool.DEFAULT_OUT
    assert sorted(p.name for p in committed.iterdir()) == sorted(tool.FILES), \
        "regenerate with: python tools/make_parity_fixture.py"
    fresh = tmp_path / "tiny_sharp"
    tool.make_fixture(fresh)
    stale = "the committed parity fixture is stale; regenerate: python tools/make_parity_fixture.py"
    assert json.loads((fresh / "config.json").read_text()) == json.loads(
        (committed / "config.json").read_text()), stale
    new, old = (mx.load(str(d / "model.safetensors")) for d in (fresh, committed))
    assert sorted(new) == sorted(old), stale
    for name in new:
        assert new[name].dtype == old[name].dtype == mx.float32, name
        assert mx.array_equal(new[name], old[name]).item(), f"{stale} ({name})"
    new_parity, old_parity = (json.loads((d / "parity.json").read_text())
                              for d in (fresh, committed))
    assert new_parity["tokens"] == old_parity["tokens"], stale
    for a, b in zip(new_parity["logits"], old_parity["logits"], strict=True):
        assert mx.abs(mx.array(a) - mx.array(b)).max().item() <= 1e-5, stale


def test_parity_fixture_exercises_sharing_and_recovery():
    tool = load_fixture_tool()
    directory = tool.DEFAULT_OUT
    config = json.loads((directory / "config.json").read_text())
    weights = mx.load(str(directory / "model.safetensors"))
    plan = {int(t): r for t, r in config["sharp"]["plan"].items()}
    assert plan and config["sharp"]["recovery"]["kind"] == "lora"
    for target in plan:
        assert f"model.layers.{target}.mlp.up_proj.weight" not in weights
        assert mx.abs(weights[f"model.layers.{target}.mlp.up_proj.lora_b"]).min().item() > 0
    size = sum((directory / n).stat().st_size for n in tool.FILES)
    assert size < 1_000_000
    # the recovery matters: dropping it changes mlx-lm's logits well above the 1e-3 tolerance
    model, _ = tool.build_model()
    tokens = json.loads((directory / "parity.json").read_text())["tokens"][0]
    with_recovery = model(mx.array([tokens]))
    for layer in plan:
        for name in ("gate_proj", "up_proj", "down_proj"):
            recovery = model.layers[layer].mlp[name]
            recovery.lora_b = mx.zeros_like(recovery.lora_b)
    assert mx.abs(model(mx.array([tokens])) - with_recovery).max().item() > 0.05
