"""Baselines for SHARP in the same harness: `python -m sharp_mlx.prune`.

ShortGPT layer pruning: every layer's Block Influence BI_i = 1 - mean cosine(h_in, h_out) over
calibration tokens (`--data`, train split, `--tokens`) is measured, and the whole layers with the
lowest BI are removed: `--layers N`, or `--match-plan PLAN` to remove as many layers as save the
number of parameters closest to what a SHARP plan saves net of its recovery parameters (PLAN is
a preset, `pairs:A-B`, a plan JSON, inline JSON, or a SHARP model directory whose own plan and
recovery are used). The output is a plain mlx-lm model directory (fewer layers,
`num_hidden_layers` updated, the removed layers and BI recorded under `"sharp_prune"`) that
stock mlx-lm loads and `python -m sharp_mlx.evaluate` measures.

Direct sharing, the paper's other baseline, is a SHARP model whose recovery starts at zero:
`direct_sharing()` here, or `python -m sharp_mlx.convert --plan PLAN --init zero --rank 1`.
"""

import argparse
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import analyze, data, evaluate, models
from .accounting import account_model
from .cli import run_cli
from .plan import SharingPlan, parse_plan
from .sharp import build_sharp, recovery_config
from .sharp_model import MLP_MATRICES, RECOVERY_KINDS


def block_influence(model: nn.Module, token_data: data.TokenData, batch_size: int = 4
                    ) -> np.ndarray:
    """BI_i = 1 - mean over tokens of cosine(layer i's input, layer i's output)."""
    return analyze.analyze_layers(model, token_data, distance=0,
                                  batch_size=batch_size).block_influence


def choose_layers(influence, count: int, keep=()) -> list[int]:
    """The `count` layers of lowest Block Influence (never those in `keep`), ascending."""
    order = [i for i in np.argsort(influence, kind="stable") if i not in set(keep)]
    if count > len(order) or count >= len(influence):
        raise ValueError(f"cannot remove {count} of {len(influence)} layers "
                         f"({len(influence) - len(order)} kept)")
    return sorted(int(i) for i in order[:count])


def layer_params(model: nn.Module) -> list[int]:
    """Parameters of each layer (attention, MLP, norms; quantized counted as logical)."""
    return [evaluate.parameter_counts(layer)["total"] for layer in model.layers]


def sharp_saving(base_model: nn.Module, plan: SharingPlan, recovery: dict) -> int:
    """Parameters a SHARP plan saves, net of its recovery parameters."""
    accounting = account_model(base_model, plan, recovery)
    return accounting.mlp_params_original - accounting.mlp_params_net


def layers_to_match(influence, per_layer: list[int], saving: int, keep=()) -> list[int]:
    """The lowest-BI layers whose removal saves the parameter count closest to `saving`
    (a tie takes more layers)."""
    order = [int(i) for i in np.argsort(influence, kind="stable") if i not in set(keep)]
    best, best_gap, saved = [], saving, 0
    for n, layer in enumerate(order[: len(per_layer) - 1], start=1):
        saved += per_layer[layer]
        if abs(saved - saving) <= best_gap:
            best, best_gap = sorted(order[:n]), abs(saved - saving)
    return best


def prune_layers(model: nn.Module, config: dict, remove) -> tuple[nn.Module, dict]:
    """A plain model of the same architecture without the layers in `remove`."""
    from mlx_lm.utils import _get_classes

    num_layers = len(model.layers)
    remove = sorted(set(int(i) for i in remove))
    if any(not 0 <= i < num_layers for i in remove):
        raise ValueError(f"layers to remove {remove} must be in [0, {num_layers})")
    if len(remove) >= num_layers:
        raise ValueError("cannot remove every layer")
    if config.get("model_type") == "sharp":
        raise ValueError("prune a base model, not a SHARP model")
    kept = [i for i in range(num_layers) if i not in remove]
    new_index = {old: new for new, old in enumerate(kept)}
    pruned_config = {**config, "num_hidden_layers": len(kept)}
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == num_layers:
        pruned_config["layer_types"] = [config["layer_types"][i] for i in kept]
    weights = {}
    for key, value in tree_flatten(model.parameters()):
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old in remove:
                continue
            key = ".".join(parts[:2] + [str(new_index[old])] + parts[3:])
        weights[key] = value
    model_class, args_class = _get_classes(pruned_config)
    pruned = model_class(args_class.from_dict(pruned_config))
    if quantization := config.get("quantization"):
        nn.quantize(pruned, quantization["group_size"], quantization["bits"],
                    class_predicate=lambda p, m: f"{p}.scales" in weights)
    pruned.load_weights(list(weights.items()), strict=True)
    mx.eval(pruned.parameters())
    return pruned, pruned_config


def direct_sharing(base_model: nn.Module, base_config: dict, plan: SharingPlan, rank: int = 1,
                   matrices=MLP_MATRICES) -> tuple[nn.Module, dict]:
    """The direct-sharing baseline: a SHARP model whose recovery is zero (a rank-`rank` LoRA
    with B = 0), so every target computes exactly with its reference's MLP."""
    return build_sharp(base_model, base_config, plan, recovery_config("lora", rank, matrices),
                       init="zero")


def plan_to_match(spec: str, model: nn.Module, recovery: dict) -> tuple[SharingPlan, dict]:
    """(plan, recovery) from a plan spec, or from a SHARP model directory's own config."""
    path = Path(spec)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        if "sharp" not in config:
            raise ValueError(f"{path} is not a SHARP model directory")
        return parse_plan(config["sharp"]["plan"], len(model.layers)), config["sharp"]["recovery"]
    return parse_plan(spec, len(model.layers)), recovery


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="base model directory, repo or .gguf (default: SmolLM2)")
    parser.add_argument("--trust-remote-code", action="store_true")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--layers", type=int, help="remove this many layers")
    how.add_argument("--match-plan",
                     help="remove the layers whose parameters best match this SHARP plan's net "
                          "saving (preset, pairs:A-B, JSON file, inline JSON, SHARP model dir)")
    parser.add_argument("--recovery", default="lora", choices=RECOVERY_KINDS,
                        help="recovery of the plan to match (ignored for a SHARP model dir)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--matrices", default=",".join(MLP_MATRICES))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", default="", help="comma-separated layers never removed")
    parser.add_argument("--data", default="wiki", help="calibration data for Block Influence")
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float16", choices=sorted(models.DTYPES),
                        help="dtype of the saved weights (default: float16)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def prune(args: argparse.Namespace) -> Path:
    if args.output.exists() and not args.force:
        raise models.OutputExistsError(f"{args.output} already exists; pass --force to replace it")
    model, tokenizer, config, path = models.load_base(args.model, "float32", args.trust_remote_code)
    if config.get("model_type") == "sharp":
        raise models.ModelError(f"{path} is a SHARP model; prune its base model")
    keep = [int(x) for x in args.keep.split(",") if x.strip()]
    token_data = analyze.calibration_data(args.data, tokenizer, args.tokens, args.seq_len)
    influence = block_influence(model, token_data, args.batch_size)
    per_layer = layer_params(model)
    info = {"method": "shortgpt-block-influence", "data": args.data,
            "tokens": int(token_data.num_loss_tokens),
            "block_influence": [round(float(x), 6) for x in influence]}
    if args.layers is not None:
        remove = choose_layers(influence, args.layers, keep)
    else:
        recovery = recovery_config(args.recovery, args.rank, args.matrices.split(","),
                                   args.scale)
        plan, recovery = plan_to_match(args.match_plan, model, recovery)
        target = sharp_saving(model, plan, recovery)
        remove = layers_to_match(influence, per_layer, target, keep)
        if not remove:
            raise ValueError(f"the plan saves {target:,} parameters, less than half a layer")
        info.update({"matched_plan": plan.to_json(), "matched_recovery": recovery,
                     "matched_saving_params": target})
    saved = sum(per_layer[i] for i in remove)
    info.update({"removed_layers": remove, "saved_params": saved})
    print(f"{path}: Block Influence per layer")
    print("  " + " ".join(f"{i}:{b:.3f}" for i, b in enumerate(influence)))
    total = evaluate.parameter_counts(model)["total"]
    print(f"removing {len(remove)} of {len(per_layer)} layers: {remove} "
          f"({saved:,} parameters, {100 * saved / total:.1f}% of the model)")
    if "matched_saving_params" in info:
        print(f"the plan saves {info['matched_saving_params']:,} parameters net")
    pruned, pruned_config = prune_layers(model, config, remove)
    pruned_config["sharp_prune"] = info
    models.cast(pruned, models.DTYPES[args.dtype])
    with models.atomic_directory(args.output, force=args.force) as tmp:
        models.save_model_dir(tmp, pruned, pruned_config, path)
    print(f"wrote {args.output}")
    return args.output


def main(argv: list[str] | None = None) -> None:
    run_cli(prune, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
