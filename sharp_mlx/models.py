"""Find, load and save models: mlx-lm/HF directories or repos, llama GGUF files, the default.

`resolve_model(None)` is the pinned SmolLM2-135M-Instruct GGUF, converted once into an mlx-lm
directory in the user cache. Saving writes a whole model directory atomically (temp dir, rename).
"""

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.utils import dequantize_model, load_model, load_tokenizer, save_config, save_model

from . import assets, gguf

# transformers warns that model type "sharp" is unknown whenever a SHARP tokenizer is loaded.
logging.getLogger("transformers.configuration_utils").setLevel(logging.ERROR)

DEFAULT_MODEL = "smollm2"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


class ModelError(ValueError):
    """A model path, repo or file cannot be used."""


class OutputExistsError(ModelError):
    pass


def resolve_model(spec: str | None = None) -> Path:
    """The local mlx-lm directory for a model spec (None -> the pinned default model)."""
    if spec is None or spec == DEFAULT_MODEL:
        return gguf_to_mlx(assets.asset_path(DEFAULT_MODEL))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        return gguf_to_mlx(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json; it is not an mlx-lm model directory")
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(f"model {spec!r} is neither a model directory, a .gguf file nor a repo id")
    return _download_repo(spec)


def _download_repo(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt",
                "*.jinja"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # hub errors are many and varied; one clear message suffices
        raise ModelError(f"could not fetch {repo!r} from the Hugging Face hub: {e}") from None


def gguf_to_mlx(path: Path) -> Path:
    """Convert a llama GGUF file once into a cached mlx-lm directory (float16) and return it."""
    digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
    out = assets.cache_dir() / "models" / f"{path.stem}-{digest}"
    if (out / "config.json").is_file():
        return out
    print(f"sharp_mlx: converting {path.name} to an mlx-lm directory in {out}", file=sys.stderr)
    weights, config, metadata = gguf.load_gguf_weights(path)
    with atomic_directory(out, force=True) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        save_config({**config, "torch_dtype": "float16"}, tmp / "config.json")
        gguf.build_tokenizer(metadata, tmp)
    return out


def load(spec: str | None = None, trust_remote_code: bool = False, dequantize: bool = False):
    """Load (model, tokenizer, config, path) lazily with mlx-lm; optionally dequantized.

    A SHARP directory loads too; its model file is trusted without asking when it is byte for
    byte this package's own `sharp_model.py`.
    """
    path = resolve_model(spec)
    check_safetensors(path)
    config = json.loads((path / "config.json").read_text())
    trust = trust_remote_code or is_own_model_file(path, config)
    model, config = load_model(path, lazy=True, trust_remote_code=trust)
    if dequantize and "quantization" in config:
        model = dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in ("quantization",
                                                               "quantization_config")}
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer, config, path


def load_base(spec: str | None = None, dtype: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer, config, path) of an unquantized model, dequantizing if needed."""
    model, tokenizer, config, path = load(spec, trust_remote_code, dequantize=True)
    if dtype is not None:
        cast(model, DTYPES[dtype])
    mx.eval(model.parameters())
    return model, tokenizer, config, path


def is_own_model_file(path: Path, config: dict) -> bool:
    """True when the directory's model file is an exact copy of this package's architecture."""
    own = Path(__file__).with_name("sharp_model.py")
    theirs = path / str(config.get("model_file", ""))
    return config.get("model_file") == own.name and theirs.is_file() and (
        theirs.read_bytes() == own.read_bytes()
    )


def check_safetensors(path: Path) -> None:
    """Raise ModelError naming the file when a safetensors file is missing or truncated."""
    files = sorted(glob.glob(str(path / "model*.safetensors")))
    if not files:
        raise ModelError(f"{path} has no model*.safetensors weight files")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            if not (path / name).is_file():
                raise ModelError(f"{path / name} is missing (listed in {index.name})")
    for file in files:
        _check_safetensors_file(Path(file))


def _check_safetensors_file(file: Path) -> None:
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{file} is truncated ({size} bytes)")
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            raise ModelError(f"{file} is truncated: header needs {header_len} bytes")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelError(f"{file} has a corrupt header") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        raise ModelError(f"{file} is truncated: {size} bytes, tensors need {needed}")


def cast(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast a model's floating point parameters to dtype in place."""
    model.update(tree_map(
        lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
        model.parameters(),
    ))


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_dir(
    out_dir: Path, model: nn.Module, config: dict, source_dir: Path, extra_files=(),
) -> None:
    """Write weights, config, tokenizer files of `source_dir` and `extra_files` into out_dir."""
    save_model(out_dir, model)
    save_config(dict(config), out_dir / "config.json")
    copy_tokenizer(source_dir, out_dir)
    for file in extra_files:
        shutil.copy(file, out_dir)


def copy_tokenizer(source_dir: Path, out_dir: Path) -> None:
    """Copy tokenizer files; make sure tokenizer_config.json names its tokenizer class."""
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy(source_dir / name, out_dir / name)
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "tokenizer_class" not in config and (out_dir / "tokenizer.json").is_file():
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2))


def use_float32_on_cpu(model: nn.Module) -> None:
    """On the CPU, compute in float32: MLX's CPU half-precision matmuls are ~20x slower than
    float32 through BLAS. On a GPU the stored dtype is kept. Quantized weights stay quantized."""
    if mx.default_device() == mx.cpu:
        cast(model, mx.float32)


def tensor_bytes(model_dir: Path) -> int:
    """Total bytes of the tensors stored in a model directory's safetensors files."""
    return sum(v.nbytes for f in glob.glob(str(Path(model_dir) / "model*.safetensors"))
               for v in mx.load(f).values())


def parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))
