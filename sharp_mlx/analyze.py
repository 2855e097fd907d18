"""How alike are adjacent layers, and which MLPs can share: `python -m sharp_mlx.analyze`.

On calibration tokens (`--data`, train split, `--tokens`) it measures, from one forward pass of
the original model:

- the cosine similarity of every pair of layer outputs (hidden states), averaged over tokens, and
  each layer's input/output cosine (ShortGPT's Block Influence is 1 minus it);
- the relative replacement error of layer t's MLP by layer r's, for all |t - r| <= `--distance`,
  on layer t's actual MLP inputs x_t (the post-attention-norm hidden states):

      error(t, r) = sum ||MLP_r(x_t) - MLP_t(x_t)||^2 / sum ||MLP_t(x_t)||^2   (sums over tokens)

  so error(t, t) = 0, and 1 is as far off as predicting zero; and the same error relative to
  the layer's output (`--normalize residual`: sum ||MLP_r(x_t) - MLP_t(x_t)||^2 / sum ||h_t||^2,
  the MLP error times the MLP's share of the residual stream);
- with `--rank-by svd` (or `--rank-study`) also the error after the SVD initialisation of a
  rank-r LoRA (`sharp.low_rank_factors` of W_t - W_r per recovered matrix, as `convert --init svd`
  starts from).

It prints a table, draws a PNG heatmap (`--png`), writes everything as JSON (`--json`), and with
`--suggest --budget F -o plan.json` writes an `auto` plan: the targets and references that
minimise the summed measured error subject to net MLP saving >= F (net of the recovery
parameters, `accounting.account_model`). The search is exact: a net saving >= F needs at least
m targets (every target saves the same), and the cheapest valid plan of exactly m targets is
found by dynamic programming over the layers whose state is the target/keep status of the last
2k layers (k = distance): a target's cost is its smallest error to a kept layer within k, which
is fixed once the k layers after it are decided. `--rank-study` measures, for every candidate
pair alone, the rise in NLL on held-out tokens with direct sharing and with the SVD start, and
reports how well each error ranks them (Spearman).

Measured on SmolLM2-135M-Instruct (2048 wiki calibration tokens, distance 1, LoRA rank 64; NLL
rise of each of the 58 single replacements on 1024 held-out tokens), Spearman rank correlation
of each error with the NLL rise it predicts:

| error | vs direct-sharing rise | vs SVD-start rise |
|---|---|---|
| raw, relative to the MLP output | -0.230 | -0.370 |
| raw, relative to the layer output | +0.785 | +0.663 |
| SVD start, relative to the MLP output | -0.621 | -0.434 |
| SVD start, relative to the layer output | +0.788 | +0.687 |

Relative to the MLP output the error ranks pairs *backwards* (layer 0 looks cheap and costs +7.5
NLL), so plans rank by the layer-output error by default; the SVD start ranks its own outcome
slightly better than the raw error does (+0.687 vs +0.663).
"""

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import data, evaluate, models
from .accounting import account_model
from .cli import run_cli
from .plan import SharingPlan
from .sharp import dense_weight, fold_recovery, low_rank_factors, recovery_config
from .sharp_model import MLP_MATRICES, RECOVERY_KINDS, check_base_type

RANK_BY = ("raw", "svd")
NORMALIZE = ("mlp", "residual")


@dataclass
class LayerAnalysis:
    """Similarity of a model's layers measured on calibration tokens."""

    tokens: int
    distance: int
    cosine: np.ndarray  # (L, L): mean cosine similarity of layer i's and layer j's outputs
    io_cosine: np.ndarray  # (L,): mean cosine similarity of each layer's input and output
    errors: np.ndarray  # (L, L): error[t, r] replacing t's MLP by r's; nan where |t-r| > distance
    mlp_share: np.ndarray  # (L,): sum ||MLP_t(x_t)||^2 / sum ||h_t||^2, h_t the layer's output
    svd_errors: np.ndarray | None = None  # the same after the SVD-initialised LoRA
    svd_rank: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.io_cosine)

    @property
    def block_influence(self) -> np.ndarray:
        """ShortGPT's Block Influence: 1 - mean cosine(layer input, layer output)."""
        return 1 - self.io_cosine

    def matrix(self, rank_by: str = "raw", normalize: str = "mlp") -> np.ndarray:
        """error[t, r] relative to ||MLP_t(x_t)||^2 (normalize "mlp") or to the layer output's
        ||h_t||^2 ("residual": how much of the residual stream the replacement disturbs)."""
        if rank_by not in RANK_BY:
            raise ValueError(f"unknown rank_by {rank_by!r}; use one of {RANK_BY}")
        if normalize not in NORMALIZE:
            raise ValueError(f"unknown normalize {normalize!r}; use one of {NORMALIZE}")
        matrix = self.errors
        if rank_by == "svd":
            if self.svd_errors is None:
                raise ValueError("this analysis has no SVD errors; measure with svd_recovery")
            matrix = self.svd_errors
        return matrix * self.mlp_share[:, None] if normalize == "residual" else matrix

    def candidates(self, rank_by: str = "raw", normalize: str = "mlp"
                   ) -> dict[tuple[int, int], float]:
        """{(target, reference): error} for every measured pair with target != reference."""
        matrix = self.matrix(rank_by, normalize)
        return {(int(t), int(r)): float(matrix[t, r])
                for t, r in zip(*np.nonzero(~np.isnan(matrix)), strict=True) if t != r}

    def to_json(self) -> dict:
        def rows(a):
            return None if a is None else [[None if math.isnan(x) else round(float(x), 6)
                                            for x in row] for row in a]

        return {
            "tokens": self.tokens, "distance": self.distance, "num_layers": self.num_layers,
            "cosine": rows(self.cosine), "io_cosine": [round(float(x), 6) for x in self.io_cosine],
            "block_influence": [round(float(x), 6) for x in self.block_influence],
            "errors": rows(self.errors), "svd_errors": rows(self.svd_errors),
            "svd_rank": self.svd_rank, "mlp_share": [round(float(x), 6) for x in self.mlp_share],
        }


# ---------------------------------------------------------------- measuring


def calibration_data(name: str, tokenizer, tokens: int, seq_len: int = 512, split: str = "train"
                     ) -> data.TokenData:
    """Calibration windows: at most `tokens` tokens of a data set's split."""
    seq_len = min(seq_len, tokens)
    return data.tokenize(data.load_records(name, split), tokenizer, seq_len, tokens)


@contextlib.contextmanager
def recording(modules: list[nn.Module], store: list):
    """While active, every call of modules[i] stores (input, output) in store[i].

    Works on any architecture: each instance's class is swapped for a subclass whose
    `__call__` records, and swapped back on exit.
    """
    classes = [m.__class__ for m in modules]

    def recorder(i: int, cls: type) -> type:
        def __call__(self, x, *args, **kwargs):
            out = cls.__call__(self, x, *args, **kwargs)
            store[i] = (x, out)
            return out

        return type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})

    try:
        for i, (module, cls) in enumerate(zip(modules, classes, strict=True)):
            module.__class__ = recorder(i, cls)
        yield store
    finally:
        for module, cls in zip(modules, classes, strict=True):
            module.__class__ = cls


def _unit(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class LowRankMLP(nn.Module):
    """Layer t's MLP replaced by layer r's plus a LoRA (a, b) per recovered matrix: what a SHARP
    target computes (`SharedMLP` with kind lora); used to measure candidates without building
    a SHARP model."""

    def __init__(self, reference: nn.Module, factors: dict, scale: float = 1.0):
        super().__init__()
        object.__setattr__(self, "_parts", (reference, factors, scale))  # not parameters

    def __call__(self, x: mx.array) -> mx.array:
        from mlx_lm.models.activations import swiglu

        reference, factors, scale = self._parts

        def project(name, h):
            y = getattr(reference, name)(h)
            if name in factors:
                a, b = factors[name]
                y = y + scale * ((h @ a) @ b)
            return y

        return project("down_proj", swiglu(project("gate_proj", x), project("up_proj", x)))


def model_type(model: nn.Module) -> str | None:
    args = getattr(model, "args", None)
    return getattr(model, "model_type", None) or getattr(args, "model_type", None)


def svd_factors(target_mlp: nn.Module, reference_mlp: nn.Module, recovery: dict) -> dict:
    """{matrix: (a, b)}: the SVD start of a LoRA replacing target's matrices by reference's."""
    if "lora" not in recovery["kind"]:
        return {}
    factors = {}
    for name in recovery["matrices"]:
        delta = dense_weight(getattr(target_mlp, name)) - dense_weight(getattr(reference_mlp, name))
        factors[name] = low_rank_factors(delta, recovery["rank"], recovery["scale"])
    mx.eval(factors)
    return factors


def analyze_layers(model: nn.Module, token_data: data.TokenData, distance: int = 1,
                   batch_size: int = 4, svd_recovery: dict | None = None) -> LayerAnalysis:
    """Measure hidden-state similarities and MLP replacement errors (see the module doc).

    distance 0 measures the cosines only. `svd_recovery` (a recovery config with LoRA) also
    measures every pair's error after its SVD start of that rank.
    """
    layers = list(model.layers)
    num_layers = len(layers)
    if any(hasattr(layer.mlp, "project") for layer in layers):
        raise ValueError("analyze a plain model: fold a SHARP model first (sharp.fold_recovery)")
    pairs = [(t, r) for t in range(num_layers) for r in range(num_layers)
             if t != r and abs(t - r) <= distance]
    factors = {}
    if svd_recovery is not None:
        check_base_type(model_type(model))  # the SVD start assumes a SwiGLU MLP
        for t, r in pairs:
            factors[t, r] = svd_factors(layers[t].mlp, layers[r].mlp, svd_recovery)
    cos_sum = np.zeros((num_layers, num_layers))
    io_sum = np.zeros(num_layers)
    numerator = np.zeros((num_layers, num_layers))
    svd_numerator = np.zeros((num_layers, num_layers))
    denominator = np.zeros(num_layers)
    residual = np.zeros(num_layers)
    count = 0
    inner = getattr(model, "model", model)
    for start in range(0, token_data.num_rows, batch_size):
        inputs = mx.array(token_data.tokens[start: start + batch_size, :-1])
        valid = np.nonzero(token_data.mask[start: start + batch_size].reshape(-1))[0]
        if not len(valid):
            continue
        valid = mx.array(valid)

        def flat(x, valid=valid):
            return x.reshape(-1, x.shape[-1])[valid].astype(mx.float32)

        layer_io, mlp_io = [None] * num_layers, [None] * num_layers
        with recording(layers, layer_io), recording([layer.mlp for layer in layers], mlp_io):
            inner(inputs)
        outs = mx.stack([_unit(flat(out)) for _, out in layer_io])  # (L, N, D)
        ins = mx.stack([_unit(flat(x)) for x, _ in layer_io])
        gram = mx.einsum("ind,jnd->ij", outs, outs)
        io = (ins * outs).sum(axis=(1, 2))
        squares = mx.stack([mx.square(flat(out)).sum() for _, out in layer_io])
        mx.eval(gram, io, squares)
        cos_sum += np.array(gram)
        io_sum += np.array(io)
        residual += np.array(squares)
        count += len(valid)
        del outs, ins, layer_io
        for t in range(num_layers if distance else 0):
            x, y = flat(mlp_io[t][0]), flat(mlp_io[t][1])
            sums = {"den": (y * y).sum()}
            for r in range(max(0, t - distance), min(num_layers, t + distance + 1)):
                if r == t:
                    continue
                sums[r] = mx.square(layers[r].mlp(x) - y).sum()
                if (t, r) in factors:
                    replaced = LowRankMLP(layers[r].mlp, factors[t, r], svd_recovery["scale"])
                    sums["svd", r] = mx.square(replaced(x) - y).sum()
            mx.eval(sums)
            denominator[t] += sums.pop("den").item()
            for key, value in sums.items():
                if isinstance(key, tuple):
                    svd_numerator[t, key[1]] += value.item()
                else:
                    numerator[t, key] += value.item()
    if not count:
        raise data.DataError("the calibration data has no tokens")
    band = np.full((num_layers, num_layers), np.nan)
    for t in range(num_layers):
        for r in range(max(0, t - distance), min(num_layers, t + distance + 1)):
            band[t, r] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = band + numerator / denominator[:, None]
        svd_errors = band + svd_numerator / denominator[:, None]
    if svd_recovery is not None and "lora" not in svd_recovery["kind"]:
        svd_errors = errors.copy()  # no LoRA to initialise: the same as direct sharing
    return LayerAnalysis(
        tokens=count, distance=distance, cosine=cos_sum / count, io_cosine=io_sum / count,
        errors=errors, mlp_share=denominator / residual,
        svd_errors=svd_errors if svd_recovery is not None else None,
        svd_rank=svd_recovery["rank"] if svd_recovery is not None else None,
    )


# ---------------------------------------------------------------- choosing a plan


def targets_needed(model: nn.Module, budget: float, recovery: dict) -> int:
    """The fewest targets whose net MLP saving (net of recovery) is >= budget."""
    num_layers = len(model.layers)
    if budget <= 0:
        return 0
    if num_layers < 2:
        raise ValueError("a model of one layer has nothing to share")
    per_target = account_model(model, SharingPlan({1: 0}, num_layers), recovery).net_mlp_saving
    if per_target <= 0:
        raise ValueError(f"the recovery config adds as many parameters as a target saves "
                         f"(net saving per target {100 * per_target:.2f}%)")
    return math.ceil(budget / per_target - 1e-9)


def choose_plan(candidates: dict[tuple[int, int], float], num_layers: int, num_targets: int,
                keep=()) -> tuple[dict[int, int], float]:
    """The valid plan of exactly `num_targets` targets with the least summed candidate error.

    candidates: {(target, reference): error}; only these pairs may be used. `keep`: layers that
    must keep their own MLP. Exact dynamic programming (see the module doc); raises ValueError
    when no valid plan of that many targets exists.
    """
    if num_targets == 0:
        return {}, 0.0
    keep = set(keep)
    distance = max((abs(t - r) for t, r in candidates), default=0)
    options: dict[int, list[tuple[float, int]]] = {}
    for (t, r), error in candidates.items():
        if t != r and math.isfinite(error):
            options.setdefault(t, []).append((error, r))
    for t in options:
        options[t].sort()

    def cost(j: int, path: tuple) -> float | None:
        """Target j's error to its best kept reference (all layers near j decided in path)."""
        return next((e for e, r in options.get(j, ()) if r < len(path) and not path[r]), None)

    window = 2 * distance
    states: dict[tuple, tuple[float, tuple]] = {((), 0): (0.0, ())}
    for i in range(num_layers):
        new: dict[tuple, tuple[float, tuple]] = {}
        for (_, count), (total, path) in states.items():
            for status in (0, 1):
                if status and (i in keep or i not in options or count == num_targets):
                    continue
                step = path + (status,)
                j = i - distance
                extra = cost(j, step) if j >= 0 and step[j] else 0.0
                if extra is None:
                    continue
                key = (step[max(0, len(step) - window):], count + status)
                if key not in new or total + extra < new[key][0]:
                    new[key] = (total + extra, step)
        states = new
    best = None
    for (_, count), (total, path) in states.items():
        if count != num_targets:
            continue
        tail = [cost(j, path) for j in range(max(0, num_layers - distance), num_layers)
                if path[j]]
        if None in tail:
            continue
        total += sum(tail)
        if best is None or total < best[0]:
            best = (total, path)
    if best is None:
        raise ValueError(f"no valid plan has {num_targets} targets using the measured pairs "
                         f"(distance {distance}); raise --distance or lower the budget")
    total, path = best
    mapping = {j: next(r for _, r in options[j] if not path[r])
               for j in range(num_layers) if path[j]}
    return mapping, total


def suggest_plan(model: nn.Module, tokenizer, budget: float, recovery: dict,
                 data: str = "wiki", tokens: int = 2048, distance: int = 1, seq_len: int = 512,
                 rank_by: str = "raw", keep=(), batch_size: int = 4,
                 analysis: LayerAnalysis | None = None, normalize: str = "residual"
                 ) -> SharingPlan:
    """An `auto` plan: least summed measured replacement error with net MLP saving >= budget.

    `model` is the unquantized base model (`models.load_base`); pass a precomputed `analysis`
    to skip the measurement. rank_by "svd" ranks pairs by their error after the SVD start;
    normalize "residual" weighs each error by its layer's MLP share of the residual stream.
    """
    check_base_type(model_type(model))
    if analysis is None:
        token_data = calibration_data(data, tokenizer, tokens, seq_len)
        analysis = analyze_layers(model, token_data, distance, batch_size,
                                  recovery if rank_by == "svd" else None)
    needed = targets_needed(model, budget, recovery)
    mapping, _ = choose_plan(analysis.candidates(rank_by, normalize), len(model.layers),
                             needed, keep)
    plan = SharingPlan(mapping, len(model.layers))
    saving = account_model(model, plan, recovery).net_mlp_saving
    if saving < budget - 1e-12:  # the accounting is linear in targets; this guards it
        raise ValueError(f"plan saves {100 * saving:.2f}% < budget {100 * budget:.2f}%")
    return plan


def plan_document(plan: SharingPlan, analysis: LayerAnalysis, base_model: nn.Module,
                  budget: float, recovery: dict, rank_by: str = "raw",
                  normalize: str = "residual", **info) -> dict:
    """The plan JSON `plan.parse_plan` reads, with the errors and accounting that chose it."""
    matrix = analysis.matrix(rank_by, normalize)
    accounting = account_model(base_model, plan, recovery)
    return {
        "plan": plan.to_json(),
        "budget": budget,
        "net_mlp_saving": round(accounting.net_mlp_saving, 6),
        "rank_by": rank_by,
        "normalize": normalize,
        "distance": analysis.distance,
        "recovery": recovery,
        "tokens": analysis.tokens,
        **info,
        "errors": {str(t): round(float(matrix[t, r]), 6) for t, r in sorted(plan.mapping.items())},
        "total_error": round(float(sum(matrix[t, r] for t, r in plan.mapping.items())), 6),
        "candidates": {f"{t}<-{r}": round(e, 6)
                       for (t, r), e in sorted(analysis.candidates(rank_by, normalize).items())},
    }


# ---------------------------------------------------------------- ranking study


@contextlib.contextmanager
def replaced_mlp(model: nn.Module, target: int, mlp: nn.Module):
    """Temporarily compute layer `target` with another MLP module."""
    layer = model.layers[target]
    original = layer.mlp
    layer.mlp = mlp
    try:
        yield model
    finally:
        layer.mlp = original


def spearman(x, y) -> float:
    """Spearman rank correlation (ties get their mean rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def ranking_study(model: nn.Module, analysis: LayerAnalysis, eval_data: data.TokenData,
                  recovery: dict, batch_size: int = 4, progress=None) -> dict:
    """For each measured pair alone, the rise in mean NLL with direct sharing and with the SVD
    start, and how well the raw and SVD errors rank those rises (Spearman).
    `progress(done, total, row)` is called after each pair."""
    if analysis.svd_errors is None:
        raise ValueError("the ranking study needs an analysis measured with SVD errors")

    def mean_nll():
        sums, counts = evaluate.window_losses(model, eval_data, batch_size)
        return float(sums.sum() / counts.sum())

    base = mean_nll()
    rows = []
    layers = model.layers
    pairs = sorted(analysis.candidates("raw"))
    for t, r in pairs:
        with replaced_mlp(model, t, layers[r].mlp):
            direct = mean_nll() - base
        factors = svd_factors(layers[t].mlp, layers[r].mlp, recovery)
        with replaced_mlp(model, t, LowRankMLP(layers[r].mlp, factors, recovery["scale"])):
            svd = mean_nll() - base
        row = {"target": t, "reference": r, "direct_nll_rise": direct, "svd_nll_rise": svd}
        for rank_by in RANK_BY:
            for normalize in NORMALIZE:
                row[f"{rank_by}_{normalize}_error"] = float(
                    analysis.matrix(rank_by, normalize)[t, r])
        rows.append(row)
        if progress:
            progress(len(rows), len(pairs), row)

    def col(key):
        return [row[key] for row in rows]

    study = {"base_nll": base, "eval_tokens": eval_data.num_loss_tokens, "pairs": rows}
    for rank_by in RANK_BY:
        for normalize in NORMALIZE:
            for rise in ("direct", "svd"):
                study[f"spearman_{rank_by}_{normalize}_vs_{rise}_rise"] = spearman(
                    col(f"{rank_by}_{normalize}_error"), col(f"{rise}_nll_rise"))
    return study


# ---------------------------------------------------------------- report


def format_table(analysis: LayerAnalysis) -> str:
    """One row per layer: input/output cosine, Block Influence, MLP share of the layer output
    (||MLP_t(x_t)||² / ||h_t||²), then the error by reference offset relative to the MLP output
    (`mlp`) and to the layer output (`res` = mlp error x MLP share), direct and after the SVD
    start (`svd`, `svd-res`)."""
    k, num_layers = analysis.distance, analysis.num_layers
    offsets = [d for d in range(-k, k + 1) if d]
    columns = [("mlp", "raw", "mlp"), ("res", "raw", "residual")]
    if analysis.svd_errors is not None:
        columns += [("svd", "svd", "mlp"), ("svd-res", "svd", "residual")]
    header = f"{'layer':>5}  {'cos(in,out)':>11}  {'BI':>6}  {'MLP share':>9}"
    for label, _, _ in columns:
        header += "".join(f"  {f'{label} t{d:+d}':>10}" for d in offsets)
    lines = [header]
    for t in range(num_layers):
        line = (f"{t:>5}  {analysis.io_cosine[t]:>11.4f}  {analysis.block_influence[t]:>6.4f}"
                f"  {analysis.mlp_share[t]:>9.4f}")
        for _, rank_by, normalize in columns:
            matrix = analysis.matrix(rank_by, normalize)
            for d in offsets:
                cell = f"{matrix[t, t + d]:.4f}" if 0 <= t + d < num_layers else "-"
                line += f"  {cell:>10}"
        lines.append(line)
    return "\n".join(lines)


def _error_band(fig, ax, analysis: LayerAnalysis, rank_by: str, normalize: str,
                plan: SharingPlan | None) -> None:
    """Errors as a (reference offset x target layer) heatmap, annotated, plan pairs outlined."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    num_layers, k = analysis.num_layers, analysis.distance
    offsets = [d for d in range(-k, k + 1) if d]
    matrix = analysis.matrix(rank_by, normalize)
    band = np.full((len(offsets), num_layers), np.nan)
    for i, d in enumerate(offsets):
        for t in range(num_layers):
            if 0 <= t + d < num_layers:
                band[i, t] = matrix[t, t + d]
    finite = band[np.isfinite(band) & (band > 0)]
    log = len(finite) and finite.max() > 10 * finite.min()  # log scale for a wide range
    norm = LogNorm(finite.min(), finite.max()) if log else None
    image = ax.imshow(band, cmap="magma_r", norm=norm, aspect="auto", origin="lower",
                      extent=(-0.5, num_layers - 0.5, -0.5, len(offsets) - 0.5))
    ax.set_yticks(range(len(offsets)), [f"r = t{d:+d}" for d in offsets])
    if num_layers <= 40:
        digits = 3 if normalize == "residual" else 2
        for i in range(len(offsets)):
            for t in range(num_layers):
                if np.isfinite(band[i, t]):
                    value = band[i, t]
                    ax.text(t, i, f"{value:.{digits}f}".lstrip("0") if value < 1 else
                            f"{value:.1f}", ha="center", va="center", fontsize=5.5,
                            color="white" if image.norm(value) > 0.6 else "black")
    for t, r in (plan.mapping.items() if plan else ()):
        i = offsets.index(r - t)
        ax.add_patch(Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, lw=1.8, ec="cyan"))
    what = "after SVD-initialised LoRA" if rank_by == "svd" else "direct sharing"
    denominator = "||h_t||²" if normalize == "residual" else "||MLP_t(x_t)||²"
    ax.set_title(f"||MLP_r(x_t) - MLP_t(x_t)||² / {denominator}  ({what}"
                 + ("; cyan: chosen plan)" if plan else ")"), fontsize=10)
    bar = fig.colorbar(image, ax=ax, label="relative error" + (" (log)" if log else ""))
    if log:
        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("target layer t")
    ax.set_xlim(-0.5, num_layers - 0.5)


def draw_heatmap(analysis: LayerAnalysis, path: Path, title: str = "",
                 plan: SharingPlan | None = None, rank_by: str = "raw",
                 normalize: str = "residual") -> Path:
    """PNG: cosine similarity of layer outputs; replacement error by reference offset relative
    to the MLP output and to the layer output (the chosen plan outlined on the `normalize`
    one); Block Influence per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers = analysis.num_layers
    rows = 3 if analysis.distance else 1
    fig = plt.figure(figsize=(16, 9 if rows == 3 else 6), layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[1, 1.5])
    ax = fig.add_subplot(grid[:, 0])
    image = ax.imshow(analysis.cosine, cmap="viridis", origin="lower")
    ax.set_title("cosine similarity of layer outputs")
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, shrink=0.7, label="mean cosine similarity over tokens")
    if analysis.distance:
        for row, kind in enumerate(NORMALIZE):
            _error_band(fig, fig.add_subplot(grid[row, 1]), analysis, rank_by, kind,
                        plan if kind == normalize else None)
    ax = fig.add_subplot(grid[rows - 1, 1])
    ax.bar(range(num_layers), analysis.block_influence, color="tab:blue")
    ax.set_xlim(-0.5, num_layers - 0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("Block Influence")
    ax.set_title("Block Influence = 1 - cosine(layer input, layer output) (ShortGPT)",
                 fontsize=10)
    fig.suptitle(title or "layer similarity", fontsize=13)
    fig.text(0.995, 0.002, f"{analysis.tokens} calibration tokens", ha="right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line


def load_plain_model(spec: str | None, trust_remote_code: bool = False):
    """(model, tokenizer, config, path): unquantized, float32, a SHARP model folded to plain."""
    model, tokenizer, config, path = models.load_base(spec, "float32", trust_remote_code)
    if config.get("model_type") == "sharp":
        model, config = fold_recovery(model, config)
    return model, tokenizer, config, path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sharp_mlx.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model directory, repo or .gguf (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--data", default="wiki", help="wiki, chitchat or a jsonl directory")
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--distance", "-k", type=int, default=2,
                        help="measure replacement by layers at most this far away (default: 2)")
    parser.add_argument("--png", type=Path, help="draw the heatmaps into this PNG")
    parser.add_argument("--json", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--suggest", action="store_true", help="choose an `auto` plan")
    parser.add_argument("--budget", type=float, default=0.25,
                        help="least net MLP saving of the suggested plan, a fraction (0.25)")
    parser.add_argument("--keep", default="",
                        help="comma-separated layers that must keep their own MLP")
    parser.add_argument("--rank-by", choices=RANK_BY, default="raw",
                        help="rank pairs by direct-sharing error or error after SVD init")
    parser.add_argument("--normalize", choices=NORMALIZE, default="residual",
                        help="rank pairs by error relative to the layer output (residual, "
                             "default: it ranks real NLL damage far better) or to the MLP "
                             "output (mlp)")
    parser.add_argument("--recovery", default="lora", choices=RECOVERY_KINDS)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--matrices", default=",".join(MLP_MATRICES))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rank-study", action="store_true",
                        help="measure each pair's NLL rise alone (slow) and report how well "
                             "raw and SVD errors rank them")
    parser.add_argument("--study-tokens", type=int, default=512,
                        help="held-out (valid split) tokens for --rank-study")
    parser.add_argument("-o", "--output", type=Path, default=Path("auto_plan.json"),
                        help="where --suggest writes the plan (default: auto_plan.json)")
    return parser


def run(args: argparse.Namespace) -> dict:
    recovery = recovery_config(args.recovery, args.rank, args.matrices.split(","), args.scale)
    model, tokenizer, config, path = load_plain_model(args.model, args.trust_remote_code)
    with_svd = args.rank_by == "svd" or args.rank_study
    if with_svd and "lora" not in recovery["kind"]:
        raise ValueError("--rank-by svd and --rank-study need a LoRA recovery kind")
    start = time.perf_counter()
    token_data = calibration_data(args.data, tokenizer, args.tokens, args.seq_len)
    analysis = analyze_layers(model, token_data, args.distance, args.batch_size,
                              recovery if with_svd else None)
    print(f"{path}: {analysis.num_layers} layers, {analysis.tokens} calibration tokens of "
          f"{args.data}, {time.perf_counter() - start:.1f} s")
    print(format_table(analysis))
    report = {"model": str(path), "data": args.data, **analysis.to_json()}
    plan = None
    if args.suggest:
        keep = [int(x) for x in args.keep.split(",") if x.strip()]
        plan = suggest_plan(model, tokenizer, args.budget, recovery, rank_by=args.rank_by,
                            keep=keep, analysis=analysis, normalize=args.normalize)
        document = plan_document(plan, analysis, model, args.budget, recovery, args.rank_by,
                                 args.normalize, model=str(path), data=args.data)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nauto plan (budget {100 * args.budget:.1f}%, rank by {args.rank_by} error "
              f"relative to {args.normalize}): "
              f"{plan.describe()}")
        print(account_model(model, plan, recovery).report())
        print(f"summed error {document['total_error']:.4f}; wrote {args.output}")
        report["suggested"] = document
    if args.rank_study:
        eval_data = calibration_data(args.data, tokenizer, args.study_tokens, args.seq_len,
                                     split="valid")
        def progress(done, total, row):
            print(f"  [{done}/{total}] {row['target']}<-{row['reference']}: NLL rise "
                  f"{row['direct_nll_rise']:+.4f} direct, {row['svd_nll_rise']:+.4f} SVD start",
                  file=sys.stderr, flush=True)

        study = ranking_study(model, analysis, eval_data, recovery, args.batch_size, progress)
        print(f"\nranking study on {study['eval_tokens']} valid tokens "
              f"({len(study['pairs'])} pairs, base NLL {study['base_nll']:.4f}): Spearman")
        print(f"  {'error':<14} {'vs direct rise':>14} {'vs SVD-init rise':>16}")
        for rank_by in RANK_BY:
            for normalize in NORMALIZE:
                key = f"spearman_{rank_by}_{normalize}_vs_"
                print(f"  {rank_by + '/' + normalize:<14} {study[key + 'direct_rise']:>+14.3f} "
                      f"{study[key + 'svd_rise']:>+16.3f}")
        report["ranking_study"] = study
    if args.png:
        name = Path(path).name
        draw_heatmap(analysis, args.png, f"{name}: adjacent-layer similarity", plan,
                     args.rank_by, args.normalize)
        print(f"wrote {args.png}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
