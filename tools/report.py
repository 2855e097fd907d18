"""Tables and plots of `tools/study.py`'s measurements -> results/README.md, PNGs, study.json.

Every number written here is read from the measurement files of the study; a model the study
did not get to is shown as "not run".
"""

import json
import math
from pathlib import Path

STAGES = (("direct", "direct sharing"), ("warm", "+ warmup"), ("ce", "+ warmup + SFT CE"),
          ("kd", "+ warmup + SFT KD"))


# ---------------------------------------------------------------- helpers


def ppl(results: dict, name: str, corpus: str = "wiki") -> float | None:
    return results.get(name, {}).get(f"{corpus}_perplexity")


def cell(results: dict, name: str, corpus: str = "wiki", ratio: bool = True) -> str:
    """'33.65 +- 2.1 (2.16x)' or 'not run'."""
    value = ppl(results, name, corpus)
    if value is None:
        return "not run"
    se = results[name][f"{corpus}_perplexity_stderr"]
    text = f"{_num(value)} ± {_num(se)}"
    base = ppl(results, "original", corpus)
    if ratio and base:
        text += f" ({_times(value / base)})"
    return text


def _num(x: float) -> str:
    if x >= 1e4:
        return f"{x:.3g}"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _times(x: float) -> str:
    return f"{x:.2f}x" if x < 100 else f"{x:,.0f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def total_saving(results: dict, name: str) -> float:
    """Parameters saved against the original, percent of the original's parameters (direct
    sharing without its all-zero recovery)."""
    r, o = results[name], results["original"]
    params = r["params_total"] - (r["params_recovery"] if name.endswith("-direct") else 0)
    return 100 * (1 - params / o["params_total"])


def bytes_saving(results: dict, name: str) -> float:
    return 100 * (1 - results[name]["disk_bytes"] / results["original"]["disk_bytes"])


# ---------------------------------------------------------------- sections


def recovery_section(results: dict) -> str:
    rows = []
    for plan, short in (("moderate", "mod"), ("aggressive", "agg")):
        direct = results.get(f"{short}-direct")
        saving = f"{direct['net_mlp_saving_percent']:.1f}%" if direct else "?"
        for corpus, tag in (("wiki", "wiki"), ("chitchat", "chat")):
            row = [f"{plan} ({saving})", corpus, cell(results, "original", corpus, False)]
            row += [cell(results, f"{short}-{stage}", corpus) for stage in ("direct", "warm")]
            row += [cell(results, f"{short}-{tag}-{loss}", corpus) for loss in ("ce", "kd")]
            rows.append(row)
    header = ["plan (net MLP saving)", "test data", "original", *(s for _, s in STAGES)]
    return table(header, rows)


def warmup_errors(results: dict, names: list[str]) -> str:
    rows = []
    for name in names:
        record = results.get(name, {}).get("recovery_record", {}).get("warmup")
        if not record:
            continue
        errors = [t["error_after"] for t in record["targets"]]
        before = [t["error_before"] for t in record["targets"]]
        rows.append([name, len(errors), f"{_mean(before):.3f}", f"{_mean(errors):.3f}",
                     f"{max(errors):.3f}", f"{sum(t['seconds'] for t in record['targets']):.0f}"])
    return table(["model", "targets", "mean rel. error before", "mean after", "worst after",
                  "training s"], rows)


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def comparison(results: dict, pairs: list[tuple[str, str]], corpus: str = "wiki") -> str:
    rows = [[label, name, cell(results, name, corpus)] for label, name in pairs]
    return table(["variant", "model", f"{corpus} test perplexity (x original)"], rows)


def pareto_rows(results: dict) -> list[dict]:
    """Every measured wiki point: method, params saved %, bytes saved %, perplexity."""
    points = []
    for name, r in results.items():
        if "wiki_perplexity" not in r or name.startswith("small-"):
            continue
        points.append({"name": name, "method": method(name), "params_saved": total_saving(
            results, name), "bytes_saved": bytes_saving(results, name),
            "ppl": r["wiki_perplexity"], "se": r["wiki_perplexity_stderr"]})
    return sorted(points, key=lambda p: (p["method"], p["bytes_saved"]))


def method(name: str) -> str:
    if name.startswith("original"):
        return "quantization" if "-q" in name else "original"
    if name.startswith("prune"):
        return "pruning + SFT" if name.endswith("-sft") else "pruning"
    if name.endswith("-direct"):
        return "direct sharing"
    if name.endswith("-folded"):
        return "SHARP folded"
    return "SHARP + quantization" if "-q" in name else "SHARP"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, xlabel: str, title: str) -> None:
    """Log-scale perplexity axis, labels, grid, legend; save and close."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("wiki test perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)


def pareto_plot(points: list[dict], path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 5.5))
    markers = {"original": "*", "quantization": "s", "SHARP": "o", "SHARP + quantization": "D",
               "direct sharing": "x", "pruning": "v", "pruning + SFT": "^", "SHARP folded": "."}
    for kind, marker in markers.items():
        sel = [p for p in points if p["method"] == kind]
        if sel:
            ax.scatter([p["bytes_saved"] for p in sel], [p["ppl"] for p in sel], marker=marker,
                       s=60, label=kind)
            for p in sel:
                ax.annotate(p["name"], (p["bytes_saved"], p["ppl"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    _finish(fig, ax, path, "storage saved vs the original fp16 model (% of weight-file bytes)",
            "SmolLM2-135M: storage saving vs perplexity")


def rank_plot(results: dict, path: Path) -> None:
    ranks = [(r, f"small-r{r}-warm") for r in (1, 16, 64, 256)]
    ranks = [(r, n) for r, n in ranks if ppl(results, n)]
    if not ranks:
        return
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ax.errorbar([r for r, _ in ranks], [ppl(results, n) for _, n in ranks],
                yerr=[results[n]["wiki_perplexity_stderr"] for _, n in ranks], marker="o",
                capsize=3, label="moderate plan, warmup only")
    if ppl(results, "original"):
        ax.axhline(ppl(results, "original"), color="gray", ls="--", label="original")
    ax.set_xscale("log", base=2)
    _finish(fig, ax, path, "LoRA rank (gate, up, down of each target)",
            "Rank sweep after Single Layer Warmup (8,192 tokens x 4 epochs)")


def speed_section(results: dict) -> str:
    rows = []
    for suffix, label in (("", "unquantized"), ("-q8", "8-bit"), ("-q4", "4-bit")):
        base = results.get(f"original{suffix}")
        for short in ("mod-wiki-ce", "agg-wiki-ce"):
            sharp = results.get(f"{short}{suffix}")
            if not base or not sharp or "decode_tok_per_s" not in sharp:
                continue
            ideal = base["disk_bytes"] / sharp["disk_bytes"]
            measured = sharp["decode_tok_per_s"] / base["decode_tok_per_s"]
            rows.append([label, short, f"{base['decode_tok_per_s']:.1f}",
                         f"{sharp['decode_tok_per_s']:.1f}", f"{measured:.2f}x",
                         f"{ideal:.2f}x", f"{100 * (measured / ideal - 1):+.0f}%",
                         f"{sharp['prompt_tok_per_s']:.0f} / {base['prompt_tok_per_s']:.0f}",
                         f"{sharp['peak_memory_gb']:.3f} / {base['peak_memory_gb']:.3f}"])
    for short in ("mod-wiki-ce", "agg-wiki-ce"):
        folded, base = results.get(f"{short}-folded"), results.get("original")
        if folded and base and "decode_tok_per_s" in folded:
            rows.append(["folded (unquantized)", f"{short}-folded",
                         f"{base['decode_tok_per_s']:.1f}", f"{folded['decode_tok_per_s']:.1f}",
                         f"{folded['decode_tok_per_s'] / base['decode_tok_per_s']:.2f}x",
                         f"{base['disk_bytes'] / folded['disk_bytes']:.2f}x", "",
                         f"{folded['prompt_tok_per_s']:.0f} / {base['prompt_tok_per_s']:.0f}",
                         f"{folded['peak_memory_gb']:.3f} / {base['peak_memory_gb']:.3f}"])
    return table(["weights", "SHARP model", "original decode tok/s", "SHARP decode tok/s",
                  "speed ratio", "ideal ratio (bytes)", "gap to ideal",
                  "prompt tok/s SHARP / original", "peak GB SHARP / original"], rows)


def pareto_table(points: list[dict]) -> str:
    rows = [[p["method"], p["name"], f"{p['params_saved']:.1f}%", f"{p['bytes_saved']:.1f}%",
             f"{_num(p['ppl'])} ± {_num(p['se'])}"] for p in points]
    return table(["method", "model", "parameters saved", "bytes saved", "wiki perplexity"],
                 rows)


def prune_section(results: dict) -> str:
    rows = []
    for short in ("mod", "agg"):
        pruned = results.get(f"prune-{short}", {}).get("prune_record")
        if not pruned:
            continue
        sft = results.get(f"prune-{short}-sft", {}).get("prune_record", {}).get("sft", {})
        rows.append([f"prune-{short}", ", ".join(map(str, pruned["removed_layers"])),
                     f"{pruned['saved_params']:,}", f"{pruned.get('matched_saving_params', 0):,}",
                     cell(results, f"prune-{short}"), cell(results, f"prune-{short}-sft"),
                     f"rank {sft.get('lora_rank', '?')}, {sft.get('trainable_params', 0):,}"])
    return table(["pruned model", "layers removed (ShortGPT BI)", "params saved",
                  "SHARP plan saves (net)", "wiki ppl, no training", "wiki ppl + SFT",
                  "SFT LoRA (all MLPs)"], rows)


def lm_eval_section(results: dict) -> str:
    rows = []
    for name, r in results.items():
        task = r.get("lm_eval", {}).get("sharp_chitchat_reply")
        if task:
            rows.append([name, task["sample_len"],
                         f"{task['acc,none']:.3f} ± {task['acc_stderr,none']:.3f}",
                         f"{task['acc_norm,none']:.3f} ± {task['acc_norm_stderr,none']:.3f}"])
    if not rows:
        return ("not run in this study (needs `pip install -e '.[eval]'`; on this CPU the "
                "real model needed ~25-35 s per lm-eval progress step, ~20 min a model: stopped).")
    return table(["model", "items", "acc", "acc_norm"], rows)


# ---------------------------------------------------------------- the document


def write_report(results: dict, timings: dict, out: Path, machine: dict, eval_tokens: int
                 ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    points = pareto_rows(results) if "original" in results else []
    if points:
        pareto_plot(points, out / "pareto.png")
    rank_plot(results, out / "rank_sweep.png")
    doc = document(results, timings, machine, eval_tokens, points)
    (out / "README.md").write_text(doc)
    (out / "study.json").write_text(json.dumps(
        {"machine": machine, "build_seconds": timings, "eval_tokens": eval_tokens,
         "models": results}, indent=1, default=str))
    print(f"wrote {out / 'README.md'}")


LAYER_ROWS = [("later layers (moderate)", "small-r64-warm"), ("earlier layers", "small-early-warm")]
KIND_ROWS = [("vectors (6,336 / target)", "small-vectors-warm"),
             ("LoRA r1 (6,336 / target)", "small-r1-warm"),
             ("LoRA r63 + vectors (405,504 / target)", "small-lv63-warm"),
             ("LoRA r64 (405,504 / target)", "small-r64-warm")]
SFT_ROWS = [("30 steps, lr 3e-4 (the recipe)", "mod-wiki-ce"),
            ("30 steps, lr 1e-3", "mod-wiki-ce-lr1e-3")]
RANK_ROWS = [(f"rank {k}", f"small-r{k}-warm") for k in (1, 16, 64, 256)]


def ratio(results: dict, name: str, corpus: str = "wiki") -> float | None:
    value, base = ppl(results, name, corpus), ppl(results, "original", corpus)
    return value / base if value and base else None


def verdict(results: dict, a: str, b: str, corpus: str = "wiki") -> str:
    """'a is lower than b (x vs y; difference z standard errors)' from the measurements."""
    if not ppl(results, a, corpus) or not ppl(results, b, corpus):
        return f"not measured ({a} or {b} not run)"
    pa, pb = ppl(results, a, corpus), ppl(results, b, corpus)
    se = math.hypot(results[a][f"{corpus}_perplexity_stderr"],
                    results[b][f"{corpus}_perplexity_stderr"])
    word = "lower" if pa < pb else "higher"
    return (f"`{a}` {_num(pa)} is {word} than `{b}` {_num(pb)} "
            f"({abs(pa - pb) / se:.1f} combined standard errors apart)")


def targets(results: dict) -> str:
    lines = []
    for short, plan, goal in (("mod", "moderate", 1.10), ("agg", "aggressive", 1.30)):
        cells = {n: ("wiki" if "-wiki-" in n else "chitchat") for n in results
                 if n.startswith((f"{short}-wiki-", f"{short}-chat-"))
                 and not n.endswith(("-q4", "-q8", "-folded"))}
        saving = results.get(f"{short}-direct", {}).get("net_mlp_saving_percent", float("nan"))
        for corpus in ("wiki", "chitchat"):
            got = {n: ratio(results, n, c) for n, c in cells.items()
                   if c == corpus and ratio(results, n, c)}
            if not got:
                lines.append(f"- {plan}, {corpus}: not measured.")
                continue
            best = min(got, key=got.get)
            verdict_text = ("met." if got[best] <= goal else
                            f"missed by {got[best] - goal:.2f}x "
                            f"({got[best] / goal:.2f} times the allowed ratio).")
            lines.append(f"- {plan} ({saving:.1f}% net MLP saving), {corpus}: target <= "
                         f"{goal:.2f}x; best measured {got[best]:.2f}x (`{best}`): {verdict_text}")
    return "\n".join(lines)


def document(results: dict, timings: dict, machine: dict, eval_tokens: int,
             points: list[dict]) -> str:
    r = results
    auto_plan = ""
    if (plan := r.get("auto-direct", {}).get("recovery_record", {}).get("plan")):
        auto_plan = "`auto` plan (target: reference): " + ", ".join(
            f"{t}:{s}" for t, s in plan.items())
    speed_note = ""
    folded, base = r.get("mod-wiki-ce-folded", {}), r.get("original", {})
    if "decode_tok_per_s" in folded and "decode_tok_per_s" in base:
        control = folded["decode_tok_per_s"] / base["decode_tok_per_s"]
        own = r.get("mod-wiki-ce", {}).get("decode_tok_per_s")
        speed_note += (f"Control: the folded model has the original's size and compute and "
                       f"measured {control:.2f}x the original's decode speed, so differences "
                       f"of that size are run-to-run noise on this machine. ")
        if own:
            speed_note += (f"SHARP vs its own folded twin (the cost of computing recovery "
                           f"apart): {own / folded['decode_tok_per_s']:.2f}x. ")
    if r.get("original", {}).get("device") == "cpu":
        speed_note += ("Measured on the CPU, where unquantized models compute in float32 "
                      "(MLX's CPU fp16 matmul is ~20x slower); decode here is not the "
                      "bandwidth-bound regime of a phone or a Mac GPU, so these ratios say "
                      "little about Metal.")
    timing_rows = [[k, f"{v:.0f}"] for k, v in timings.items()]
    return f"""# Results: SHARP on SmolLM2-135M-Instruct

Written by `python tools/study.py` (models and measurements cached in `results/work/`; the
report alone: `python tools/study.py --report-only`). Every number below comes from that run.

- Machine: {machine['platform']}, {machine['cpus']} CPUs, MLX device `{machine['device']}`,
  mlx {machine['mlx']}, mlx-lm {machine['mlx_lm']}; commit `{machine['commit']}`;
  {machine['date']}.
- Model: the pinned SmolLM2-135M-Instruct (30 layers, 134.5M parameters, 79.6M in MLPs).
- Perplexity: test split, the first {eval_tokens:,} loss tokens in windows of 512 (wiki:
  packed text; chitchat: one chat per window, padded, loss from the first assistant turn on),
  mean over tokens ± standard error over windows; "(Nx)": ratio to the original, same data.
- Recipe (`convert --recipe default`'s stages): LoRA rank 64 on gate/up/down of each replaced
  layer, SVD start; Single Layer Warmup on 32,768 wiki train tokens x 4 epochs (lr 3e-3,
  cosine); SFT 30 steps of 4 x 256 tokens (lr 3e-4), cross-entropy (CE) or distillation from
  the original (KD, KL at T = 2). Chitchat SFT starts from the wiki warmup.

## 1. Recovery: original, direct sharing, warmup, SFT

{recovery_section(r)}

Targets of the recovery issue:
{targets(r)}

A higher SFT learning rate (moderate, wiki, CE, from the same warmup):

{comparison(r, SFT_ROWS)}

Single Layer Warmup, relative error of each replaced MLP's output on held-out tokens:

{warmup_errors(r, ['mod-warm', 'mod-seq-warm', 'agg-warm', 'agg-seq-warm', 'auto-warm'])}

## 2. Storage saving vs perplexity (Pareto)

![pareto](pareto.png)

{pareto_table(points)}

"parameters saved" counts direct sharing without its all-zero recovery; "bytes saved" are
weight-file bytes against the original fp16 directory (quantized files include their scales).

## 3. Layer pruning with the same budget

ShortGPT: remove the whole layers of lowest Block Influence whose parameters best match the
SHARP plan's net saving. "+ SFT": LoRA on every remaining MLP with the SHARP model's recovery
parameter count, the same 30 steps, batch, sequence length, learning-rate schedule and data,
trained by mlx-lm's LoRA trainer and fused (pruning has no counterpart of the warmup).

{prune_section(r)}

## 4. Ablations

Warmup-only models of the `moderate` plan at a quarter of the warmup tokens (8,192 x 4 epochs),
each against its own rank-64 baseline at that budget.

**Later vs earlier layers** (9 pairs each: `moderate` = layers 10-27, `pairs:0-17` = 0-17):
{verdict(r, 'small-r64-warm', 'small-early-warm')}.

{comparison(r, LAYER_ROWS)}

**Recovery kinds at matched parameter counts** (vectors = per-channel input and output
scales, exactly the parameters of LoRA rank 1; LoRA rank 63 + vectors = LoRA rank 64):
{verdict(r, 'small-vectors-warm', 'small-r1-warm')};
{verdict(r, 'small-lv63-warm', 'small-r64-warm')}.

{comparison(r, KIND_ROWS)}

**Rank sweep**:

![rank sweep](rank_sweep.png)

{comparison(r, RANK_ROWS)}

**Warmup only vs + SFT** (full recipe): moderate: {verdict(r, 'mod-wiki-ce', 'mod-warm')};
aggressive: {verdict(r, 'agg-wiki-ce', 'agg-warm')}.

**Cross-entropy vs distillation** (same 30 steps): wiki moderate:
{verdict(r, 'mod-wiki-ce', 'mod-wiki-kd')}; wiki aggressive:
{verdict(r, 'agg-wiki-ce', 'agg-wiki-kd')}; chitchat moderate:
{verdict(r, 'mod-chat-ce', 'mod-chat-kd', 'chitchat')}; chitchat aggressive:
{verdict(r, 'agg-chat-ce', 'agg-chat-kd', 'chitchat')}.

**Sequential vs independent warmup** (`--sequential`: each target's input comes from the
already-converted model): moderate: {verdict(r, 'mod-seq-warm', 'mod-warm')}; aggressive:
{verdict(r, 'agg-seq-warm', 'agg-warm')}.

**`--plan auto` at the aggressive budget vs `aggressive`** (same saving, same warmup):
direct: {verdict(r, 'auto-direct', 'agg-direct')}; after warmup:
{verdict(r, 'auto-warm', 'agg-warm')}. {auto_plan}

`python -m sharp_mlx.analyze`'s measurements behind the `auto` plan (2,048 wiki train tokens):

![layer analysis](layers.png)

## 5. Decode speed vs the ideal ratio

{speed_section(r)}

"ideal ratio" = original weight bytes / SHARP weight bytes: the speed-up a purely
bandwidth-bound decoder would get if every unique byte were read once per token. A shared MLP
is still applied once per layer that uses it, so its weights are read again unless they stay in
cache; the folded rows run the same function with per-layer weights (the original's size and
compute). {speed_note}

## 6. lm-eval through stock `mlx_lm.evaluate --trust-remote-code`

The local task of `tools/lm_eval_tasks.py` (no hub): for a chitchat test chat, pick the true
next reply among 4 (chance 0.25), the first 50 items, 0-shot, plain text (no chat
template); ± is lm-eval's standard error.

{lm_eval_section(r)}

## 7. Wall time of each build step (seconds)

{table(['model', 'seconds'], timing_rows)}

## Not shown here

- No Apple hardware: nothing here was measured on Metal or an iPhone.
- One small model (135M); 30 SFT steps per run on 2 CPU cores; perplexity on {eval_tokens:,}
  test tokens. Longer SFT, larger models and lm-eval tasks are not part of this run.
"""
