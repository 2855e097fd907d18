"""SFT tokens/s of sharp_mlx.finetune vs mlx_lm.lora's trainer, side by side in one run.

Same model (the default SmolLM2), same batch and sequence length, same data windows; mlx_lm.lora
gets rank-r LoRA on the MLPs of the same layers that SHARP replaces. Both compile their step.
Usage: python tools/bench_sft.py [--iters 20] [--batch-size 4] [--seq-len 256] [--plan moderate]
"""

import argparse

from sharp_mlx import data, finetune, models  # isort: split

import mlx.optimizers as optim
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train

from sharp_mlx.plan import parse_plan
from sharp_mlx.sharp import build_sharp, recovery_config


class Capture(TrainingCallback):
    def __init__(self):
        self.reports = []

    def on_train_loss_report(self, info):
        self.reports.append(info)


def bench_sharp(base, config, plan, rank, train_data, valid, args) -> float:
    model, _ = build_sharp(base, config, plan, recovery_config(rank=rank))
    settings = finetune.FinetuneConfig(iters=args.iters, batch_size=args.batch_size,
                                       seq_len=args.seq_len, steps_per_eval=10**9)
    result = finetune.finetune(model, None, train_data, valid, settings, progress=False)
    return result.tokens / result.train_seconds  # like mlx-lm: steps only, compile included


def bench_mlx_lm(base, plan, rank, train_data, args) -> float:
    base.freeze()
    for target in plan.mapping:
        mlp = base.layers[target].mlp
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(mlp, name, LoRALinear.from_base(getattr(mlp, name), r=rank, scale=1.0))
    dataset = [(row.tolist(), 0) for row in train_data.tokens]
    capture = Capture()
    training = TrainingArgs(batch_size=args.batch_size, iters=args.iters,
                            steps_per_report=args.iters, steps_per_eval=10**9,
                            steps_per_save=10**9, max_seq_length=args.seq_len + 1,
                            adapter_file="/tmp/bench_sft_adapters.safetensors")
    train(base, optim.Adam(learning_rate=3e-4), dataset, None, training,
          training_callback=capture)
    return capture.reports[-1]["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--plan", default="moderate")
    args = parser.parse_args()
    base, tokenizer, config, _ = models.load_base(None, dtype="float32")
    plan = parse_plan(args.plan, len(base.layers))
    train_data = data.tokenize(data.load_records("wiki", "train"), tokenizer, args.seq_len,
                               (args.iters + 1) * args.batch_size * args.seq_len)
    valid = data.TokenData(train_data.tokens[:1], train_data.mask[:1])
    ours = bench_sharp(base, config, plan, args.rank, train_data, valid, args)
    theirs = bench_mlx_lm(base, plan, args.rank, train_data, args)
    print(f"SFT, {args.iters} steps of {args.batch_size} x {args.seq_len} tokens, "
          f"LoRA rank {args.rank} on {len(plan.mapping)} layers' MLPs")
    print(f"  sharp_mlx.finetune : {ours:8.1f} tokens/s")
    print(f"  mlx_lm.lora trainer: {theirs:8.1f} tokens/s")
    print(f"  ratio              : {ours / theirs:8.2f}x")


if __name__ == "__main__":
    main()
