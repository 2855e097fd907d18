"""Write the Python <-> Swift parity fixture: a tiny random SHARP llama and mlx-lm's logits for it.

    python tools/make_parity_fixture.py   # -> ios_bridge/Tests/SharpBridgeTests/Fixtures/tiny_sharp
    python tools/make_parity_fixture.py -o DIR

Writes `config.json`, `model.safetensors` (float32) and `parity.json` = {"tokens": [[int]],
"logits": [[[float]]]} (batch, length, vocab), the layout `ParityTests.swift` reads. The model:
hidden 64, 4 layers (GQA 4:2 heads), intermediate 128, vocabulary 96, tied embeddings, plan
{2: 1, 3: 1} (two layers share layer 1's MLP), LoRA rank 8 with scale 0.5 on every MLP matrix;
every weight, norm and recovery tensor is random from fixed seeds, so the same mlx version gives
the same bytes. The logits come from stock mlx-lm (`mlx_lm.utils.load_model`, strict, with this
package's `sharp_model.py`) loading the written files. `tests/test_export.py` regenerates the
fixture and fails when the committed one is stale.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import sharp_mlx  # noqa: F401  (loads OpenBLAS before mlx)

# isort: split

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama
from mlx_lm.utils import load_model, save_config

from sharp_mlx.plan import SharingPlan
from sharp_mlx.sharp import ARCHITECTURE_FILE, build_sharp, recovery_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "ios_bridge/Tests/SharpBridgeTests/Fixtures/tiny_sharp"
FILES = ("config.json", "model.safetensors", "parity.json")
SEED = 1234
BASE_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 96,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 256,
}
PLAN = {2: 1, 3: 1}
RECOVERY = {"kind": "lora", "rank": 8, "scale": 0.5}
TOKENS = [
    [1, 17, 42, 5, 88, 23, 60],
    [95, 0, 33, 71, 12, 9, 50, 64, 3, 27, 81, 44],
]


def build_model():
    """The tiny SHARP model (float32) and its config, from fixed seeds."""
    mx.random.seed(SEED)
    base = llama.Model(llama.ModelArgs.from_dict(BASE_CONFIG))
    # Norm weights are ones at init: make them random too so the test checks they are applied.
    norms = [(k, 1 + 0.2 * mx.random.normal(v.shape))
             for k, v in tree_flatten(base.parameters()) if k.endswith("norm.weight")]
    base.update(tree_unflatten(norms))
    mx.eval(base.parameters())
    recovery = recovery_config(RECOVERY["kind"], RECOVERY["rank"], scale=RECOVERY["scale"])
    model, config = build_sharp(base, BASE_CONFIG, SharingPlan(PLAN, 4), recovery, init="zero",
                                seed=SEED + 1)
    mx.random.seed(SEED + 2)
    lora = [(k, 0.1 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.parameters())
            if k.endswith((".lora_a", ".lora_b"))]
    model.update(tree_unflatten(lora))
    mx.eval(model.parameters())
    return model, {**config, "torch_dtype": "float32"}


def _float(x: float) -> float:
    return float(f"{x:.9g}")  # 9 significant digits round-trip a float32


def make_fixture(out: Path) -> dict:
    """Write the fixture files into `out` (created if needed); returns the parity data."""
    model, config = build_model()
    weights = dict(tree_flatten(model.parameters()))
    if any(v.dtype != mx.float32 for v in weights.values()):
        raise RuntimeError("the parity fixture must be float32")
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        mx.save_safetensors(str(staging / "model.safetensors"), weights,
                            metadata={"format": "mlx"})
        save_config(dict(config), staging / "config.json")
        shutil.copy(ARCHITECTURE_FILE, staging / ARCHITECTURE_FILE.name)
        loaded, _ = load_model(staging, strict=True, trust_remote_code=True)
        logits = [loaded(mx.array([tokens]))[0].astype(mx.float32).tolist() for tokens in TOKENS]
        parity = {"tokens": TOKENS,
                  "logits": [[[_float(v) for v in row] for row in seq] for seq in logits]}
        (staging / "parity.json").write_text(json.dumps(parity, separators=(",", ":")) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy(staging / name, out / name)
    return parity


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    parity = make_fixture(args.output)
    size = sum((args.output / name).stat().st_size for name in FILES)
    print(f"wrote {args.output} ({size:,} bytes; {len(parity['tokens'])} token sequences)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
