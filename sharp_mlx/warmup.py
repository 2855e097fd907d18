"""Single Layer Warmup (SLW): train each replaced MLP alone to match the original layer.

The calibration tokens' residual stream is pushed through the model one layer at a time (a pass
over layers, not over a growing store of activations: memory holds one layer boundary for the
calibration tokens, `tokens x hidden` floats, checked against `memory_gb`). At each target layer
its recovery parameters are trained with an L2 loss:

- independent (the paper): input x = the original model's MLP input at that layer, target = the
  original MLP's output on x. Targets do not depend on each other, so under `mlx.launch` they
  are split across ranks.
- sequential (`--sequential`): x comes from the SHARP model with every earlier target already
  warmed up, and the target is what makes the layer's output match the original residual stream
  (original block output minus the SHARP residual before the MLP), so upstream error is seen and
  compensated.

Checkpoints are written after every target, so a stopped run resumes at the next target and ends
with the same weights as an uninterrupted one.
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.base import create_attention_mask

from .finetune import NonFiniteLoss, warmup_cosine
from .sharp import recovery_layers


@dataclass
class WarmupConfig:
    tokens: int = 32768  # calibration tokens (train split)
    eval_tokens: int = 2048  # held-out tokens (valid split) for the reported errors
    seq_len: int = 256
    epochs: int = 4
    batch_tokens: int = 1024
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant
    seed: int = 0
    sequential: bool = False
    memory_gb: float = 4.0


def _layer_parts(layer: nn.Module, h: mx.array, mask) -> tuple[mx.array, mx.array]:
    """Residual after attention and the MLP input of one decoder layer."""
    mid = h + layer.self_attn(layer.input_layernorm(h), mask)
    return mid, layer.post_attention_layernorm(mid)


def _in_batches(fn, h: mx.array, rows: int = 8) -> list[mx.array]:
    """Apply fn to row batches of h, evaluating as it goes (bounds attention memory)."""
    outs = []
    for i in range(0, h.shape[0], rows):
        out = fn(h[i: i + rows])
        mx.eval(out)
        outs.append(out)
    if isinstance(outs[0], tuple):
        return [mx.concatenate(parts) for parts in zip(*outs, strict=True)]
    return [mx.concatenate(outs)]


def relative_error(pred: mx.array, target: mx.array) -> float:
    return (mx.square(pred - target).sum() / mx.square(target).sum()).item()


def _schedule(config: WarmupConfig, steps: int):
    if config.schedule == "constant":
        return config.learning_rate
    return warmup_cosine(config.learning_rate, steps, config.warmup_steps)


def train_target(mlp: nn.Module, x: mx.array, y: mx.array, config: WarmupConfig,
                 seed: int) -> list[float]:
    """Fit one SharedMLP's recovery to map x -> y (L2); returns the loss of every step."""
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    n = x.shape[0]
    batch = min(config.batch_tokens, n)
    per_epoch = max(n // batch, 1)
    steps = per_epoch * config.epochs
    optimizer = optim.Adam(learning_rate=_schedule(config, steps))
    scale = mx.square(y).mean()

    def loss_fn(module, xb, yb):
        return mx.square(module(xb) - yb).mean() / scale

    loss_and_grad = nn.value_and_grad(mlp, loss_fn)
    state = [mlp.state, optimizer.state]

    @partial(mx.compile, inputs=state + [mlp.reference_mlp.state], outputs=state)
    def step(xb, yb):
        loss, grads = loss_and_grad(mlp, xb, yb)
        optimizer.update(mlp, grads)
        return loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(config.epochs):
        order = mx.array(rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch))
        for idx in order:
            loss = step(x[idx], y[idx])
            mx.eval(loss, mlp.state, optimizer.state)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"warmup loss became {value} at step {len(losses)}")
            losses.append(value)
    return losses


@dataclass
class TargetReport:
    layer: int
    reference: int
    error_before: float
    error_after: float
    steps: int
    final_loss: float
    seconds: float


def warmup(
    sharp: nn.Module,
    original: nn.Module,
    calibration: mx.array,
    held_out: mx.array,
    config: WarmupConfig,
    checkpoint_dir: Path | None = None,
    group: mx.distributed.Group | None = None,
    progress: bool = True,
) -> list[TargetReport]:
    """Warm up every target of `sharp` (in place) against `original`; returns per-layer reports.

    calibration / held_out: (rows, seq_len) token arrays. `original` must be the unshared model
    the SHARP model was built from; both are left in eval mode with unchanged base weights.
    """
    targets = recovery_layers(sharp)
    _check_memory(calibration, original, config)
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    mine = {t for i, t in enumerate(sorted(targets)) if i % size == rank}
    if checkpoint_dir is not None and size > 1:  # each rank checkpoints its own targets
        checkpoint_dir = checkpoint_dir / f"rank{rank}"
    done, reports = _load_checkpoint(sharp, checkpoint_dir)
    streams = {name: original.model.embed_tokens(tokens) for name, tokens in
               (("train", calibration), ("held", held_out))}
    sharp_streams = dict(streams) if config.sequential else None
    mask = create_attention_mask(streams["train"][:1], None)
    last = max(mine - done, default=-1)
    bar = _progress_bar(len(mine - done), progress and rank == 0)
    for index, layer in enumerate(original.layers[: last + 1]):
        target_mlp = targets.get(index)
        if target_mlp is not None and index in mine and index not in done:
            reports.append(_warm_one(index, target_mlp, layer, sharp.layers[index], streams,
                                     sharp_streams, mask, config))
            _save_checkpoint(sharp, checkpoint_dir, reports)
            if bar is not None:
                r = reports[-1]
                bar.write(_format(r))
                bar.set_postfix(error=f"{r.error_after:.3f}",
                                tok_s=f"{calibration.size * config.epochs / r.seconds:.0f}")
                bar.update(1)
        streams = _advance(layer, streams, mask)
        if sharp_streams is not None:
            sharp_streams = _advance(sharp.layers[index], sharp_streams, mask)
    if bar is not None:
        bar.close()
    if size > 1:
        reports = _share_across_ranks(sharp, targets, mine, reports, group)
    return sorted(reports, key=lambda r: r.layer)


def _advance(layer: nn.Module, streams: dict, mask) -> dict:
    return {k: _in_batches(lambda h: layer(h, mask), v)[0] for k, v in streams.items()}


def _warm_one(index, target_mlp, original_layer, sharp_layer, streams, sharp_streams, mask,
              config) -> TargetReport:
    start = time.perf_counter()
    data = {}
    for split in ("train", "held"):
        if sharp_streams is None:
            _, x = _in_batches(lambda h: _layer_parts(original_layer, h, mask), streams[split])
            y = _in_batches(original_layer.mlp, x)[0]
        else:
            mid, x = _in_batches(lambda h: _layer_parts(sharp_layer, h, mask),
                                 sharp_streams[split])
            y = _in_batches(lambda h: original_layer(h, mask), streams[split])[0] - mid
        data[split] = (x, y)
    x_held, y_held = data["held"]
    before = relative_error(_in_batches(target_mlp, x_held)[0], y_held)
    losses = train_target(target_mlp, *data["train"], config, seed=config.seed * 1000 + index)
    after = relative_error(_in_batches(target_mlp, x_held)[0], y_held)
    return TargetReport(index, target_mlp._reference[1], before, after, len(losses), losses[-1],
                        time.perf_counter() - start)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="warmup", unit="layer", file=sys.stderr, dynamic_ncols=True)


def _format(r: TargetReport) -> str:
    return (f"warmup layer {r.layer:3d} <- {r.reference:3d}: relative error "
            f"{r.error_before:.4f} -> {r.error_after:.4f} ({r.steps} steps, {r.seconds:.1f}s)")


def _check_memory(calibration: mx.array, original: nn.Module, config: WarmupConfig) -> None:
    hidden = original.model.embed_tokens.weight.shape[1]
    # one stream (two when sequential) + MLP inputs and targets of the layer being warmed up
    floats = calibration.size * hidden * (2 + (2 if config.sequential else 1))
    needed = floats * 4 / 1e9
    if needed > config.memory_gb:
        raise MemoryError(
            f"warmup needs ~{needed:.1f} GB for {calibration.size} calibration tokens, over the "
            f"{config.memory_gb} GB budget: lower --warmup-tokens or raise --warmup-memory-gb"
        )


def _recovery_of(sharp: nn.Module, layers) -> dict[str, mx.array]:
    prefixes = tuple(f"model.layers.{t}.mlp." for t in layers)
    return {k: v for k, v in tree_flatten(sharp.parameters()) if k.startswith(prefixes)}


def _save_checkpoint(sharp, checkpoint_dir: Path | None, reports: list[TargetReport]) -> None:
    if checkpoint_dir is None:
        return
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    weights = _recovery_of(sharp, [r.layer for r in reports])
    tmp = checkpoint_dir / "warmup.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    tmp.replace(checkpoint_dir / "warmup.safetensors")
    state = checkpoint_dir / "warmup.json"
    state.with_suffix(".tmp").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    state.with_suffix(".tmp").replace(state)


def _load_checkpoint(sharp, checkpoint_dir: Path | None) -> tuple[set[int], list[TargetReport]]:
    if checkpoint_dir is None or not (checkpoint_dir / "warmup.json").is_file():
        return set(), []
    reports = [TargetReport(**r) for r in json.loads((checkpoint_dir / "warmup.json").read_text())]
    weights = mx.load(str(checkpoint_dir / "warmup.safetensors"))
    sharp.update(tree_unflatten(list(weights.items())))
    return {r.layer for r in reports}, reports


def _share_across_ranks(sharp, targets, mine, reports, group) -> list[TargetReport]:
    """Every rank ends with every target's warmed-up recovery (zeros + all_sum)."""
    params = _recovery_of(sharp, targets)
    owned = tuple(f"model.layers.{t}.mlp." for t in mine)
    summed = {k: mx.distributed.all_sum(v if k.startswith(owned) else mx.zeros_like(v),
                                        group=group) for k, v in params.items()}
    sharp.update(tree_unflatten(list(summed.items())))
    mx.eval(sharp.parameters())
    table = np.zeros((len(sharp.layers), 6), np.float64)
    for r in reports:
        table[r.layer] = [1, r.error_before, r.error_after, r.steps, r.final_loss, r.seconds]
    table = np.array(mx.distributed.all_sum(mx.array(table, dtype=mx.float32), group=group))
    return [TargetReport(int(i), targets[i]._reference[1], float(row[1]), float(row[2]),
                         int(row[3]), float(row[4]), float(row[5]))
            for i, row in enumerate(table) if row[0] > 0]
