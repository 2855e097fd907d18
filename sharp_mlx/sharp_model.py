"""The SHARP architecture: an mlx-lm model whose replaced layers share a reference layer's MLP.

This file is copied verbatim as `sharp_model.py` into every SHARP model directory, and its
`config.json` names it with `"model_file"`, so stock mlx-lm (`trust_remote_code=True`) runs a
SHARP model with no sharp-mlx installed. It imports only `mlx` and `mlx_lm`.

config.json = the base model's config plus
    "model_type": "sharp", "model_file": "sharp_model.py",
    "sharp": {"version": 1, "base_model_type": "llama", "plan": {"<target>": <reference>, ...},
              "recovery": {"kind": "lora", "rank": 64,
                           "matrices": ["gate_proj", "up_proj", "down_proj"], "scale": 1.0}}

A replaced (target) layer's MLP computes every matrix with the reference layer's module, looked
up at call time and never registered as its own child: `parameters()`, saving, `nn.quantize` and
strict loading see each shared weight once, and a quantized reference is used quantized. A
recovered matrix computes

    y = reference(x * in_scale) * out_scale + scale * (x @ lora_a) @ lora_b

where `lora_*` exist for kinds "lora" and "lora+vectors" and `*_scale` for "vectors" and
"lora+vectors". Its tensors are `model.layers.<t>.mlp.<matrix>.{lora_a,lora_b,in_scale,out_scale}`.
"""

import importlib
import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import BaseModelArgs

# mlx-lm architectures whose decoder MLP is down_proj(silu(gate_proj(x)) * up_proj(x)).
SUPPORTED_BASE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MLP_MATRICES = ("gate_proj", "up_proj", "down_proj")
RECOVERY_KINDS = ("lora", "vectors", "lora+vectors")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    sharp: dict
    base_config: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        if "sharp" not in params:
            raise ValueError("config.json has no 'sharp' block; this is not a SHARP model")
        return cls(model_type=params["model_type"], sharp=params["sharp"], base_config=params)


class Recovery(nn.Module):
    """Recovery parameters of one replaced matrix (a PEFT-style wrapper around the reference)."""

    def __init__(self, in_dims: int, out_dims: int, kind: str, rank: int, scale: float):
        super().__init__()
        self.scale = scale
        if "lora" in kind:
            bound = 1 / math.sqrt(in_dims)
            self.lora_a = mx.random.uniform(-bound, bound, (in_dims, rank))
            self.lora_b = mx.zeros((rank, out_dims))
        if "vectors" in kind:
            self.in_scale = mx.ones((in_dims,))
            self.out_scale = mx.ones((out_dims,))

    def __call__(self, x: mx.array, reference: nn.Module) -> mx.array:
        y = reference(x * self.in_scale) * self.out_scale if "in_scale" in self else reference(x)
        if "lora_a" in self:
            y = y + self.scale * ((x @ self.lora_a) @ self.lora_b)
        return y


class SharedMLP(nn.Module):
    """MLP of a replaced layer: the reference layer's weights plus this layer's recovery."""

    def __init__(self, layers: list, reference: int, recovery: dict):
        super().__init__()
        # A plain tuple set past nn.Module.__setattr__ stays outside the module tree.
        object.__setattr__(self, "_reference", (layers, reference))
        reference_mlp = layers[reference].mlp
        for name in recovery["matrices"]:
            out_dims, in_dims = getattr(reference_mlp, name).weight.shape
            self[name] = Recovery(
                in_dims, out_dims, recovery["kind"], recovery["rank"], recovery["scale"]
            )

    @property
    def reference_mlp(self) -> nn.Module:
        layers, index = self._reference
        return layers[index].mlp

    def project(self, name: str, x: mx.array) -> mx.array:
        linear = getattr(self.reference_mlp, name)
        return self[name](x, linear) if name in self else linear(x)

    def __call__(self, x: mx.array) -> mx.array:
        hidden = swiglu(self.project("gate_proj", x), self.project("up_proj", x))
        return self.project("down_proj", hidden)


def check_base_type(base_type: str | None) -> None:
    if base_type not in SUPPORTED_BASE_TYPES:
        raise ValueError(
            f"SHARP does not support base model type {base_type!r}: its MLP must be "
            f"gate_proj/up_proj/down_proj SwiGLU (supported: {', '.join(SUPPORTED_BASE_TYPES)})"
        )


def validate_sharp_config(sharp: dict, num_layers: int) -> dict[int, int]:
    """Check the `sharp` block and return its plan as {target: reference} with int keys."""
    check_base_type(sharp.get("base_model_type"))
    recovery = sharp["recovery"]
    if recovery["kind"] not in RECOVERY_KINDS:
        raise ValueError(f"unknown recovery kind {recovery['kind']!r}; use {RECOVERY_KINDS}")
    if unknown := set(recovery["matrices"]) - set(MLP_MATRICES):
        raise ValueError(f"unknown recovery matrices {sorted(unknown)}; use {MLP_MATRICES}")
    plan = {int(t): int(r) for t, r in sharp["plan"].items()}
    validate_plan(plan, num_layers)
    return plan


def validate_plan(plan: dict[int, int], num_layers: int) -> None:
    """Both layers in range, no self reference, and no chains (a reference is never a target)."""
    for target, reference in plan.items():
        for layer in (target, reference):
            if not isinstance(layer, int) or not 0 <= layer < num_layers:
                raise ValueError(f"plan layer {layer!r} is out of range [0, {num_layers})")
        if target == reference:
            raise ValueError(f"plan maps layer {target} to itself")
        if reference in plan:
            raise ValueError(
                f"plan chains: layer {target} -> {reference}, which is itself replaced "
                f"(-> {plan[reference]}); a reference must keep its own MLP"
            )


_classes: dict[str, type] = {}


def sharp_class(base_type: str) -> type:
    """The SHARP subclass of mlx-lm's `Model` for one base architecture."""
    if base_type in _classes:
        return _classes[base_type]
    check_base_type(base_type)
    base = importlib.import_module(f"mlx_lm.models.{base_type}")

    class SharpModel(base.Model):
        def __init__(self, args: ModelArgs):
            base_args = base.ModelArgs.from_dict({**args.base_config, "model_type": base_type})
            super().__init__(base_args)
            self.sharp_args = args
            self.plan = validate_sharp_config(args.sharp, len(self.layers))
            for target, reference in sorted(self.plan.items()):
                self.layers[target].mlp = SharedMLP(
                    self.layers, reference, args.sharp["recovery"]
                )

        def sanitize(self, weights: dict) -> dict:
            """Drop replaced layers' own MLP weights (present when loading a base checkpoint)."""
            replaced = {
                f"model.layers.{t}.mlp.{m}.{p}"
                for t in self.plan
                for m in MLP_MATRICES
                for p in ("weight", "bias", "scales", "biases")
            }
            weights = super().sanitize(weights)
            return {k: v for k, v in weights.items() if k not in replaced}

    SharpModel.__name__ = SharpModel.__qualname__ = f"Sharp{base.Model.__name__}"
    _classes[base_type] = SharpModel
    return SharpModel


class Model(nn.Module):
    """Entry point mlx-lm instantiates: builds the SHARP subclass of the base architecture."""

    def __new__(cls, args: ModelArgs):
        return sharp_class(args.sharp.get("base_model_type"))(args)
