"""Evaluate models: `python -m sharp_mlx.evaluate --model A [--model B ...] --data wiki,chitchat`.

For each model (base, SHARP, pruned, quantized or not; any mlx-lm directory, repo or .gguf):

- perplexity on fixed windows of a split (`--seq-len`, `--max-tokens`): mean over tokens and the
  standard error over windows (delta method);
- parameters by kind: embedding, attention, MLP stored, recovery, norms (quantized weights count
  as their logical element count, not packed words; quantization scales/biases are not counted);
- bytes on disk of the weight files and the load time (load, cast, evaluate every weight);
- speed as `mlx_lm.benchmark` measures it: random prompt, EOS disabled, one warm-up run, then
  `--repeats` runs of `mlx_lm.generate.stream_generate`, median of prompt tok/s, time to first
  token, decode tok/s (mlx-lm's `generation_tps`) and peak memory (`mx.get_peak_memory()`,
  reset before every run).

A table goes to stdout, the same figures as JSON (`--json FILE`): one object per model, units
in the key names. On the CPU the model computes in float32 unless `--dtype` says otherwise.
"""

import argparse
import glob
import json
import math
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import data, models
from .cli import run_cli

RECOVERY_NAMES = ("lora_a", "lora_b", "in_scale", "out_scale")
PARAM_KINDS = ("embedding", "attention", "mlp_stored", "recovery", "norm", "other")

# Keys of every result object; per data set there are also DATA_KEYS prefixed with its name.
RESULT_KEYS = (
    "model", "name", "model_type", "base_model_type", "num_layers", "num_shared_layers",
    "num_removed_layers",
    "quantization_bits", "dtype", "device", "disk_bytes", "load_time_s",
    *(f"params_{k}" for k in PARAM_KINDS), "params_total", "params_mlp_net",
    "net_mlp_saving_percent", "disk_bits_per_param",
)
DATA_KEYS = ("perplexity", "perplexity_stderr", "tokens", "windows", "eval_time_s")
SPEED_KEYS = (
    "prompt_tokens", "generation_tokens", "repeats", "prompt_tok_per_s", "ttft_s",
    "decode_tok_per_s", "peak_memory_gb",
)

# Speed defaults: mlx_lm.benchmark's on a GPU; small on the CPU, where decoding is slow.
SPEED_DEFAULTS = {"gpu": dict(prompt_tokens=512, generation_tokens=128, repeats=5),
                  "cpu": dict(prompt_tokens=128, generation_tokens=32, repeats=3)}


@dataclass
class Perplexity:
    perplexity: float
    stderr: float  # standard error of the perplexity (delta method over windows)
    tokens: int
    windows: int


def window_losses(model: nn.Module, token_data: data.TokenData, batch_size: int = 8
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token NLL and counted tokens of every window."""
    sums, counts = [], []
    for start in range(0, token_data.num_rows, batch_size):
        tokens = mx.array(token_data.tokens[start: start + batch_size])
        mask = mx.array(token_data.mask[start: start + batch_size])
        logits = model(tokens[:, :-1]).astype(mx.float32)
        nll = nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask
        batch_sums, batch_counts = nll.sum(axis=1), mask.sum(axis=1)
        mx.eval(batch_sums, batch_counts)
        sums.append(np.array(batch_sums))
        counts.append(np.array(batch_counts))
    return np.concatenate(sums), np.concatenate(counts)


def perplexity(model: nn.Module, token_data: data.TokenData, batch_size: int = 8) -> Perplexity:
    sums, counts = window_losses(model, token_data, batch_size)
    mean_nll = float(sums.sum() / counts.sum())
    per_window = sums / np.maximum(counts, 1)
    stderr_nll = float(per_window.std(ddof=1)) / math.sqrt(len(sums)) if len(sums) > 1 else 0.0
    ppl = math.exp(mean_nll)
    return Perplexity(ppl, ppl * stderr_nll, int(counts.sum()), len(sums))


def load_eval_data(name: str, tokenizer, split: str, seq_len: int, max_tokens: int | None
                   ) -> data.TokenData:
    return data.tokenize(data.load_records(name, split), tokenizer, seq_len, max_tokens)


def load_model_for_eval(spec: str | None, trust_remote_code: bool = False,
                        dtype: str | None = None):
    """Load (model, tokenizer, config, path) as mlx-lm does: quantized stays quantized.

    dtype None: float32 on the CPU (`models.use_float32_on_cpu`), the stored dtype elsewhere;
    otherwise every floating point parameter is cast to `dtype`.
    """
    model, tokenizer, config, path = models.load(spec, trust_remote_code)
    if dtype is None:
        models.use_float32_on_cpu(model)
    else:
        models.cast(model, models.DTYPES[dtype])
    mx.eval(model.parameters())
    return model, tokenizer, config, path


# ---------------------------------------------------------------- parameters and bytes


def param_kind(key: str) -> str:
    """The kind of a parameter by its flat name (`model.layers.3.mlp.up_proj.lora_a`, ...)."""
    if key.rsplit(".", 1)[-1] in RECOVERY_NAMES:
        return "recovery"
    if "norm" in key:
        return "norm"
    if "embed_tokens" in key or key.startswith("lm_head"):
        return "embedding"
    if ".self_attn." in key or ".attention." in key:
        return "attention"
    if ".mlp." in key:
        return "mlp_stored"
    return "other"


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters by kind (PARAM_KINDS) and in total, each stored weight counted once.

    A quantized weight counts as its logical element count (packed words * 32 / bits); the
    quantization scales and biases are storage overhead and are not counted.
    """
    counts = dict.fromkeys(PARAM_KINDS, 0)
    leaves = tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    for prefix, module in leaves:
        bits = getattr(module, "bits", None)
        for name, value in tree_flatten(module.parameters()):
            if bits is not None and name in ("scales", "biases"):
                continue
            size = value.size * 32 // bits if bits is not None and name == "weight" else value.size
            counts[param_kind(f"{prefix}.{name}")] += size
    counts["total"] = sum(counts.values())
    return counts


def mlp_saving(model: nn.Module, counts: dict[str, int], removed_layers: int = 0) -> float:
    """Fraction of the MLP parameters of the original model no longer stored, net of recovery:
    the original has `len(layers) + removed_layers` layers with MLPs like the model's own
    (0 for a plain model; a pruned model's config records its removed layers)."""
    layers = list(getattr(model, "layers", []))
    owners = [layer for layer in layers  # layers with their own MLP (not a SharedMLP)
              if hasattr(layer, "mlp") and not hasattr(layer.mlp, "project")]
    if not layers or not owners:
        return 0.0
    per_layer = parameter_counts(owners[0].mlp)["total"]
    original = per_layer * (len(layers) + removed_layers)
    return 1 - (counts["mlp_stored"] + counts["recovery"]) / original if original else 0.0


def compute_dtype(model: nn.Module) -> str:
    """Name of the floating point dtype the model's parameters (or quantization scales) have."""
    for _, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            return str(value.dtype).removeprefix("mlx.core.")
    return "unknown"


def disk_bytes(model_dir: Path) -> int:
    """Bytes of a model directory's weight files (model*.safetensors) on disk."""
    files = glob.glob(str(Path(model_dir) / "model*.safetensors"))
    return sum(Path(f).stat().st_size for f in files)


# ---------------------------------------------------------------- speed


def benchmark(model: nn.Module, tokenizer, prompt_tokens: int, generation_tokens: int,
              repeats: int = 3, seed: int = 0, vocab_size: int | None = None) -> dict:
    """Speed as `mlx_lm.benchmark` measures it (batch 1), median over `repeats` after a warm-up.

    TTFT is the time stream_generate takes to the first token: prompt_tokens / prompt_tps.
    """
    from mlx_lm.generate import stream_generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    if prompt_tokens < 1 or generation_tokens < 1 or repeats < 1:
        raise ValueError("prompt tokens, generation tokens and repeats must be >= 1")
    if not isinstance(tokenizer, TokenizerWrapper):
        tokenizer = TokenizerWrapper(tokenizer)
    vocab_size = vocab_size or tokenizer.vocab_size
    mx.random.seed(seed)
    prompt = mx.random.randint(0, vocab_size, (prompt_tokens,)).tolist()

    def run():
        mx.reset_peak_memory()
        responses = stream_generate(model, tokenizer, prompt, max_tokens=generation_tokens)
        return deque(responses, maxlen=1)[0]  # the last response carries the run's figures

    eos = tokenizer._eos_token_ids
    tokenizer._eos_token_ids = set()  # as mlx_lm.benchmark: never stop early
    try:
        run()  # warm-up
        runs = [run() for _ in range(repeats)]
    finally:
        tokenizer._eos_token_ids = eos

    def median(key):
        return statistics.median(getattr(r, key) for r in runs)

    return {
        "prompt_tokens": prompt_tokens,
        "generation_tokens": runs[0].generation_tokens,
        "repeats": repeats,
        "prompt_tok_per_s": median("prompt_tps"),
        "ttft_s": statistics.median(prompt_tokens / r.prompt_tps for r in runs),
        "decode_tok_per_s": median("generation_tps"),
        "peak_memory_gb": median("peak_memory"),
    }


def speed_defaults() -> dict:
    return SPEED_DEFAULTS["cpu" if mx.default_device() == mx.cpu else "gpu"]


# ---------------------------------------------------------------- one model


def measure_model(model: nn.Module, tokenizer, config: dict, data_names=("wiki",),
                  split: str = "test", seq_len: int = 512, max_tokens: int | None = 8192,
                  batch_size: int = 4, speed: bool = True, prompt_tokens: int | None = None,
                  generation_tokens: int | None = None, repeats: int | None = None) -> dict:
    """Parameter counts, perplexities and speed of a loaded model (no path, load or disk keys)."""
    counts = parameter_counts(model)
    sharp = config.get("sharp") or {}
    quantization = config.get("quantization") or {}
    removed = (config.get("sharp_prune") or {}).get("removed_layers", [])
    result = {
        "model_type": config.get("model_type"),
        "base_model_type": sharp.get("base_model_type", config.get("model_type")),
        "num_layers": len(model.layers),
        "num_shared_layers": len(sharp.get("plan", {})),
        "num_removed_layers": len(removed),
        "quantization_bits": quantization.get("bits"),
        "dtype": compute_dtype(model),
        "device": mx.default_device().type.name,
        **{f"params_{k}": v for k, v in counts.items()},
        "params_mlp_net": counts["mlp_stored"] + counts["recovery"],
        "net_mlp_saving_percent": round(100 * mlp_saving(model, counts, len(removed)), 3),
    }
    for name in data_names:
        key = Path(name).name
        start = time.perf_counter()
        token_data = load_eval_data(name, tokenizer, split, seq_len, max_tokens)
        ppl = perplexity(model, token_data, batch_size)
        result.update({
            f"{key}_perplexity": ppl.perplexity,
            f"{key}_perplexity_stderr": ppl.stderr,
            f"{key}_tokens": ppl.tokens,
            f"{key}_windows": ppl.windows,
            f"{key}_eval_time_s": round(time.perf_counter() - start, 3),
        })
    if speed:
        defaults = speed_defaults()
        result.update(benchmark(
            model, tokenizer,
            prompt_tokens or defaults["prompt_tokens"],
            generation_tokens or defaults["generation_tokens"],
            repeats or defaults["repeats"],
            vocab_size=config.get("vocab_size"),
        ))
    return result


def evaluate_model(spec: str | None, data_names=("wiki",), split: str = "test",
                   seq_len: int = 512, max_tokens: int | None = 8192, batch_size: int = 4,
                   trust_remote_code: bool = False, *, dtype: str | None = None,
                   speed: bool = True, prompt_tokens: int | None = None,
                   generation_tokens: int | None = None, repeats: int | None = None) -> dict:
    """Every figure for one model spec (directory, repo, .gguf or None for the default).

    Keys: RESULT_KEYS, `<data>_` + DATA_KEYS per data set, SPEED_KEYS when `speed`.
    `prompt_tokens`, `generation_tokens`, `repeats` None: SPEED_DEFAULTS for the device.
    """
    mx.clear_cache()
    start = time.perf_counter()
    model, tokenizer, config, path = load_model_for_eval(spec, trust_remote_code, dtype)
    load_s = time.perf_counter() - start
    size = disk_bytes(path)
    result = {"model": str(path), "name": Path(path).name, "disk_bytes": size,
              "load_time_s": round(load_s, 3)}
    result.update(measure_model(
        model, tokenizer, config, data_names, split, seq_len, max_tokens, batch_size, speed,
        prompt_tokens, generation_tokens, repeats,
    ))
    result["disk_bits_per_param"] = round(8 * size / result["params_total"], 3)
    return {k: result[k] for k in (*RESULT_KEYS, *result) if k in result}  # stable order


# ---------------------------------------------------------------- report


def _short(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:.3g}"


def format_table(results: list[dict], data_names=()) -> str:
    """A fixed-width table of the main figures, one row per model."""
    keys = [Path(n).name for n in data_names]
    columns = [("model", 28), ("layers", 6), ("params M", 8), ("MLP+rec M", 9), ("MLP sav%", 8),
               ("disk MB", 8), ("load s", 6)]
    columns += [(f"{k} ppl ± se", 17) for k in keys]
    columns += [("prompt t/s", 10), ("TTFT s", 7), ("decode t/s", 10), ("peak GB", 7)]
    lines = ["  ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w)
                       in enumerate(columns))]
    for r in results:
        name = r["name"] if len(r["name"]) <= 28 else "…" + r["name"][-27:]
        cells = [f"{name:<28}", f"{r['num_layers']:>6}", f"{r['params_total'] / 1e6:>8.2f}",
                 f"{r['params_mlp_net'] / 1e6:>9.2f}", f"{r['net_mlp_saving_percent']:>8.1f}",
                 f"{r['disk_bytes'] / 1e6:>8.1f}", f"{r['load_time_s']:>6.2f}"]
        for k in keys:
            ppl = f"{_short(r[f'{k}_perplexity'])} ± {_short(r[f'{k}_perplexity_stderr'])}"
            cells.append(f"{ppl:>17}")
        if "decode_tok_per_s" in r:
            cells += [f"{r['prompt_tok_per_s']:>10.1f}", f"{r['ttft_s']:>7.3f}",
                      f"{r['decode_tok_per_s']:>10.2f}", f"{r['peak_memory_gb']:>7.3f}"]
        else:
            cells += [f"{'-':>10}", f"{'-':>7}", f"{'-':>10}", f"{'-':>7}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="model directory, repo or .gguf (repeatable; default: SmolLM2)")
    parser.add_argument("--data", default="wiki",
                        help="comma-separated: wiki, chitchat or a jsonl directory; "
                             "'none' skips perplexity")
    parser.add_argument("--split", default="test", choices=data.SPLITS)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="evaluate at most this many tokens per data set (0: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=sorted(models.DTYPES), default=None,
                        help="compute dtype (default: float32 on the CPU, stored dtype on a GPU)")
    parser.add_argument("-p", "--prompt-tokens", type=int, default=None,
                        help="speed: prompt length (default: 128 on the CPU, 512 on a GPU)")
    parser.add_argument("-g", "--generation-tokens", type=int, default=None,
                        help="speed: tokens to generate (default: 32 on the CPU, 128 on a GPU)")
    parser.add_argument("-n", "--repeats", type=int, default=None,
                        help="speed: timed runs after one warm-up; the median is reported "
                             "(default: 3 on the CPU, 5 on a GPU)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    names = [n for n in args.data.split(",") if n and n != "none"]
    results = run_cli(lambda a: [_evaluate_and_say(a, spec, names)
                                 for spec in a.model or [None]], args)
    print(format_table(results, names))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _evaluate_and_say(args: argparse.Namespace, spec: str | None, names: list[str]) -> dict:
    result = evaluate_model(
        spec, names, args.split, args.seq_len, args.max_tokens or None, args.batch_size,
        args.trust_remote_code, dtype=args.dtype, speed=not args.no_speed,
        prompt_tokens=args.prompt_tokens, generation_tokens=args.generation_tokens,
        repeats=args.repeats,
    )
    print(f"evaluated {result['model']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
