"""Quantize a SHARP (or plain) mlx-lm model directory: `python tools/quantize.py`.

Affine quantization with mlx-lm's own functions (`mlx_lm.utils.quantize_model`, and
`mlx_lm.convert.mixed_quant_predicate_builder` for the `mixed_*` recipes), so the result is what
`mlx_lm.convert -q` would write and stock `mlx_lm.load(path, trust_remote_code=True)` runs it.

- Every `Linear` and `Embedding` whose input size divides the group size is quantized: attention,
  embeddings (and `lm_head`) and the stored MLP weights. A replaced layer has no MLP weight of its
  own, so each shared weight is quantized exactly once and every layer sharing it uses it
  quantized.
- Recovery tensors (`lora_a`, `lora_b`, `in_scale`, `out_scale`) are plain arrays the SHARP
  architecture multiplies directly, not modules, so they stay unquantized in the model's dtype
  (float16 for a model written by `sharp_mlx.convert`). Quantizing them would need a different
  architecture file (LoRA factors as `Linear` modules); stock mlx-lm loading could not
  dequantize plain quantized arrays, so there is no option for it.
- The model's float parameters are first cast to its `torch_dtype` (as `mlx_lm.convert` does), so
  quantization scales/biases and unquantized tensors have that dtype.

The output directory is written atomically and carries the tokenizer files, `sharp_model.py`
and `sharp_recovery.json` (with a `quantization` entry added) of the input.
"""

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx

from . import models
from .cli import run_cli

MIXED_RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
BITS = (2, 3, 4, 5, 6, 8)
RECORD_FILE = "sharp_recovery.json"


def _copy_side_files(model_dir: Path, out: Path, config: dict) -> None:
    """Tokenizer files, the model file and any other .py file, as mlx-lm's save does."""
    models.copy_tokenizer(model_dir, out)
    names = {p.name for p in model_dir.glob("*.py")}
    if config.get("model_file"):
        names.add(config["model_file"])
    for name in sorted(names):
        shutil.copy(model_dir / name, out / name)


def quantize_model_dir(
    model_dir: Path | str,
    out: Path | str,
    q_bits: int = 4,
    q_group_size: int = 64,
    mixed: str | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    verbose: bool = True,
) -> dict:
    """Quantize an unquantized mlx-lm model directory into `out`; returns a summary dict.

    `mixed` is one of MIXED_RECIPES (mlx-lm's per-layer 2/3/4 + 6-bit recipes; `q_bits` is then
    ignored). Raises models.ModelError / OutputExistsError / ValueError with one clear message,
    before anything is written.
    """
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model_dir, out = Path(model_dir), Path(out)
    if mixed is not None and mixed not in MIXED_RECIPES:
        raise ValueError(f"unknown mixed recipe {mixed!r}; use one of {', '.join(MIXED_RECIPES)}")
    if mixed is None and q_bits not in BITS:
        raise ValueError(f"--q-bits must be one of {BITS}, got {q_bits}")
    if q_group_size not in (32, 64, 128):
        raise ValueError(f"--q-group-size must be 32, 64 or 128, got {q_group_size}")
    if out.exists() and not force:
        raise models.OutputExistsError(f"{out} already exists; pass --force to replace it")
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise models.ModelError(f"{model_dir} is not a model directory (no config.json)")
    if out.resolve() == model_dir.resolve():
        raise ValueError("the output directory must differ from the model directory")
    models.check_safetensors(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if "quantization" in config:
        raise models.ModelError(
            f"{model_dir} is already quantized ({config['quantization'].get('bits')}-bit); "
            "quantize the unquantized model instead")
    trust = trust_remote_code or models.is_own_model_file(model_dir, config)
    if config.get("model_file") and not trust:
        raise models.ModelError(
            f"{model_dir} has its own model file {config['model_file']!r} that is not this "
            "package's sharp_model.py; pass --trust-remote-code to run it")

    bytes_before = models.tensor_bytes(model_dir)
    model, config = load_model(model_dir, lazy=True, trust_remote_code=trust)
    dtype = config.get("torch_dtype")
    if dtype in models.DTYPES:
        models.cast(model, models.DTYPES[dtype])
    predicate = mixed_quant_predicate_builder(mixed, model, q_group_size) if mixed else None
    model, config = quantize_model(model, config, q_group_size, None if mixed else q_bits,
                                   quant_predicate=predicate)
    mx.eval(model.parameters())

    with models.atomic_directory(out, force=force) as tmp:
        save_model(tmp, model, donate_model=True)
        save_config(dict(config), tmp / "config.json")
        _copy_side_files(model_dir, tmp, config)
        bytes_after = models.tensor_bytes(tmp)
        summary = {
            "source": str(model_dir),
            "bits": config["quantization"]["bits"],
            "group_size": q_group_size,
            "mixed": mixed,
            "tensor_bytes_before": bytes_before,
            "tensor_bytes_after": bytes_after,
        }
        record_file = model_dir / RECORD_FILE
        if record_file.is_file():
            record = json.loads(record_file.read_text())
            record["quantization"] = summary
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
    if verbose:
        what = mixed or f"{summary['bits']}-bit"
        print(f"quantized {model_dir} -> {out} ({what}, group {q_group_size}): tensor bytes "
              f"{bytes_before:,} -> {bytes_after:,} ({bytes_after / bytes_before:.3f}x)")
    return {**summary, "output": str(out)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/quantize.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path,
                        help="unquantized mlx-lm model directory (SHARP or plain)")
    parser.add_argument("-o", "--output", "--mlx-path", dest="output", required=True, type=Path)
    parser.add_argument("-q", "--quantize", action="store_true",
                        help="accepted for mlx-lm compatibility (this tool always quantizes)")
    parser.add_argument("--q-bits", type=int, default=4, choices=BITS)
    parser.add_argument("--q-group-size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--mixed", "--quant-predicate", dest="mixed", choices=MIXED_RECIPES,
                        help="mlx-lm mixed-precision recipe (overrides --q-bits)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model file other than this package's sharp_model.py")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda a: quantize_model_dir(a.model, a.output, a.q_bits, a.q_group_size, a.mixed,
                                         a.force, a.trust_remote_code), args)


if __name__ == "__main__":
    main()
