"""The study: SHARP against direct sharing, layer pruning and quantization, on the default model.

One command builds every model (through the same CLIs a user runs), measures it with
`sharp_mlx.evaluate`, and writes `results/README.md`, its PNG plots and `results/study.json`:

    python tools/study.py                 # everything, resuming what is already in --work
    python tools/study.py --report-only   # rewrite the report from the measurements on disk

Models and measurements are cached under `--work` (default results/work, not committed): a step
whose output exists is skipped, so an interrupted study continues where it stopped. Delete the
folder to start from nothing. Steps run in order of importance, so a study cut short still has
the main table. Every number in the report is read from the measurements of this run.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sharp_mlx import evaluate, finetune, models  # isort: split

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from sharp_mlx.sharp_model import MLP_MATRICES

ROOT = Path(__file__).resolve().parent.parent
PY = [sys.executable, "-m"]
SFT = dict(iters=30)  # the default recipe's SFT budget (convert --recipe default)


# ---------------------------------------------------------------- what gets built


def convert(plan: str, *flags: str) -> list[str]:
    return [*PY, "sharp_mlx.convert", "--plan", plan, *flags]


def sft(model: str, data_name: str, loss: str, *flags: str) -> list[str]:
    return [*PY, "sharp_mlx.finetune", "--model", model, "--data", data_name,
            "--iters", str(SFT["iters"]), "--loss", loss, *flags]


WARM = ("--warmup", "--data", "wiki")  # the recipe's warmup: 32k wiki tokens x 4 epochs
SMALL = (*WARM, "--warmup-tokens", "8192")  # the ablations' warmup


def steps(work: Path) -> list[tuple[str, object]]:
    """(model name, how to build it) in order of importance; a list is a CLI taking -o."""
    w = lambda name: str(work / name)  # noqa: E731
    out = [("original", [*PY, "sharp_mlx.convert", "--plan", "none"])]
    for plan, short in (("aggressive", "agg"), ("moderate", "mod")):
        out += [
            (f"{short}-direct", convert(plan, "--init", "zero")),
            (f"{short}-warm", convert(plan, *WARM)),
        ]
        for corpus, tag in (("wiki", "wiki"), ("chitchat", "chat")):
            for loss in ("ce", "kd"):
                out.append((f"{short}-{tag}-{loss}", sft(w(f"{short}-warm"), corpus, loss)))
    out += [
        ("mod-seq-warm", convert("moderate", *WARM, "--sequential")),
        ("auto-plan", lambda: auto_plan(work)),
        ("auto-direct", convert(str(work / "auto-plan" / "plan.json"), "--init", "zero")),
        ("auto-warm", convert(str(work / "auto-plan" / "plan.json"), *WARM)),
        ("prune-mod", [*PY, "sharp_mlx.prune", "--match-plan", w("mod-direct")]),
        ("prune-agg", [*PY, "sharp_mlx.prune", "--match-plan", w("agg-direct")]),
        ("prune-mod-sft", lambda: prune_sft(work, "prune-mod", "mod-direct")),
        ("prune-agg-sft", lambda: prune_sft(work, "prune-agg", "agg-direct")),
        ("original-q8", lambda: quantize(work, "original", 8)),
        ("original-q4", lambda: quantize(work, "original", 4)),
        ("mod-wiki-ce-q8", lambda: quantize(work, "mod-wiki-ce", 8)),
        ("mod-wiki-ce-q4", lambda: quantize(work, "mod-wiki-ce", 4)),
        ("agg-wiki-ce-q8", lambda: quantize(work, "agg-wiki-ce", 8)),
        ("agg-wiki-ce-q4", lambda: quantize(work, "agg-wiki-ce", 4)),
        ("mod-wiki-ce-folded", lambda: fold(work, "mod-wiki-ce")),
        ("agg-wiki-ce-folded", lambda: fold(work, "agg-wiki-ce")),
        ("speed", lambda: measure_speed(work)),
        # ablations at a quarter of the warmup tokens (8,192 x 4 epochs), each with its own
        # rank-64 baseline at that budget; recovery kinds at matched parameters: vectors ==
        # LoRA rank 1 (6,336 per target), LoRA rank 63 + vectors == LoRA rank 64 (405,504)
        ("small-r64-warm", convert("moderate", *SMALL)),
        ("small-early-warm", convert("pairs:0-17", *SMALL)),
        ("small-vectors-warm", convert("moderate", *SMALL, "--recovery", "vectors")),
        ("small-r1-warm", convert("moderate", *SMALL, "--rank", "1")),
        ("small-r256-warm", convert("moderate", *SMALL, "--rank", "256")),
        ("lm-eval", lambda: measure_lm_eval(work)),
        ("small-lv63-warm", convert("moderate", *SMALL, "--recovery", "lora+vectors",
                                    "--rank", "63")),
        ("small-r16-warm", convert("moderate", *SMALL, "--rank", "16")),
        # the recipe's 30 SFT steps at a higher learning rate
        ("mod-wiki-ce-lr1e-3", sft(w("mod-warm"), "wiki", "ce", "--learning-rate", "1e-3")),
    ]
    return out


def auto_plan(work: Path) -> None:
    """analyze --suggest at exactly the aggressive plan's net saving."""
    record = json.loads((work / "agg-direct" / "sharp_recovery.json").read_text())
    budget = record["accounting"]["net_mlp_saving_percent"] / 100
    out = work / "auto-plan.tmp"
    out.mkdir(exist_ok=True)
    run([*PY, "sharp_mlx.analyze", "--suggest", "--budget", f"{budget:.6f}",
         "-o", str(out / "plan.json"), "--png", str(out / "layers.png"),
         "--json", str(out / "analysis.json")])
    out.rename(work / "auto-plan")


def quantize(work: Path, source: str, bits: int) -> None:
    run([sys.executable, str(ROOT / "tools" / "quantize.py"), "--model", str(work / source),
         "-o", str(work / f"{source}-q{bits}"), "--q-bits", str(bits)])


def fold(work: Path, source: str) -> None:
    """Recovery folded into per-layer weights: a plain model of the original's size that
    computes what the SHARP model computes (what folding at load time would run)."""
    from sharp_mlx.sharp import fold_recovery

    model, _, config, path = models.load_base(str(work / source), dtype="float32")
    plain, plain_config = fold_recovery(model, config)
    models.cast(plain, mx.float16)
    with models.atomic_directory(work / f"{source}-folded") as tmp:
        models.save_model_dir(tmp, plain, plain_config, path)


def prune_sft(work: Path, pruned: str, matched: str) -> None:
    """The pruned model gets the SFT budget of SHARP's recipe: LoRA on every remaining MLP with
    as many parameters as the matched SHARP model's recovery, same steps, batch, sequence length,
    learning-rate schedule and data; trained by mlx-lm's own LoRA trainer, then fused."""
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.tuner.trainer import TrainingArgs, train

    model, tokenizer, config, path = models.load_base(str(work / pruned), dtype="float32")
    sharp = json.loads((work / matched / "sharp_recovery.json").read_text())
    budget = sharp["accounting"]["recovery_params"]
    per_rank = sum(sum(getattr(layer.mlp, m).weight.shape) for layer in model.layers
                   for m in MLP_MATRICES)
    rank = max(1, round(budget / per_rank))
    model.freeze()
    for layer in model.layers:
        for name in MLP_MATRICES:
            setattr(layer.mlp, name, LoRALinear.from_base(getattr(layer.mlp, name), r=rank))
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    settings = finetune.FinetuneConfig(iters=SFT["iters"])
    train_data, valid = finetune.load_sft_data(tokenizer, settings)
    mx.random.seed(settings.seed)
    np.random.seed(settings.seed)
    args = TrainingArgs(batch_size=settings.batch_size, iters=settings.iters,
                        steps_per_report=10, steps_per_eval=settings.iters,
                        steps_per_save=10**9, max_seq_length=settings.seq_len + 1,
                        adapter_file=str(work / f"{pruned}-adapters.safetensors"))
    schedule = finetune.warmup_cosine(settings.learning_rate, settings.iters,
                                      settings.warmup_steps)
    rows = lambda d: [(r.tolist(), 0) for r in d.tokens]  # noqa: E731
    train(model, optim.Adam(learning_rate=schedule), rows(train_data), rows(valid), args)
    for layer in model.layers:
        for name in MLP_MATRICES:
            setattr(layer.mlp, name, getattr(layer.mlp, name).fuse())
    model.unfreeze()
    config = {**config, "sharp_prune": {**config["sharp_prune"], "sft": {
        "trainer": "mlx_lm.tuner.trainer", "lora_rank": rank, "trainable_params": trainable,
        "matched_recovery_params": budget, **{k: getattr(settings, k) for k in (
            "iters", "batch_size", "seq_len", "learning_rate", "warmup_steps", "data")}}}}
    models.cast(model, mx.float16)
    with models.atomic_directory(work / f"{pruned}-sft") as tmp:
        models.save_model_dir(tmp, model, config, path)


# ---------------------------------------------------------------- running and measuring


def run(command: list[str]) -> None:
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def build(work: Path, name: str, how) -> float:
    """Build one model unless it exists; returns the wall seconds spent."""
    if (work / name).exists():
        return 0.0
    start = time.perf_counter()
    if callable(how):
        how()
    else:
        run([*how, "-o", str(work / name)])
    return time.perf_counter() - start


CHITCHAT = {"original", "mod-direct", "mod-warm", "mod-chat-ce", "mod-chat-kd",
            "agg-direct", "agg-warm", "agg-chat-ce", "agg-chat-kd"}
SPEED = {"original", "original-q4", "mod-wiki-ce", "mod-wiki-ce-q4", "agg-wiki-ce",
         "agg-wiki-ce-q4", "mod-wiki-ce-folded", "agg-wiki-ce-folded"}


def measure(work: Path, name: str, eval_tokens: int) -> None:
    """Perplexity of one model, cached as JSON (speed is measured apart: measure_speed)."""
    file = work / "evals" / f"{name}.json"
    if file.exists() or not (work / name / "config.json").exists():
        return
    names = ["chitchat"] if name in CHITCHAT else []
    if "-chat-" not in name:
        names.insert(0, "wiki")
    if name.endswith(("-q4", "-q8")):
        result = measure_dequantized(work / name, names, eval_tokens)
    else:
        result = evaluate.evaluate_model(str(work / name), names, max_tokens=eval_tokens,
                                         speed=False)
    file.parent.mkdir(exist_ok=True)
    file.write_text(json.dumps(result, indent=1))
    print(f"measured {name}: " + ", ".join(
        f"{d} ppl {result[f'{d}_perplexity']:.2f}" for d in names), flush=True)


def measure_dequantized(path: Path, names: list[str], eval_tokens: int) -> dict:
    """Perplexity of a quantized model computed with its dequantized weights in float32: the
    same function (MLX's CPU quantized matmul made a 4,096-token evaluation take minutes)."""
    config = json.loads((path / "config.json").read_text())
    start = time.perf_counter()
    model, tokenizer, _, _ = models.load(str(path), dequantize=True)
    models.use_float32_on_cpu(model)
    mx.eval(model.parameters())
    result = {"model": str(path), "name": path.name, "disk_bytes": evaluate.disk_bytes(path),
              "load_time_s": round(time.perf_counter() - start, 3),
              "perplexity_from": "dequantized weights, float32"}
    result.update(evaluate.measure_model(model, tokenizer, config, names,
                                         max_tokens=eval_tokens, speed=False))
    return result


def measure_speed(work: Path, repeats: int = 3) -> None:
    """Decode and prompt speed of the SPEED models back to back, nothing else running."""
    out = work / "speed"
    tmp = work / "speed.tmp"
    tmp.mkdir(exist_ok=True)
    for name in sorted(SPEED):
        if (work / name / "config.json").exists():
            result = evaluate.evaluate_model(str(work / name), [], speed=True, repeats=repeats)
            (tmp / f"{name}.json").write_text(json.dumps(result, indent=1))
            print(f"speed {name}: decode {result['decode_tok_per_s']:.1f} tok/s", flush=True)
    tmp.rename(out)


LM_EVAL = ("original", "mod-wiki-ce")


def measure_lm_eval(work: Path, limit: int = 50) -> None:
    """stock `mlx_lm.evaluate --trust-remote-code` on the local chitchat-reply task."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        print("lm-eval is not installed (pip install -e '.[eval]'): skipping mlx_lm.evaluate")
        return
    sys.path.insert(0, str(ROOT / "tools"))
    from lm_eval_tasks import write_tasks

    tasks = work / "lm_eval_tasks"
    if not tasks.exists():
        write_tasks(tasks)
    for name in LM_EVAL:
        file = work / "lm-eval.tmp" / f"{name}.json"
        if file.exists() or not (work / name / "config.json").exists():
            continue
        out = work / "lm-eval.tmp" / f"{name}.out"
        print(f"$ mlx_lm.evaluate --model {work / name} ...", flush=True)
        subprocess.run([*PY, "mlx_lm", "evaluate", "--model", str(work / name),
                        "--trust-remote-code", "--tasks", "sharp_chitchat_reply.yaml",
                        "--no-apply-chat-template",
                        "--limit", str(limit), "--seed", "0", "--output-dir", str(out)],
                       check=True, cwd=tasks, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        (written,) = out.glob("eval_*")
        file.write_text(written.read_text())
    (work / "lm-eval.tmp").rename(work / "lm-eval")


# ---------------------------------------------------------------- the report


def load_results(work: Path) -> dict[str, dict]:
    results = {}
    for file in sorted((work / "evals").glob("*.json")):
        results[file.stem] = json.loads(file.read_text())
    for file in sorted((work / "speed").glob("*.json")):  # measured side by side at the end
        speed = json.loads(file.read_text())
        results.setdefault(file.stem, speed).update(
            {k: speed[k] for k in evaluate.SPEED_KEYS if k in speed})
    for name, result in results.items():
        record = work / name / "sharp_recovery.json"
        if record.exists():
            result["recovery_record"] = json.loads(record.read_text())
        lm_eval = work / "lm-eval" / f"{name}.json"
        if lm_eval.exists():
            result["lm_eval"] = json.loads(lm_eval.read_text())
        prune = json.loads((work / name / "config.json").read_text()).get("sharp_prune")
        if prune:
            result["prune_record"] = prune
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated steps to build (debugging)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    timings_file = args.work / "build_seconds.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    if not args.report_only:
        only = set(filter(None, args.only.split(",")))
        for name, how in steps(args.work):
            if only and name not in only:
                continue
            seconds = build(args.work, name, how)
            if seconds:
                timings[name] = round(seconds, 1)
                timings_file.write_text(json.dumps(timings, indent=1))
            measure(args.work, name, args.eval_tokens)
    from report import write_report  # tools/report.py: tables and plots from the measurements

    heatmap = args.work / "auto-plan" / "layers.png"
    if heatmap.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(heatmap, args.out / "layers.png")

    write_report(load_results(args.work), timings, args.out, machine(), args.eval_tokens)


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "sharp_mlx", "tools"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import mlx_lm

    return {"commit": commit + ("+uncommitted" if dirty else ""),
            "platform": platform.platform(), "processor": platform.machine(),
            "cpus": os.cpu_count(), "device": mx.default_device().type.name,
            "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    main()
