"""Evaluate models: `python -m sharp_mlx.evaluate --model A [--model B ...] --data wiki,chitchat`.

Perplexity on fixed windows of a split (mean and standard error over windows), for any mlx-lm
model directory, SHARP or not, quantized or not.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import data, models


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
    mean_nll = sums.sum() / counts.sum()
    per_window = sums / np.maximum(counts, 1)
    stderr_nll = per_window.std(ddof=1) / math.sqrt(len(sums)) if len(sums) > 1 else 0.0
    ppl = math.exp(mean_nll)
    return Perplexity(ppl, ppl * stderr_nll, int(counts.sum()), len(sums))


def load_eval_data(name: str, tokenizer, split: str, seq_len: int, max_tokens: int | None
                   ) -> data.TokenData:
    return data.tokenize(data.load_records(name, split), tokenizer, seq_len, max_tokens)


def evaluate_model(spec: str, data_names: list[str], split: str, seq_len: int,
                   max_tokens: int | None, batch_size: int, trust_remote_code: bool) -> dict:
    start = time.perf_counter()
    model, tokenizer, config, path = load_model_for_eval(spec, trust_remote_code)
    load_s = time.perf_counter() - start
    result = {"model": str(path), "load_time_s": round(load_s, 3)}
    for name in data_names:
        token_data = load_eval_data(name, tokenizer, split, seq_len, max_tokens)
        ppl = perplexity(model, token_data, batch_size)
        result[f"{Path(name).name}_perplexity"] = ppl.perplexity
        result[f"{Path(name).name}_perplexity_stderr"] = ppl.stderr
        result[f"{Path(name).name}_tokens"] = ppl.tokens
    return result


def load_model_for_eval(spec: str, trust_remote_code: bool = False):
    """Load a model as mlx-lm does (quantized stays quantized)."""
    from mlx_lm.utils import load_model, load_tokenizer

    path = models.resolve_model(spec)
    models.check_safetensors(path)
    config = json.loads((path / "config.json").read_text())
    trust = trust_remote_code or models.is_own_model_file(path, config)
    model, config = load_model(path, lazy=True, trust_remote_code=trust)
    models.use_float32_on_cpu(model)
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer, config, path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.evaluate", description=__doc__)
    parser.add_argument("--model", action="append", default=None,
                        help="model directory, repo or .gguf (repeatable; default: SmolLM2)")
    parser.add_argument("--data", default="wiki",
                        help="comma-separated: wiki, chitchat or a jsonl directory")
    parser.add_argument("--split", default="test", choices=data.SPLITS)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="evaluate at most this many tokens per data set (0: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    names = [n for n in args.data.split(",") if n]
    results = []
    try:
        for spec in args.model or [None]:
            results.append(evaluate_model(spec, names, args.split, args.seq_len,
                                          args.max_tokens or None, args.batch_size,
                                          args.trust_remote_code))
    except (models.ModelError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for r in results:
        figures = "  ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k != "model"
        )
        print(f"{r['model']}\n  {figures}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()


