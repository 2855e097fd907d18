"""Sharing plans: which layer's MLP is replaced by which reference, and what that saves.

A plan maps target layer -> reference layer. Valid: both in range, target != reference, and a
reference is never itself a target (no chains). Attention and norms are never shared.

Presets (the paper finds later layers keep quality better when replaced, so both spare the first
two layers and the last one):
- `moderate`: pairs (r, r+1) -> r over the last two thirds.
- `aggressive`: triples (r-1, r, r+1) -> r from layer 2 to the second to last layer.
- `pairs:A-B`: every second layer in [A, B] takes the layer before it as reference.
- `none`: nothing shared.

Net MLP saving with LoRA rank 64 on all three matrices (`python -m sharp_mlx.plan`):

| preset | SmolLM2-135M (30 layers) | Llama2-7b (32 layers) |
|---|---|---|
| `moderate` | 9 targets, 25.4% net | 10 targets, 30.6% net |
| `aggressive` | 18 targets, 50.8% net | 19 targets, 58.1% net |
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .sharp_model import validate_plan

PRESETS = ("none", "moderate", "aggressive")


class PlanError(ValueError):
    """A plan is malformed or invalid for the model."""


@dataclass(frozen=True)
class SharingPlan:
    """A validated mapping target layer -> reference layer for a model of `num_layers` layers."""

    mapping: dict[int, int]
    num_layers: int

    def __post_init__(self):
        validate(self.mapping, self.num_layers)

    @property
    def targets(self) -> list[int]:
        return sorted(self.mapping)

    def to_json(self) -> dict[str, int]:
        return {str(t): r for t, r in sorted(self.mapping.items())}

    def describe(self) -> str:
        if not self.mapping:
            return "no layers shared"
        return ", ".join(f"{t}<-{r}" for t, r in sorted(self.mapping.items()))


def validate(mapping: dict[int, int], num_layers: int) -> None:
    """Raise PlanError with a clear message for an invalid plan."""
    try:
        validate_plan(mapping, num_layers)
    except ValueError as e:
        raise PlanError(str(e)) from None


def pairs(first: int, last: int) -> dict[int, int]:
    """Every second layer in [first, last] takes the layer before it as reference."""
    return {t: t - 1 for t in range(first + 1, last + 1, 2)}


def moderate(num_layers: int) -> dict[int, int]:
    """Pairs over the last two thirds, keeping the final layer."""
    return pairs(num_layers // 3, num_layers - 2)


def aggressive(num_layers: int) -> dict[int, int]:
    """Triples (r-1, r, r+1) share r's MLP, from layer 2 to the second to last layer."""
    mapping = {}
    first, last = 2, num_layers - 2
    start = first
    while start + 2 <= last:
        mapping.update({start: start + 1, start + 2: start + 1})
        start += 3
    if start + 1 <= last:
        mapping[start + 1] = start
    return mapping


def parse_plan(spec: str | dict, num_layers: int) -> SharingPlan:
    """A plan from a preset name, `pairs:A-B`, a JSON file path, inline JSON or a dict."""
    if isinstance(spec, dict):
        return SharingPlan(_int_keys(spec), num_layers)
    spec = spec.strip()
    if spec == "none":
        return SharingPlan({}, num_layers)
    if spec == "moderate":
        return SharingPlan(moderate(num_layers), num_layers)
    if spec == "aggressive":
        return SharingPlan(aggressive(num_layers), num_layers)
    if spec.startswith("pairs:"):
        try:
            first, last = (int(x) for x in spec[len("pairs:"):].split("-"))
        except ValueError:
            raise PlanError(f"bad plan {spec!r}: use pairs:A-B, e.g. pairs:10-27") from None
        return SharingPlan(pairs(first, last), num_layers)
    if spec.startswith("{"):
        return SharingPlan(_int_keys(_loads(spec, "inline plan")), num_layers)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        data = _loads(path.read_text(), f"plan file {path}")
        return SharingPlan(_int_keys(data.get("plan", data)), num_layers)
    raise PlanError(
        f"unknown plan {spec!r}: use one of {', '.join(PRESETS)}, auto, pairs:A-B, "
        "a .json file or inline JSON like '{\"17\": 16}'"
    )


def _loads(text: str, what: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{what} must be a JSON object mapping target -> reference")
    return data


def _int_keys(mapping: dict) -> dict[int, int]:
    try:
        return {int(t): int(r) for t, r in mapping.items()}
    except (TypeError, ValueError):
        raise PlanError(f"plan {mapping!r} must map integer layers to integer layers") from None


REFERENCE_SHAPES = {  # llama dimensions used to document the presets
    "SmolLM2-135M (30 layers)": dict(num_layers=30, hidden=576, intermediate=1536, vocab=49152,
                                     heads=9, kv_heads=3, tied=True),
    "Llama2-7b (32 layers)": dict(num_layers=32, hidden=4096, intermediate=11008, vocab=32000,
                                  heads=32, kv_heads=32, tied=False),
}


def preset_table(rank: int = 64) -> str:
    """Markdown table of the presets' targets and net MLP saving on the reference shapes."""
    from .accounting import llama_shape_accounting
    from .sharp import recovery_config

    recovery = recovery_config("lora", rank)
    lines = ["| preset | " + " | ".join(REFERENCE_SHAPES) + " |",
             "|---" * (len(REFERENCE_SHAPES) + 1) + "|"]
    for preset in ("moderate", "aggressive"):
        cells = []
        for shape in REFERENCE_SHAPES.values():
            dims = dict(shape)
            plan = parse_plan(preset, dims.pop("num_layers"))
            acc = llama_shape_accounting(plan, recovery, **dims)
            cells.append(f"{acc.num_targets} targets, {100 * acc.net_mlp_saving:.1f}% net")
        lines.append(f"| `{preset}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print the preset plans' net MLP savings.")
    parser.add_argument("--rank", type=int, default=64)
    print(preset_table(parser.parse_args().rank))
