"""Real-model checks on the pinned SmolLM2-135M-Instruct (slow: `pytest -m slow`)."""

import pytest
from mlx_lm import generate

from sharp_mlx import data, models
from sharp_mlx.evaluate import perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    model, tokenizer, _, _ = models.load_base(None, dtype="float32")
    return model, tokenizer


def test_wikipedia_perplexity_is_that_of_a_working_model(default_model):
    model, tokenizer = default_model
    test = data.tokenize(data.load_records("wiki", "test"), tokenizer, 512, 8192)
    ppl = perplexity(model, test)
    print(f"wiki test perplexity {ppl.perplexity:.2f} +- {ppl.stderr:.2f} on {ppl.tokens} tokens")
    assert ppl.perplexity < 30  # a wrong Q/K permutation gives thousands


def test_chat_answer_is_coherent(default_model):
    model, tokenizer = default_model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    answer = generate(model, tokenizer, prompt=prompt, max_tokens=30)
    print(answer)
    assert "Paris" in answer
