"""Parameter and byte accounting of a sharing plan, always net of recovery parameters."""

from dataclasses import asdict, dataclass

import mlx.nn as nn
from mlx.utils import tree_flatten

from .plan import SharingPlan


@dataclass(frozen=True)
class Accounting:
    num_layers: int
    num_targets: int
    mlp_params_original: int
    mlp_params_stored: int  # MLP weights kept (reference and unreplaced layers)
    recovery_params: int
    other_params: int  # embeddings, attention, norms
    dtype_bytes: int = 2

    @property
    def mlp_params_net(self) -> int:
        return self.mlp_params_stored + self.recovery_params

    @property
    def net_mlp_saving(self) -> float:
        """Fraction of the original MLP parameters no longer stored, net of recovery."""
        return 1 - self.mlp_params_net / self.mlp_params_original

    @property
    def total_params_original(self) -> int:
        return self.other_params + self.mlp_params_original

    @property
    def total_params(self) -> int:
        return self.other_params + self.mlp_params_net

    @property
    def tensor_bytes(self) -> int:
        return self.total_params * self.dtype_bytes

    @property
    def tensor_bytes_original(self) -> int:
        return self.total_params_original * self.dtype_bytes

    @property
    def size_ratio(self) -> float:
        return self.total_params / self.total_params_original

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "mlp_params_net": self.mlp_params_net,
            "net_mlp_saving_percent": round(100 * self.net_mlp_saving, 3),
            "total_params_original": self.total_params_original,
            "total_params": self.total_params,
            "tensor_bytes": self.tensor_bytes,
            "tensor_bytes_original": self.tensor_bytes_original,
        }

    def report(self) -> str:
        mb = 1e6
        return "\n".join([
            f"layers shared     : {self.num_targets} of {self.num_layers}",
            f"MLP params        : {self.mlp_params_original:,} -> {self.mlp_params_stored:,} stored"
            f" + {self.recovery_params:,} recovery",
            f"net MLP saving    : {100 * self.net_mlp_saving:.1f}%",
            f"total params      : {self.total_params_original:,} -> {self.total_params:,}"
            f" ({100 * (1 - self.size_ratio):.1f}% fewer)",
            f"tensor bytes      : {self.tensor_bytes_original / mb:.1f} MB -> "
            f"{self.tensor_bytes / mb:.1f} MB at {8 * self.dtype_bytes}-bit",
        ])


def recovery_params_per_target(mlp_shapes: dict[str, tuple[int, int]], recovery: dict) -> int:
    """Recovery parameters of one replaced layer; mlp_shapes maps matrix -> (out, in)."""
    total = 0
    for name in recovery["matrices"]:
        out_dims, in_dims = mlp_shapes[name]
        if "lora" in recovery["kind"]:
            total += recovery["rank"] * (in_dims + out_dims)
        if "vectors" in recovery["kind"]:
            total += in_dims + out_dims
    return total


def account(
    plan: SharingPlan,
    recovery: dict,
    mlp_shapes: dict[str, tuple[int, int]],
    mlp_params_per_layer: int,
    other_params: int,
    dtype_bytes: int = 2,
) -> Accounting:
    """Accounting for a model whose every layer has an MLP of the given shapes."""
    targets = len(plan.mapping)
    return Accounting(
        num_layers=plan.num_layers,
        num_targets=targets,
        mlp_params_original=plan.num_layers * mlp_params_per_layer,
        mlp_params_stored=(plan.num_layers - targets) * mlp_params_per_layer,
        recovery_params=targets * recovery_params_per_target(mlp_shapes, recovery),
        other_params=other_params,
        dtype_bytes=dtype_bytes,
    )


def account_model(
    base_model: nn.Module, plan: SharingPlan, recovery: dict, dtype_bytes: int = 2
) -> Accounting:
    """Accounting for `plan` applied to an unquantized base mlx-lm model."""
    params = dict(tree_flatten(base_model.parameters()))
    mlp = {k: v for k, v in params.items() if ".mlp." in k}
    layer0 = {k.split(".mlp.")[1]: v for k, v in mlp.items() if k.startswith("model.layers.0.")}
    mlp_shapes = {
        k.split(".")[0]: tuple(v.shape) for k, v in layer0.items() if k.endswith("weight")
    }
    mlp_total = sum(v.size for v in mlp.values())
    return account(
        plan,
        recovery,
        mlp_shapes,
        mlp_params_per_layer=mlp_total // plan.num_layers,
        other_params=sum(v.size for v in params.values()) - mlp_total,
        dtype_bytes=dtype_bytes,
    )


def llama_shape_accounting(
    plan: SharingPlan, recovery: dict, hidden: int, intermediate: int, vocab: int,
    heads: int, kv_heads: int, tied: bool,
) -> Accounting:
    """Accounting from llama dimensions alone (for documenting presets on models not at hand)."""
    head_dim = hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    embeddings = vocab * hidden * (1 if tied else 2)
    other = plan.num_layers * (attention + 2 * hidden) + hidden + embeddings
    shapes = {"gate_proj": (intermediate, hidden), "up_proj": (intermediate, hidden),
              "down_proj": (hidden, intermediate)}
    return account(plan, recovery, shapes, 3 * hidden * intermediate, other)
