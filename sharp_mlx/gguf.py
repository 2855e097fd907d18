"""Convert a llama-architecture GGUF file into an mlx-lm model directory.

`mx.load` reads GGUF tensors as MLX-quantized triples (weight, scales, biases; group size 32);
they are dequantized whatever their bit width. llama.cpp stores the Q and K rows permuted for its
rope layout; that is undone per head so mlx-lm's llama (non-traditional rope) computes the same
model. The GPT-2 style byte-level BPE tokenizer is rebuilt from the GGUF metadata.
"""

import json
from pathlib import Path

import mlx.core as mx

GGUF_GROUP_SIZE = 32

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFError(ValueError):
    """The GGUF file is not a supported llama model."""


def _scalar(metadata: dict, key: str, default=None):
    if key not in metadata:
        if default is None:
            raise GGUFError(f"GGUF metadata lacks {key!r}")
        return default
    value = metadata[key]
    return value.item() if isinstance(value, mx.array) else value


def hf_name(gguf_name: str) -> str | None:
    """The mlx-lm/HF tensor name of a GGUF tensor name (None for tensors mlx-lm does not use)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        module = _LAYER_NAMES.get(parts[2])
        return f"model.layers.{parts[1]}.{module}.{parts[3]}" if module else None
    module = _TOP_NAMES.get(parts[0])
    return f"{module}.{parts[1]}" if module else None


def dequantize(weight: mx.array, scales: mx.array, biases: mx.array) -> mx.array:
    """Dequantize an MLX affine-quantized GGUF tensor; bits follow from the packed width."""
    in_dims = scales.shape[-1] * GGUF_GROUP_SIZE
    bits = weight.shape[-1] * 32 // in_dims
    return mx.dequantize(weight, scales, biases, group_size=GGUF_GROUP_SIZE, bits=bits)


def unpermute_rope(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's per-head Q/K row permutation."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_config(metadata: dict, weights: dict) -> dict:
    arch = _scalar(metadata, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"GGUF architecture {arch!r} is not supported (only llama)")
    p = "llama."
    heads = int(_scalar(metadata, p + "attention.head_count"))
    hidden = int(_scalar(metadata, p + "embedding_length"))
    vocab = weights["model.embed_tokens.weight"].shape[0]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(metadata, p + "feed_forward_length")),
        "num_hidden_layers": int(_scalar(metadata, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(metadata, p + "attention.head_count_kv", heads)),
        "head_dim": int(_scalar(metadata, p + "rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(metadata, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(metadata, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(metadata, p + "context_length", 2048)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id", -1)),
        "eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id", -1)),
    }


def load_gguf_weights(path: Path, dtype: mx.Dtype = mx.float16) -> tuple[dict, dict, dict]:
    """Return (weights with mlx-lm names, config, raw metadata) of a llama GGUF file."""
    try:
        raw, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises plain RuntimeError/ValueError for unreadable files
        raise GGUFError(f"cannot read GGUF file {path}: {e}") from None
    weights = {}
    for name, value in raw.items():
        if name.endswith((".scales", ".biases")):
            continue
        target = hf_name(name)
        if target is None:
            continue
        stem = name[: -len(".weight")]
        if value.dtype == mx.uint32 and f"{stem}.scales" in raw:
            value = dequantize(value, raw[f"{stem}.scales"], raw[f"{stem}.biases"])
        weights[target] = value.astype(dtype)
    config = llama_config(metadata, weights)
    for layer in range(config["num_hidden_layers"]):
        q, k = (f"model.layers.{layer}.self_attn.{m}_proj.weight" for m in "qk")
        weights[q] = unpermute_rope(weights[q], config["num_attention_heads"])
        weights[k] = unpermute_rope(weights[k], config["num_key_value_heads"])
    return weights, config, metadata


def build_tokenizer(metadata: dict, out_dir: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json rebuilt from GGUF metadata."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if _scalar(metadata, "tokenizer.ggml.model") != "gpt2":
        raise GGUFError("only GPT-2 style byte-level BPE GGUF tokenizers are supported")
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if _scalar(metadata, "tokenizer.ggml.pre", "default") in ("smollm", "qwen2", "llama-bpe"):
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    token_types = metadata.get("tokenizer.ggml.token_type")
    types = token_types.tolist() if token_types is not None else [1] * len(tokens)
    special = [tokens[i] for i, kind in enumerate(types) if kind == 3]  # 3 = control
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(out_dir / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = _scalar(metadata, key, -1)
        return tokens[int(index)] if 0 <= int(index) < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(metadata, "llama.context_length", 2048)),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
