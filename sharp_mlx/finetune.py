"""SFT of the recovery parameters: `python -m sharp_mlx.finetune --model SHARP_DIR --data wiki`.

Only recovery parameters train (optionally the norms); shared and base weights stay frozen.
Loss: next-token cross-entropy, distillation (KL to the original model's logits at a
temperature), or a mix. Validation every N steps keeps the best weights; early stopping, gradient
checkpointing, resumable checkpoints (weights, optimizer state, step: the data order is a function
of seed and step), and data parallel training under `mlx.launch` (gradients summed across ranks).
"""

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import data, models
from .cli import run_cli
from .sharp import recovery_layers

LOSSES = ("ce", "kd", "ce+kd")


@dataclass
class FinetuneConfig:
    data: str = "wiki"
    iters: int = 200
    batch_size: int = 4
    seq_len: int = 256
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    loss: str = "ce"
    kd_weight: float = 0.5  # share of the distillation term in "ce+kd"
    temperature: float = 2.0
    train_norms: bool = False
    steps_per_eval: int = 50
    val_batches: int = 4
    patience: int = 0  # evaluations without improvement before stopping (0: never stop early)
    grad_checkpoint: bool = False
    save_every: int = 50
    seed: int = 0
    max_train_tokens: int = 2_000_000
    compile: bool = True


@dataclass
class FinetuneResult:
    steps: int
    tokens: int
    best_val_loss: float
    best_step: int
    seconds: float
    train_seconds: float = 0.0  # optimizer steps only (no validation, no checkpoints)
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)  # (step, loss)


class NonFiniteLoss(RuntimeError):
    pass


def trainable_recovery(model: nn.Module, train_norms: bool = False) -> int:
    """Freeze everything but the recovery parameters (and norms); returns the trainable count."""
    model.freeze()
    for mlp in recovery_layers(model).values():
        mlp.unfreeze()
    if train_norms:
        for layer in model.layers:
            layer.input_layernorm.unfreeze()
            layer.post_attention_layernorm.unfreeze()
        model.model.norm.unfreeze()
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def losses(model, teacher, tokens, mask, config: FinetuneConfig) -> tuple[mx.array, mx.array]:
    """Summed loss over masked tokens and the token count (sums make ranks add up exactly)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).astype(mx.float32)
    total = mx.array(0.0)
    if config.loss in ("ce", "ce+kd"):
        ce = (nn.losses.cross_entropy(logits, targets) * mask).sum()
        total = total + (1 - config.kd_weight if config.loss == "ce+kd" else 1.0) * ce
    if config.loss in ("kd", "ce+kd"):
        t = config.temperature
        teacher_logp = nn.log_softmax(mx.stop_gradient(teacher(inputs)).astype(mx.float32) / t)
        student_logp = nn.log_softmax(logits / t)
        kl = (mx.exp(teacher_logp) * (teacher_logp - student_logp)).sum(-1) * t * t
        total = total + (config.kd_weight if config.loss == "ce+kd" else 1.0) * (kl * mask).sum()
    return total, mask.sum()


def validation_loss(model, token_data: data.TokenData, config: FinetuneConfig) -> float:
    total, count = 0.0, 0.0
    for i in range(0, token_data.num_rows, config.batch_size):
        tokens = mx.array(token_data.tokens[i: i + config.batch_size])
        mask = mx.array(token_data.mask[i: i + config.batch_size])
        logits = model(tokens[:, :-1]).astype(mx.float32)
        nll = (nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask).sum()
        total += nll.item()
        count += mask.sum().item()
    return total / max(count, 1)


def batch_rows(step: int, num_rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of the global batch at a step: a fresh permutation per epoch, from seed and step."""
    per_epoch = num_rows // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[position * batch_size: (position + 1) * batch_size]


def finetune(
    model: nn.Module,
    teacher: nn.Module | None,
    train: data.TokenData,
    valid: data.TokenData,
    config: FinetuneConfig,
    checkpoint_dir: Path | None = None,
    group: mx.distributed.Group | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Train the recovery parameters of a SHARP model in place; ends with the best weights."""
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; use one of {LOSSES}")
    if config.loss != "ce" and teacher is None:
        raise ValueError("distillation needs the original model as teacher")
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    if config.batch_size % size:
        raise ValueError(f"batch size {config.batch_size} must divide across {size} ranks")
    if train.num_rows < config.batch_size:
        raise data.DataError(f"{train.num_rows} training rows: fewer than one batch")
    trainable_recovery(model, config.train_norms)
    if teacher is not None:
        teacher.freeze()
    if config.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    optimizer = optim.Adam(
        learning_rate=warmup_cosine(config.learning_rate, config.iters, config.warmup_steps))
    optimizer.init(model.trainable_parameters())
    result = FinetuneResult(0, 0, math.inf, 0, 0.0)
    best = None
    if checkpoint_dir is not None and (checkpoint_dir / "finetune.json").is_file():
        result, best = _load(model, optimizer, checkpoint_dir)
    step = _train_step(model, teacher, optimizer, config, group)
    start = time.perf_counter() - result.seconds
    bar = _progress_bar(config.iters, result.steps, progress and rank == 0)
    stale = 0
    while result.steps < config.iters:
        rows = batch_rows(result.steps, train.num_rows, config.batch_size, config.seed)
        rows = rows[rank::size]
        tokens, mask = mx.array(train.tokens[rows]), mx.array(train.mask[rows])
        tic = time.perf_counter()
        loss_sum, count = step(tokens, mask)
        mx.eval(model.trainable_parameters(), optimizer.state, loss_sum, count)
        result.train_seconds += time.perf_counter() - tic
        loss = (loss_sum / count).item()
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"SFT loss became {loss} at step {result.steps + 1}; the last good checkpoint "
                f"is kept{f' in {checkpoint_dir}' if checkpoint_dir else ''}"
            )
        result.steps += 1
        result.tokens += int(train.mask[batch_rows(result.steps - 1, train.num_rows,
                                                   config.batch_size, config.seed)].sum())
        result.train_losses.append(round(loss, 5))
        if bar is not None:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{result.tokens / max(elapsed, 1e-9):.0f}")
            bar.update(1)
        last = result.steps == config.iters
        if result.steps % config.steps_per_eval == 0 or last:
            val = validation_loss(model, valid, config)
            result.val_losses.append((result.steps, round(val, 5)))
            if val < result.best_val_loss:
                result.best_val_loss, result.best_step, stale = val, result.steps, 0
                best = _recovery_weights(model)
            else:
                stale += 1
            if bar is not None:
                bar.write(f"step {result.steps}: val loss {val:.4f} "
                          f"(best {result.best_val_loss:.4f} at {result.best_step})")
            if config.patience and stale >= config.patience:
                if bar is not None:
                    bar.write(f"early stop: no improvement in {stale} evaluations")
                break
        if checkpoint_dir is not None and (result.steps % config.save_every == 0 or last):
            result.seconds = time.perf_counter() - start
            if rank == 0:
                _save(model, optimizer, result, best, checkpoint_dir)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    if best is not None:
        model.update(tree_unflatten(list(best.items())))
    model.unfreeze()
    return result


def _train_step(model, teacher, optimizer, config: FinetuneConfig, group):
    """One compiled optimizer step on summed losses; under mlx.launch, sums across ranks."""
    loss_and_grad = nn.value_and_grad(model, lambda m, t, k: losses(m, teacher, t, k, config))
    state = [model.state, optimizer.state]

    def step(tokens, mask):
        (loss_sum, count), grads = loss_and_grad(model, tokens, mask)
        if group is not None:
            grads = tree_map(lambda g: mx.distributed.all_sum(g, group=group), grads)
            loss_sum = mx.distributed.all_sum(loss_sum, group=group)
            count = mx.distributed.all_sum(count, group=group)
        optimizer.update(model, tree_map(lambda g: g / count, grads))
        return loss_sum, count

    if not config.compile:
        return step
    constants = [teacher.state] if teacher is not None else []
    return mx.compile(step, inputs=state + constants, outputs=state)


def warmup_cosine(learning_rate: float, steps: int, warmup_steps: int):
    """Linear warm-up to learning_rate, then cosine decay to a tenth of it."""
    warm = min(warmup_steps, max(steps - 1, 0))
    cosine = optim.cosine_decay(learning_rate, max(steps - warm, 1), 0.1 * learning_rate)
    if warm == 0:
        return cosine
    return optim.join_schedules([optim.linear_schedule(0.0, learning_rate, warm), cosine],
                                [warm])


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="sft", file=sys.stderr, dynamic_ncols=True)


def _recovery_weights(model) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def _save(model, optimizer, result: FinetuneResult, best, checkpoint_dir: Path) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"model.{k}": v for k, v in _recovery_weights(model).items()}
    arrays.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
    arrays.update({f"best.{k}": v for k, v in (best or {}).items()})
    tmp = checkpoint_dir / "finetune.tmp.safetensors"
    mx.save_safetensors(str(tmp), arrays)
    tmp.replace(checkpoint_dir / "finetune.safetensors")
    state = checkpoint_dir / "finetune.json"
    state.with_suffix(".tmp").write_text(json.dumps(asdict(result)))
    state.with_suffix(".tmp").replace(state)


def _load(model, optimizer, checkpoint_dir: Path):
    result = FinetuneResult(**json.loads((checkpoint_dir / "finetune.json").read_text()))
    arrays = mx.load(str(checkpoint_dir / "finetune.safetensors"))

    def part(prefix):
        return [(k[len(prefix):], v) for k, v in arrays.items() if k.startswith(prefix)]

    model.update(tree_unflatten(part("model.")))
    optimizer.state = tree_unflatten(part("optimizer."))
    best = dict(part("best.")) or None
    return result, best


# ---------------------------------------------------------------- command line


def add_finetune_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    d = FinetuneConfig()
    parser.add_argument("--data", default=d.data, help="wiki, chitchat or a jsonl directory")
    parser.add_argument(f"--{prefix}iters", type=int, default=d.iters)
    parser.add_argument(f"--{prefix}batch-size", type=int, default=d.batch_size)
    parser.add_argument(f"--{prefix}seq-len", type=int, default=d.seq_len)
    parser.add_argument(f"--{prefix}learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--loss", default=d.loss, choices=LOSSES,
                        help="ce: cross-entropy; kd: distillation from the original; ce+kd: mix")
    parser.add_argument("--kd-weight", type=float, default=d.kd_weight)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--train-norms", action="store_true")
    parser.add_argument("--steps-per-eval", type=int, default=d.steps_per_eval)
    parser.add_argument("--val-batches", type=int, default=d.val_batches)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--grad-checkpoint", action="store_true")
    parser.add_argument("--save-every", type=int, default=d.save_every)


def finetune_config(args: argparse.Namespace, prefix: str = "") -> FinetuneConfig:
    p = prefix.replace("-", "_")
    return FinetuneConfig(
        data=args.data, iters=getattr(args, f"{p}iters"),
        batch_size=getattr(args, f"{p}batch_size"), seq_len=getattr(args, f"{p}seq_len"),
        learning_rate=getattr(args, f"{p}learning_rate"), loss=args.loss,
        kd_weight=args.kd_weight, temperature=args.temperature, train_norms=args.train_norms,
        steps_per_eval=args.steps_per_eval, val_batches=args.val_batches,
        patience=args.patience, grad_checkpoint=args.grad_checkpoint,
        save_every=args.save_every, seed=args.seed,
    )


def load_sft_data(tokenizer, config: FinetuneConfig) -> tuple[data.TokenData, data.TokenData]:
    train = data.tokenize(data.load_records(config.data, "train"), tokenizer, config.seq_len,
                          config.max_train_tokens)
    valid = data.tokenize(data.load_records(config.data, "valid"), tokenizer, config.seq_len,
                          config.val_batches * config.batch_size * config.seq_len)
    return train, data.TokenData(valid.tokens[: config.val_batches * config.batch_size],
                                 valid.mask[: config.val_batches * config.batch_size])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.finetune", description=__doc__)
    parser.add_argument("--model", required=True, help="SHARP model directory")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load a sharp_model.py that differs from this package's own")
    parser.add_argument("--original", default=None,
                        help="original model, the teacher for --loss kd / ce+kd (default: the "
                             "base recorded in the model's sharp_recovery.json, else SmolLM2)")
    parser.add_argument("-o", "--output", type=Path, help="output directory (default: in place)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="resumable checkpoints (default: OUTPUT.checkpoints)")
    add_finetune_args(parser)
    return parser


def run(args: argparse.Namespace) -> Path:
    """Fine-tune a SHARP directory's recovery parameters and write the result atomically."""
    from .convert import distributed_group, save_sharp, teacher_spec

    output = args.output or Path(args.model)
    if args.output and output.exists() and not args.force:
        raise models.OutputExistsError(f"{output} already exists; pass --force to replace it")
    model, tokenizer, config, path = models.load_base(
        args.model, trust_remote_code=args.trust_remote_code)
    if config.get("model_type") != "sharp":
        raise models.ModelError(f"{path} is not a SHARP model (model_type is not 'sharp')")
    models.use_float32_on_cpu(model)
    config_ft = finetune_config(args)
    teacher = None
    if config_ft.loss != "ce":
        teacher = models.load_base(args.original or teacher_spec(path), dtype="float32")[0]
    train, valid = load_sft_data(tokenizer, config_ft)
    group = distributed_group()
    checkpoints = args.checkpoint_dir or output.with_name(output.name + ".checkpoints")
    result = finetune(model, teacher, train, valid, config_ft, checkpoints, group)
    print(f"SFT: {result.steps} steps, {result.tokens} tokens, best val loss "
          f"{result.best_val_loss:.4f} at step {result.best_step}, {result.seconds:.0f}s")
    if group is None or group.rank() == 0:
        record = _read_record(path)
        record["finetune"] = {"config": asdict(config_ft), "result": asdict(result)}
        save_sharp(output, model, config, path, record, force=True,
                   dtype=config.get("torch_dtype", "float16"))
        shutil.rmtree(checkpoints, ignore_errors=True)
    return output


def _read_record(path: Path) -> dict:
    file = path / "sharp_recovery.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
