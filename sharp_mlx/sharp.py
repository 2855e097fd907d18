"""Build SHARP models from base models, initialise their recovery, and fold it back out."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import sharp_model
from .plan import SharingPlan
from .sharp_model import MLP_MATRICES, RECOVERY_KINDS

ARCHITECTURE_FILE = Path(sharp_model.__file__)
INITS = ("zero", "svd")


def recovery_config(
    kind: str = "lora", rank: int = 64, matrices=MLP_MATRICES, scale: float = 1.0
) -> dict:
    if kind not in RECOVERY_KINDS:
        raise ValueError(f"unknown recovery kind {kind!r}; use one of {', '.join(RECOVERY_KINDS)}")
    if "lora" in kind and rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    matrices = list(matrices)
    if not matrices or set(matrices) - set(MLP_MATRICES):
        raise ValueError(f"recovery matrices must be a non-empty subset of {MLP_MATRICES}")
    return {"kind": kind, "rank": rank, "matrices": matrices, "scale": scale}


def sharp_config(base_config: dict, plan: SharingPlan, recovery: dict) -> dict:
    """The config.json of a SHARP model: the base config plus the `sharp` block."""
    base_type = base_config.get("model_type")
    if base_type == "sharp":
        raise ValueError("the base model is already a SHARP model")
    sharp_model.check_base_type(base_type)
    return {
        **base_config,
        "model_type": "sharp",
        "model_file": ARCHITECTURE_FILE.name,
        "sharp": {
            "version": 1,
            "base_model_type": base_type,
            "plan": plan.to_json(),
            "recovery": recovery,
        },
    }


def base_config_of(config: dict) -> dict:
    """The plain base-model config inside a SHARP config."""
    plain = {k: v for k, v in config.items() if k not in ("sharp", "model_file")}
    plain["model_type"] = config["sharp"]["base_model_type"]
    return plain


def create_sharp_model(config: dict) -> nn.Module:
    """An (uninitialised) SHARP model for a SHARP config."""
    return sharp_model.Model(sharp_model.ModelArgs.from_dict(config))


def build_sharp(
    base_model: nn.Module,
    base_config: dict,
    plan: SharingPlan,
    recovery: dict,
    init: str = "zero",
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """A SHARP model holding the base's weights (minus replaced MLPs) and initialised recovery."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    config = sharp_config(base_config, plan, recovery)
    mx.random.seed(seed)
    model = create_sharp_model(config)
    base_weights = model.sanitize(dict(tree_flatten(base_model.parameters())))
    model.load_weights(list(base_weights.items()), strict=False)
    own = {k for k, _ in tree_flatten(model.parameters())}
    recovery_keys = {k for k in own if k not in base_weights}
    if missing := sorted(k for k in recovery_keys if not _is_recovery_key(k)):
        raise ValueError(f"base model lacks weights for {missing[:5]}")
    if extra := sorted(set(base_weights) - own):
        raise ValueError(f"base model has weights the SHARP model does not use: {extra[:5]}")
    if init == "svd":
        svd_init(model, base_model)
    dtype = base_model.model.embed_tokens.weight.dtype
    model.update(_cast_recovery(model, dtype))
    mx.eval(model.parameters())
    return model, config


def _is_recovery_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "in_scale", "out_scale")


def _cast_recovery(model: nn.Module, dtype: mx.Dtype) -> dict:
    from mlx.utils import tree_unflatten

    return tree_unflatten([
        (k, v.astype(dtype)) for k, v in tree_flatten(model.parameters()) if _is_recovery_key(k)
    ])


def recovery_layers(model: nn.Module) -> dict[int, nn.Module]:
    """The SharedMLP of every replaced layer, by layer index."""
    # Duck-typed: a model loaded by mlx-lm uses the SharedMLP class of its own sharp_model.py copy.
    return {i: layer.mlp for i, layer in enumerate(model.layers) if hasattr(layer.mlp, "project")}


def dense_weight(linear: nn.Module) -> mx.array:
    """A linear layer's weight in float32, dequantized if needed."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.get("biases"),
                             group_size=linear.group_size, bits=linear.bits, mode=linear.mode)
    return linear.weight.astype(mx.float32)


def svd_init(model: nn.Module, base_model: nn.Module) -> None:
    """Set each LoRA to the best rank-r approximation of W_target - W_reference (truncated SVD)."""
    for target, mlp in recovery_layers(model).items():
        for name in mlp:
            recovery = mlp[name]
            if "lora_a" not in recovery:
                continue
            original = dense_weight(getattr(base_model.layers[target].mlp, name))
            shared = dense_weight(getattr(mlp.reference_mlp, name))
            a, b = low_rank_factors(original - shared, recovery.lora_a.shape[1], recovery.scale)
            recovery.lora_a, recovery.lora_b = a, b


def low_rank_factors(delta: mx.array, rank: int, scale: float = 1.0) -> tuple[mx.array, mx.array]:
    """(A, B) with scale * A @ B the best rank-r approximation of delta.T; delta is (out, in)."""
    u, s, vt = mx.linalg.svd(delta.astype(mx.float32), stream=mx.cpu)  # SVD is CPU-only in MLX
    kept = min(rank, s.shape[0])
    root = mx.sqrt(s[:kept] / scale)
    a = vt[:kept].T * root  # (in, kept)
    b = root[:, None] * u[:, :kept].T  # (kept, out)
    if kept < rank:  # a rank above min(in, out) adds nothing: pad with zeros
        a = mx.pad(a, [(0, 0), (0, rank - kept)])
        b = mx.pad(b, [(0, rank - kept), (0, 0)])
    return a, b


def folded_weights(model: nn.Module) -> dict[str, mx.array]:
    """Per-layer dense MLP weights of a SHARP model with recovery folded in (float32)."""
    weights = {}
    for target, mlp in recovery_layers(model).items():
        for name in MLP_MATRICES:
            linear = getattr(mlp.reference_mlp, name)
            w = dense_weight(linear)
            bias = linear.get("bias")
            if name in mlp:
                recovery = mlp[name]
                if "in_scale" in recovery:
                    w = recovery.out_scale[:, None] * w * recovery.in_scale[None, :]
                    bias = None if bias is None else bias * recovery.out_scale
                if "lora_a" in recovery:
                    w = w + recovery.scale * (recovery.lora_a @ recovery.lora_b).T
            prefix = f"model.layers.{target}.mlp.{name}"
            weights[f"{prefix}.weight"] = w
            if bias is not None:
                weights[f"{prefix}.bias"] = bias
    return weights


def fold_recovery(model: nn.Module, config: dict) -> tuple[nn.Module, dict]:
    """A plain base-architecture model computing the same function as a SHARP model."""
    from mlx_lm.utils import _get_classes

    plain_config = base_config_of(config)
    model_class, args_class = _get_classes(plain_config)
    plain = model_class(args_class.from_dict(plain_config))
    weights = {k: v for k, v in tree_flatten(model.parameters()) if not _is_recovery_key(k)}
    weights.update(folded_weights(model))
    plain.load_weights(list(weights.items()), strict=True)
    mx.eval(plain.parameters())
    return plain, plain_config
