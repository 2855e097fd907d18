"""Turn a model into a SHARP model: `python -m sharp_mlx.convert`.

Loads a base model (default: the pinned SmolLM2-135M-Instruct), applies a sharing plan, initialises
the recovery parameters, optionally runs Single Layer Warmup (`--warmup`) and SFT (`--finetune`),
optionally reports perplexity and a sample (`--report`), and writes an mlx-lm model directory
that stock `mlx_lm.load(path, trust_remote_code=True)` runs. `--plan none` writes the plain base
model (a GGUF -> MLX converter). `--recipe default` is the documented recipe for the default
model: warmup, SFT, report.
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import data, models
from .accounting import account_model
from .cli import run_cli
from .finetune import (
    FinetuneConfig,
    add_finetune_args,
    finetune,
    finetune_config,
    load_sft_data,
)
from .plan import SharingPlan, parse_plan
from .sharp import ARCHITECTURE_FILE, INITS, build_sharp, recovery_config
from .sharp_model import MLP_MATRICES, RECOVERY_KINDS
from .warmup import WarmupConfig, warmup

RECIPES = {
    # The default model's recipe (README main job): moderate plan, LoRA 64 from SVD, SLW on 32k
    # wiki tokens, 30 SFT steps of 4 x 256 tokens with cross-entropy, then a report.
    "default": dict(plan="moderate", warmup=True, finetune=True, report=True, iters=30),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.convert", description=__doc__)
    parser.add_argument("--model", default=None,
                        help="base model: mlx-lm/HF directory or repo id, or a llama .gguf file "
                             "(default: the pinned SmolLM2-135M-Instruct)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a base model directory's custom model file")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="a documented set of defaults (explicit flags still win)")
    parser.add_argument("--plan", default=None,
                        help="none, moderate, aggressive, auto, pairs:A-B, a .json file or "
                             "inline JSON '{\"17\": 16}' (default: moderate)")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="net MLP saving the auto plan must reach (default: 0.5)")
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
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="where warmup/SFT checkpoints go; a rerun resumes from them "
                             "(default: OUTPUT.checkpoints, removed after success)")
    w = WarmupConfig()
    group = parser.add_argument_group("Single Layer Warmup")
    group.add_argument("--warmup", action="store_true", default=None)
    group.add_argument("--warmup-data", default=None, help="calibration data (default: --data)")
    group.add_argument("--warmup-tokens", type=int, default=w.tokens)
    group.add_argument("--warmup-epochs", type=int, default=w.epochs)
    group.add_argument("--warmup-batch-tokens", type=int, default=w.batch_tokens)
    group.add_argument("--warmup-learning-rate", type=float, default=w.learning_rate)
    group.add_argument("--warmup-schedule", default=w.schedule, choices=("cosine", "constant"))
    group.add_argument("--warmup-memory-gb", type=float, default=w.memory_gb)
    group.add_argument("--sequential", action="store_true",
                       help="warm each target on the already-converted model's hidden states")
    sft = parser.add_argument_group("SFT")
    sft.add_argument("--finetune", action="store_true", default=None)
    sft.add_argument("--original", default=None, help=argparse.SUPPRESS)
    add_finetune_args(sft)
    report = parser.add_argument_group("report")
    report.add_argument("--report", action="store_true", default=None,
                        help="print original vs SHARP perplexity, sizes and a sample at the end")
    report.add_argument("--report-tokens", type=int, default=8192)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    recipe = RECIPES.get(args.recipe, {})
    for key, value in recipe.items():
        if getattr(args, key) in (None, parser.get_default(key)):
            setattr(args, key, value)
    args.plan = args.plan or "moderate"
    for flag in ("warmup", "finetune", "report"):
        setattr(args, flag, bool(getattr(args, flag)))
    return args


def distributed_group() -> mx.distributed.Group | None:
    """The mlx.launch group when more than one rank runs, else None."""
    group = mx.distributed.init()
    return group if group.size() > 1 else None


def teacher_spec(sharp_dir: Path) -> str | None:
    record = sharp_dir / "sharp_recovery.json"
    if record.is_file():
        return json.loads(record.read_text()).get("base_model")
    return None


def save_sharp(out: Path, model: nn.Module, config: dict, source_dir: Path, record: dict,
               force: bool, dtype: str) -> None:
    """Write a SHARP (or plain) model directory atomically, with its recovery record."""
    models.cast(model, models.DTYPES[dtype])
    extra = [ARCHITECTURE_FILE] if config.get("model_type") == "sharp" else []
    with models.atomic_directory(out, force=force) as tmp:
        models.save_model_dir(tmp, model, {**config, "torch_dtype": dtype}, source_dir, extra)
        if record:
            (tmp / "sharp_recovery.json").write_text(json.dumps(record, indent=2))


def choose_plan(args, base, tokenizer, recovery) -> SharingPlan:
    if args.plan != "auto":
        return parse_plan(args.plan, len(base.layers))
    from .analyze import suggest_plan

    return suggest_plan(base, tokenizer, args.budget, recovery,
                        data=args.warmup_data or args.data)


def convert(args: argparse.Namespace) -> Path:
    """Run the conversion chain described by parsed CLI args; returns the output directory."""
    started = time.perf_counter()
    if args.output.exists() and not args.force:
        raise models.OutputExistsError(f"{args.output} already exists; pass --force to replace it")
    recovery = recovery_config(args.recovery, args.rank, args.matrices.split(","), args.scale)
    base, tokenizer, base_config, base_path = models.load_base(
        args.model, dtype="float32", trust_remote_code=args.trust_remote_code
    )
    if base_config.get("model_type") == "sharp":
        raise models.ModelError(f"{base_path} is already a SHARP model")
    plan = choose_plan(args, base, tokenizer, recovery)
    accounting = account_model(base, plan, recovery, dtype_bytes=models.DTYPES[args.dtype].size)
    print(f"plan: {args.plan} ({plan.describe()})")
    print(accounting.report())
    record = {"base_model": str(base_path), "plan": plan.to_json(), "recovery": recovery,
              "init": args.init, "accounting": accounting.to_json()}
    if not plan.mapping:
        save_sharp(args.output, base, base_config, base_path, {}, args.force, args.dtype)
        print(f"wrote {args.output}")
        return args.output
    model, config = build_sharp(base, base_config, plan, recovery, args.init, args.seed)
    group = distributed_group()
    checkpoints = args.checkpoint_dir or args.output.with_name(args.output.name + ".checkpoints")
    if args.warmup or args.finetune:  # a failed run keeps them, so a rerun resumes
        _check_checkpoint_recipe(checkpoints, record, args)
    if args.warmup:
        record["warmup"] = run_warmup(args, model, base, tokenizer, checkpoints, group)
    if args.finetune:
        record["finetune"] = run_finetune(args, model, base, tokenizer, checkpoints, group)
    if args.report:
        record["report"] = report(model, base, tokenizer, args.report_tokens)
    record["ranks"] = 1 if group is None else group.size()
    record["wall_time_s"] = round(time.perf_counter() - started, 1)
    if group is None or group.rank() == 0:
        save_sharp(args.output, model, config, base_path, record, args.force, args.dtype)
        shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"wrote {args.output}: {models.tensor_bytes(args.output) / 1e6:.1f} MB of tensors "
              f"(original {accounting.tensor_bytes_original / 1e6:.1f} MB), "
              f"{record['wall_time_s']:.0f}s")
        if "report" in record:
            print(f"sample: {record['report']['sample']!r}")
    return args.output


def _check_checkpoint_recipe(checkpoints: Path, record: dict, args) -> None:
    """Resume only a run of the same recipe; remember the recipe for the next run."""
    recipe = {**{k: v for k, v in vars(args).items() if k not in ("force", "report")},
              "record": record}
    recipe = json.loads(json.dumps(recipe, default=str))
    file = checkpoints / "recipe.json"
    if file.is_file():
        if json.loads(file.read_text()) != recipe:
            raise ValueError(f"{checkpoints} holds checkpoints of a different recipe; remove it "
                             "or pass another --checkpoint-dir")
        print(f"resuming from checkpoints in {checkpoints}", file=sys.stderr)
    checkpoints.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(recipe, indent=1))


def run_warmup(args, model, base, tokenizer, checkpoints, group) -> dict:
    config = WarmupConfig(
        tokens=args.warmup_tokens, seq_len=args.seq_len, epochs=args.warmup_epochs,
        batch_tokens=args.warmup_batch_tokens, learning_rate=args.warmup_learning_rate,
        schedule=args.warmup_schedule, seed=args.seed, sequential=args.sequential,
        memory_gb=args.warmup_memory_gb,
    )
    name = args.warmup_data or args.data
    calibration = data.tokenize(data.load_records(name, "train"), tokenizer, config.seq_len,
                                config.tokens).tokens[:, :-1]
    held_out = data.tokenize(data.load_records(name, "valid"), tokenizer, config.seq_len,
                             config.eval_tokens).tokens[:, :-1]
    start = time.perf_counter()
    reports = warmup(model, base, mx.array(calibration), mx.array(held_out), config,
                     checkpoints, group)
    return {"config": asdict(config), "data": name, "tokens_seen": int(calibration.size),
            "targets": [asdict(r) for r in reports],
            "seconds": round(time.perf_counter() - start, 1)}


def run_finetune(args, model, base, tokenizer, checkpoints, group) -> dict:
    config: FinetuneConfig = finetune_config(args)
    train, valid = load_sft_data(tokenizer, config)
    teacher = base if config.loss != "ce" else None
    result = finetune(model, teacher, train, valid, config, checkpoints, group)
    print(f"SFT: {result.steps} steps, {result.tokens} tokens, best val loss "
          f"{result.best_val_loss:.4f} at step {result.best_step}, {result.seconds:.0f}s "
          f"({result.tokens / max(result.seconds, 1e-9):.0f} tok/s)")
    return {"config": asdict(config), "result": asdict(result)}


def report(model, base, tokenizer, max_tokens: int) -> dict:
    """Perplexity of original and SHARP on the wiki and chitchat test splits, and a sample."""
    from mlx_lm import generate

    from .evaluate import perplexity

    figures = {}
    for name in ("wiki", "chitchat"):
        test = data.tokenize(data.load_records(name, "test"), tokenizer, 512, max_tokens)
        original, sharp = perplexity(base, test), perplexity(model, test)
        figures[name] = {"original_ppl": original.perplexity, "sharp_ppl": sharp.perplexity,
                         "ratio": sharp.perplexity / original.perplexity, "tokens": sharp.tokens}
        print(f"{name:9s} test perplexity: original {original.perplexity:.2f} "
              f"+- {original.stderr:.2f}, SHARP {sharp.perplexity:.2f} +- {sharp.stderr:.2f} "
              f"({sharp.perplexity / original.perplexity:.3f}x, {sharp.tokens} tokens)")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    figures["sample"] = generate(model, tokenizer, prompt=prompt, max_tokens=40)
    return figures


def main(argv: list[str] | None = None) -> None:
    run_cli(convert, parse_args(argv))


if __name__ == "__main__":
    main()
