"""Turn a model into a SHARP model: `python -m sharp_mlx.convert`.

Loads a base model (default: the pinned SmolLM2-135M-Instruct), applies a sharing plan, initialises
the recovery parameters and writes an mlx-lm model directory that stock `mlx_lm.load(path,
trust_remote_code=True)` runs. `--plan none` writes the plain base model (a GGUF -> MLX converter).
"""

import argparse
import sys
from pathlib import Path

from . import models
from .accounting import account_model
from .plan import PlanError, parse_plan
from .sharp import ARCHITECTURE_FILE, INITS, build_sharp, recovery_config
from .sharp_model import MLP_MATRICES, RECOVERY_KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.convert", description=__doc__)
    parser.add_argument("--model", default=None,
                        help="base model: mlx-lm/HF directory or repo id, or a llama .gguf file "
                             "(default: the pinned SmolLM2-135M-Instruct)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a base model directory's custom model file")
    parser.add_argument("--plan", default="moderate",
                        help="none, moderate, aggressive, pairs:A-B, a .json file or inline JSON "
                             "'{\"17\": 16}' (default: moderate)")
    parser.add_argument("--recovery", default="lora", choices=RECOVERY_KINDS)
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (default: 64)")
    parser.add_argument("--matrices", default=",".join(MLP_MATRICES),
                        help="comma-separated MLP matrices that get recovery parameters")
    parser.add_argument("--scale", type=float, default=1.0, help="LoRA output scale")
    parser.add_argument("--init", default="svd", choices=INITS,
                        help="svd: best rank-r start from W_target - W_reference; "
                             "zero: start as direct sharing (default: svd)")
    parser.add_argument("--dtype", default="float16", choices=sorted(models.DTYPES),
                        help="dtype of the saved weights (default: float16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", "--mlx-path", dest="output", type=Path,
                        default=Path("sharp_models/model"), help="output directory")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def convert(args: argparse.Namespace) -> Path:
    """Run the conversion described by parsed CLI args; returns the output directory."""
    if args.output.exists() and not args.force:
        raise models.OutputExistsError(f"{args.output} already exists; pass --force to replace it")
    recovery = recovery_config(args.recovery, args.rank, args.matrices.split(","), args.scale)
    base, _, base_config, base_path = models.load_base(
        args.model, dtype="float32", trust_remote_code=args.trust_remote_code
    )
    if base_config.get("model_type") == "sharp":
        raise models.ModelError(f"{base_path} is already a SHARP model")
    plan = parse_plan(args.plan, len(base.layers))
    accounting = account_model(base, plan, recovery, dtype_bytes=models.DTYPES[args.dtype].size)
    print(f"plan: {args.plan} ({plan.describe()})")
    print(accounting.report())
    if plan.mapping:
        model, config = build_sharp(base, base_config, plan, recovery, args.init, args.seed)
        extra = [ARCHITECTURE_FILE]
    else:
        model, config, extra = base, base_config, []
    models.cast(model, models.DTYPES[args.dtype])
    with models.atomic_directory(args.output, force=args.force) as tmp:
        models.save_model_dir(tmp, model, config, base_path, extra_files=extra)
    print(f"wrote {args.output} ({models.tensor_bytes(args.output) / 1e6:.1f} MB of tensors)")
    return args.output


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        convert(args)
    except (PlanError, models.ModelError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
