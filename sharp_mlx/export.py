"""Export a SHARP model as a bundle for the iPhone app and `sharp-report`: `tools/export_ios.py`.

    BUNDLE/
      sharp_manifest.json   what ios_bridge/Sources/SharpBridge/BundleManifest.swift decodes
      sharp/                the SHARP model directory (copied, or quantized with --quantize)
      original/             optional: the unshared model it came from

The manifest lists every other file of the bundle with its size and sha256, the plan, the
accounting of the SHARP model (parameter counts from its `sharp_recovery.json` when present,
else counted from the safetensors headers; `tensor_bytes` always summed from the headers, which
is what the Swift verifier checks), its quantization block, the original's tensor bytes and
parameters, and optionally the metrics `python -m sharp_mlx.evaluate --json` measured.
"""

import argparse
import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

from . import __version__, models
from .cli import run_cli

MANIFEST = "sharp_manifest.json"
FORMAT = "sharp-bundle"
VERSION = 1
MODEL_DIR = "sharp"
ORIGINAL_DIR = "original"
MLP_MATRICES = ("gate_proj", "up_proj", "down_proj")
ACCOUNTING_KEYS = ("num_layers", "mlp_params_original", "mlp_params_stored", "recovery_params",
                   "net_mlp_saving_percent", "total_params")
METRIC_KEYS = {  # manifest key -> evaluate.py result key(s), first present wins
    "decode_tok_s": ("decode_tok_per_s", "decode_tok_s"),
    "prompt_tok_s": ("prompt_tok_per_s", "prompt_tok_s"),
    "peak_memory_gb": ("peak_memory_gb",),
}


class ExportError(models.ModelError):
    pass


# ---------------------------------------------------------------- safetensors headers


def read_header(file: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets)."""
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ExportError(f"{file} is not a safetensors file (truncated)")
        (length,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ExportError(f"{file} has a corrupt safetensors header") from None
    header.pop("__metadata__", None)
    return header


def header_tensors(model_dir: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "nbytes"} over every model*.safetensors file of a directory."""
    tensors = {}
    for file in sorted(Path(model_dir).glob("model*.safetensors")):
        for name, info in read_header(file).items():
            begin, end = info["data_offsets"]
            tensors[name] = {"dtype": info["dtype"], "shape": info["shape"], "nbytes": end - begin}
    return tensors


def header_tensor_bytes(model_dir: Path) -> int:
    """Total tensor bytes of a model directory, from its safetensors headers."""
    return sum(t["nbytes"] for t in header_tensors(model_dir).values())


def _elements(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parameter_counts(model_dir: Path, config: dict) -> dict[str, int]:
    """Parameters per tensor, counted as mlx-lm does: a quantized (U32) weight counts its
    logical elements (packed * 32 / bits), quantization scales and biases count 0."""
    tensors = header_tensors(model_dir)
    quantization = config.get("quantization") or {}
    counts = {}
    for name, info in tensors.items():
        module, _, leaf = name.rpartition(".")
        quantized = tensors.get(f"{module}.weight", {}).get("dtype") == "U32" and (
            f"{module}.scales" in tensors)
        if quantized and leaf in ("scales", "biases"):
            counts[name] = 0
        elif quantized and leaf == "weight":
            override = quantization.get(module)
            bits = (override if isinstance(override, dict) else quantization).get("bits")
            if not bits:
                raise ExportError(f"{name} is quantized but config.json gives no bits for it")
            counts[name] = _elements(info["shape"]) * 32 // bits
        else:
            counts[name] = _elements(info["shape"])
    return counts


def header_accounting(model_dir: Path, config: dict) -> dict:
    """The manifest accounting of a model directory, counted from its safetensors headers
    (the same rules as SharpBridge's StorageReport)."""
    counts = parameter_counts(model_dir, config)
    plan = {int(t): int(r) for t, r in (config.get("sharp") or {}).get("plan", {}).items()}
    num_layers = int(config["num_hidden_layers"])

    def module_params(module: str) -> int:
        return sum(counts.get(f"{module}.{leaf}", 0) for leaf in ("weight", "bias"))

    original = 0
    for layer in range(num_layers):
        for matrix in MLP_MATRICES:
            own = module_params(f"model.layers.{layer}.mlp.{matrix}")
            original += own or module_params(f"model.layers.{plan.get(layer, layer)}.mlp.{matrix}")
    stored = recovery = 0
    for name, n in counts.items():
        if ".mlp." not in name or "embed_tokens" in name or ".self_attn." in name:
            continue
        parts = name.split(".mlp.", 1)[1].split(".")
        if len(parts) == 2 and parts[0] in MLP_MATRICES and parts[1] in (
                "weight", "scales", "biases", "bias"):
            stored += n
        else:
            recovery += n
    saving = 100 * (original - stored - recovery) / original if original else 0.0
    return {"num_layers": num_layers, "mlp_params_original": original,
            "mlp_params_stored": stored, "recovery_params": recovery,
            "net_mlp_saving_percent": round(saving, 3), "total_params": sum(counts.values())}


def model_accounting(model_dir: Path, config: dict) -> dict:
    """Accounting for the manifest: parameter counts from sharp_recovery.json when present (else
    from the headers), tensor_bytes always from the headers."""
    counted = header_accounting(model_dir, config)
    record_file = model_dir / "sharp_recovery.json"
    record = None
    if record_file.is_file():
        record = json.loads(record_file.read_text()).get("accounting")
    if record and all(k in record for k in ACCOUNTING_KEYS):
        accounting = {k: record[k] for k in ACCOUNTING_KEYS}
        accounting["source"] = "sharp_recovery.json"
        differing = [k for k in ACCOUNTING_KEYS if k != "net_mlp_saving_percent"
                     and accounting[k] != counted[k]]
        if differing:
            print(f"warning: {record_file} accounting differs from the safetensors headers in "
                  f"{', '.join(differing)}", file=sys.stderr)
    else:
        accounting = {**counted, "source": "safetensors headers"}
    accounting["tensor_bytes"] = header_tensor_bytes(model_dir)
    return accounting


# ---------------------------------------------------------------- metrics


def python_metrics(results, model_dir: Path, original_dir: Path | None) -> dict:
    """Map `python -m sharp_mlx.evaluate --json` output (a list of per-model results) to
    {"sharp": {...}, "original": {...}} with perplexity, decode_tok_s, prompt_tok_s,
    peak_memory_gb; missing figures are left out. A result is matched to a model by its path,
    else by whether it is a SHARP model (model_type "sharp")."""
    if isinstance(results, dict) and ({"sharp", "original"} & set(results)):
        return {k: v for k, v in results.items() if k in ("sharp", "original") and v}
    if isinstance(results, dict):
        results = [results]
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ExportError("the metrics file is not the JSON `python -m sharp_mlx.evaluate "
                          "--json` writes (a list of result objects)")

    def by_path(path: Path | None):
        if path is None:
            return None
        found = [r for r in results if r.get("model") and
                 Path(r["model"]).resolve() == path.resolve()]
        return found[0] if found else None

    def by_kind(sharp: bool):
        found = [r for r in results if (r.get("model_type") == "sharp"
                                        or bool(r.get("num_shared_layers"))) == sharp]
        return found[0] if len(found) == 1 else None

    out = {}
    for role, path, sharp in (("sharp", model_dir, True), ("original", original_dir, False)):
        result = by_path(path) or by_kind(sharp)
        if result is not None and (figures := _metrics(result)):
            out[role] = figures
    if not out:
        print("warning: no result in the metrics file could be matched to the models",
              file=sys.stderr)
    return out


def _metrics(result: dict) -> dict:
    figures = {}
    ppl_keys = [k for k in result if k.endswith("_perplexity")]
    if "perplexity" in result:
        figures["perplexity"] = result["perplexity"]
    elif ppl_keys:  # the wiki figure when there, else the first data set evaluated
        key = "wiki_perplexity" if "wiki_perplexity" in ppl_keys else ppl_keys[0]
        figures["perplexity"] = result[key]
        figures["perplexity_data"] = key.removesuffix("_perplexity")
    for key, sources in METRIC_KEYS.items():
        for source in sources:
            if isinstance(result.get(source), (int, float)):
                figures[key] = result[source]
                break
    if "model" in result:
        figures["model"] = result["model"]
    return figures if set(figures) - {"model", "perplexity_data"} else {}


# ---------------------------------------------------------------- the bundle


def sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(bundle: Path) -> list[dict]:
    """{"path", "bytes", "sha256"} of every regular file under `bundle` but the manifest."""
    entries = []
    for file in sorted(p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()):
        path = file.relative_to(bundle).as_posix()
        if path != MANIFEST:
            entries.append({"path": path, "bytes": file.stat().st_size,
                            "sha256": sha256_file(file)})
    return entries


def _check_model_dir(path: Path, what: str) -> dict:
    if not path.is_dir():
        raise ExportError(f"{what} {path} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise ExportError(f"{what} {path} has no config.json; it is not an mlx-lm model directory")
    models.check_safetensors(path)
    return json.loads((path / "config.json").read_text())


def _copy_model_dir(source: Path, dest: Path) -> None:
    """Copy the regular files directly inside `source` (symlinks followed, subfolders skipped)."""
    dest.mkdir()
    for file in sorted(source.iterdir()):
        if file.is_file() and not file.name.startswith("."):
            shutil.copy(file, dest / file.name)


def export_bundle(
    model_dir: Path | str,
    out: Path | str,
    original_dir: Path | str | None = None,
    metrics: Path | str | None = None,
    force: bool = False,
    quantize: int | None = None,
    q_group_size: int = 64,
    mixed: str | None = None,
    verbose: bool = True,
) -> dict:
    """Write a bundle directory atomically and return its manifest.

    `quantize` (bits) or `mixed` (an mlx-lm recipe) quantize the SHARP model and the original the
    same way on the way in (the inputs must then be unquantized). Every input is checked before
    anything is written.
    """
    model_dir, out = Path(model_dir), Path(out)
    original_dir = Path(original_dir) if original_dir is not None else None
    if out.exists() and not force:
        raise models.OutputExistsError(f"{out} already exists; pass --force to replace it")
    config = _check_model_dir(model_dir, "model")
    if config.get("model_type") != "sharp":
        print(f"warning: {model_dir} is not a SHARP model (model_type "
              f"{config.get('model_type')!r}); the bundle has an empty plan", file=sys.stderr)
    if original_dir is not None:
        original_config = _check_model_dir(original_dir, "original model")
        if original_config.get("model_type") == "sharp":
            raise ExportError(f"--original {original_dir} is a SHARP model; pass the unshared "
                              "model it came from")
    metrics_data = None
    if metrics is not None:
        try:
            metrics_data = json.loads(Path(metrics).read_text())
        except FileNotFoundError:
            raise ExportError(f"metrics file {metrics} does not exist") from None
        except json.JSONDecodeError as e:
            raise ExportError(f"metrics file {metrics} is not JSON: {e}") from None
    for path in (model_dir, original_dir):
        if path is not None and out.resolve() in (path.resolve(), *path.resolve().parents):
            raise ExportError(f"the bundle {out} must not contain or be the model {path}")

    with models.atomic_directory(out, force=force) as tmp:
        sources = [(model_dir, MODEL_DIR)] + ([(original_dir, ORIGINAL_DIR)] if original_dir
                                              else [])
        for source, name in sources:
            if quantize is not None or mixed is not None:
                from .quantize import quantize_model_dir

                quantize_model_dir(source, tmp / name, quantize or 4, q_group_size, mixed,
                                   verbose=verbose)
            else:
                _copy_model_dir(source, tmp / name)
        sharp = tmp / MODEL_DIR
        sharp_config = json.loads((sharp / "config.json").read_text())
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model_dir": MODEL_DIR,
            "original_dir": ORIGINAL_DIR if original_dir else None,
            "files": file_entries(tmp),
            "plan": {str(k): int(v) for k, v in sorted(
                ((sharp_config.get("sharp") or {}).get("plan") or {}).items(),
                key=lambda kv: int(kv[0]))},
            "accounting": model_accounting(sharp, sharp_config),
            "quantization": sharp_config.get("quantization"),
            "original": None,
            "python_metrics": None,
            "generator": f"sharp-mlx {__version__}",
        }
        if original_dir:
            original = tmp / ORIGINAL_DIR
            counts = header_accounting(original, json.loads((original / "config.json")
                                                            .read_text()))
            manifest["original"] = {"tensor_bytes": header_tensor_bytes(original),
                                    "total_params": counts["total_params"]}
        if metrics_data is not None:
            manifest["python_metrics"] = python_metrics(metrics_data, model_dir, original_dir)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if verbose:
        print(summary(out, manifest))
    return manifest


def summary(bundle: Path, manifest: dict) -> str:
    accounting = manifest["accounting"]
    total = sum(f["bytes"] for f in manifest["files"])
    lines = [f"wrote {bundle}: {len(manifest['files'])} files, {total:,} bytes",
             f"  SHARP tensor bytes {accounting['tensor_bytes']:,}, params "
             f"{accounting['total_params']:,}, net MLP saving "
             f"{accounting['net_mlp_saving_percent']:.1f}%"]
    if original := manifest.get("original"):
        ratio = accounting["tensor_bytes"] / original["tensor_bytes"]
        lines.append(f"  original tensor bytes {original['tensor_bytes']:,}, params "
                     f"{original['total_params']:,}; SHARP/original bytes {ratio:.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/export_ios.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="the SHARP model directory")
    parser.add_argument("--original", type=Path, default=None,
                        help="the unshared model directory to ship alongside")
    parser.add_argument("-o", "--output", dest="output", required=True, type=Path,
                        help="bundle directory to write")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="JSON written by `python -m sharp_mlx.evaluate --json`")
    parser.add_argument("--quantize", type=int, default=None, choices=(2, 3, 4, 5, 6, 8),
                        metavar="BITS", help="quantize both models to BITS on the way in")
    parser.add_argument("--q-group-size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--mixed", default=None,
                        help="quantize both models with an mlx-lm mixed recipe (mixed_3_6, ...)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda a: export_bundle(a.model, a.output, a.original, a.metrics, a.force,
                                    a.quantize, a.q_group_size, a.mixed), args)


if __name__ == "__main__":
    main()
