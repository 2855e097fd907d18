"""GGUF -> mlx-lm: dequantization, llama.cpp's Q/K permutation, tokenizer from metadata."""

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load

from sharp_mlx import gguf, models


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_infers_bits(bits):
    w = mx.random.normal((64, 128))
    q, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    restored = gguf.dequantize(q, scales, biases)
    expected = mx.dequantize(q, scales, biases, group_size=32, bits=bits)
    assert restored.shape == w.shape and mx.array_equal(restored, expected)


def llama_cpp_permute(w, n_heads):
    """How llama.cpp's converter stores Q/K rows (the inverse of what we undo)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def test_unpermute_inverts_llama_cpp():
    w = mx.random.normal((4 * 16, 8))
    assert mx.array_equal(gguf.unpermute_rope(llama_cpp_permute(w, 4), 4), w)


def write_tiny_gguf(model_dir, path):
    """A float32 llama GGUF with llama.cpp names, permutation and tokenizer metadata."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = mx.load(str(model_dir / "model.safetensors"))
    back = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {}
    for name, value in weights.items():
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = value
        elif name == "model.norm.weight":
            out["output_norm.weight"] = value
        else:
            _, _, layer, *module, _ = name.split(".")
            module = ".".join(module)
            if module == "self_attn.q_proj":
                value = llama_cpp_permute(value, config["num_attention_heads"])
            if module == "self_attn.k_proj":
                value = llama_cpp_permute(value, config["num_key_value_heads"])
            out[f"blk.{layer}.{back[module]}.weight"] = value
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + ["<s>", "</s>", "<|user|>", "<|assistant|>"]
    metadata = {
        "general.architecture": "llama",
        "llama.attention.head_count": mx.array(config["num_attention_heads"], mx.uint32),
        "llama.attention.head_count_kv": mx.array(config["num_key_value_heads"], mx.uint32),
        "llama.embedding_length": mx.array(config["hidden_size"], mx.uint32),
        "llama.feed_forward_length": mx.array(config["intermediate_size"], mx.uint32),
        "llama.block_count": mx.array(config["num_hidden_layers"], mx.uint32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"], mx.float32),
        "llama.rope.freq_base": mx.array(config["rope_theta"], mx.float32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.token_type": mx.array([1] * 256 + [3] * 4, mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(256, mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(257, mx.uint32),
        "tokenizer.chat_template": "{{ messages[0]['content'] }}",
    }
    mx.save_gguf(str(path), out, metadata)


def test_gguf_converts_to_the_same_model(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARP_MLX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny_llama, path)
    converted = models.resolve_model(str(path))
    original, tokenizer = load(str(tiny_llama))
    model, gguf_tokenizer = load(str(converted))
    tokens = mx.array([[5, 17, 42, 99, 3, 7]])
    # the conversion stores float16: compare at that precision
    assert mx.abs(model(tokens) - original(tokens)).max().item() < 2e-2
    names = {k for k, _ in tree_flatten(model.parameters())}
    assert names == {k for k, _ in tree_flatten(original.parameters())}
    text = "hello world <|user|>"
    assert gguf_tokenizer.encode(text) == tokenizer.encode(text)
    assert gguf_tokenizer.eos_token == "</s>"
    assert gguf_tokenizer.chat_template == "{{ messages[0]['content'] }}"
    assert models.resolve_model(str(path)) == converted  # cached


def test_non_llama_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARP_MLX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "other.gguf"
    mx.save_gguf(str(path), {"token_embd.weight": mx.zeros((4, 4))},
                 {"general.architecture": "gpt2"})
    with pytest.raises(gguf.GGUFError, match="'gpt2' is not supported"):
        models.resolve_model(str(path))
    assert not list((tmp_path / "cache").glob("models/*"))
