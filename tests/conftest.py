"""Tiny random models (llama, qwen2) written as mlx-lm directories, with a byte-level tokenizer."""

import json
from pathlib import Path

import mlx.core as mx  # pytest loads sharp_mlx (and so OpenBLAS) first: see pyproject.toml
import numpy as np
import pytest
from mlx_lm.utils import _get_classes, save_config, save_model

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 260,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
    "bos_token_id": 256,
    "eos_token_id": 257,
}


def write_tokenizer(out: Path) -> None:
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + 4 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<s>", "</s>", "<|user|>", "<|assistant|>"])
    tokenizer.save(str(out / "tokenizer.json"))
    template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "</s>", "chat_template": template,
    }))


def make_model_dir(out: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    config = {**TINY, "model_type": model_type, **overrides}
    if model_type == "qwen2":
        config.setdefault("attention_bias", True)
    mx.random.seed(seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config(config, out / "config.json")
    write_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", seed=1)


WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing songs".split()


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """An mlx-lm style data directory of random-word texts (120 / 12 / 12 lines of 40 words)."""
    out = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("valid", 12), ("test", 12)):
        lines = [json.dumps({"text": " ".join(rng.choice(WORDS, 40))}) for _ in range(n)]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return out
