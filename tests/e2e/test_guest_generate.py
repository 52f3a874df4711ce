"""SmolLM2 generating text from inside real guests (QEMU, Debian's kernel), two VMs sharing
one copy of the model, one through pxos_gpu.ko (/dev/pxos0), the other through the
kernel's stock virtio_gpu driver (the DRM transport, issue 12), checked against llama.cpp;
and the `pxos-vm generate` command itself."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from hypervisor.models import smollm2_path
from qemu.generate import GENERATE_QUOTA, generate_in_guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PROMPTS = ["The capital of France is", "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"]
N = 12


@pytest.fixture(scope="module")
def llama():
    import llama_cpp

    return llama_cpp.Llama(smollm2_path(), n_ctx=512, logits_all=True, verbose=False)


def _check_against_llama_cpp(llama, res: dict) -> None:
    prompt_ids = llama.tokenize(res["prompt"].encode(), special=True)
    assert res["prompt_tokens"] == prompt_ids
    llama.reset()
    llama.eval(prompt_ids + res["tokens"])
    scores = np.asarray(llama.scores[: len(prompt_ids) + len(res["tokens"])])
    for i, tok in enumerate(res["tokens"]):
        row = scores[len(prompt_ids) - 1 + i]
        assert row.max() - row[tok] <= 0.3, (i, tok, int(row.argmax()))
    assert res["text"] == llama.detokenize(res["tokens"]).decode("utf-8", errors="ignore")


def test_two_guests_generate_from_one_shared_model(guest_artefacts, hvd_factory, tmp_path, llama):
    hvd = hvd_factory({1: GENERATE_QUOTA, 2: GENERATE_QUOTA}, models={"smollm2": smollm2_path()}, pool="1Gi")
    out: dict[int, object] = {}

    def run(vm: int) -> None:
        try:
            out[vm] = generate_in_guest(hvd.sockets[vm], [PROMPTS[vm - 1]], N, ignore_eos=True, name=f"gen{vm}",
                                        log_path=tmp_path / f"gen{vm}.log", timeout=600,
                                        driver="module" if vm == 1 else "stock")
        except Exception as exc:  # reported below, with the console log
            out[vm] = exc

    threads = [threading.Thread(target=run, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(700)
    for vm in (1, 2):
        assert not isinstance(out[vm], Exception), f"{out[vm]}\n{hvd.log_text()[-2000:]}"
        [res] = out[vm].results
        assert len(res["tokens"]) == N and res["tokens_per_s"] > 0 and res["ttft_s"] > 0
        _check_against_llama_cpp(llama, res)
    assert "PXOS-DEVICE /dev/pxos0" in out[1].guest.console
    assert "PXOS-DEVICE /dev/dri/renderD128" in out[2].guest.console  # no pxOS module in VM 2
    [model] = hvd.ctl("model", "list")["models"]
    assert model["bytes"] > 500 << 20  # one copy, shared: the pool holds it once
    stats = hvd.ctl("stats")
    assert stats["device"]["pool_used"] < model["bytes"] + 2 * GENERATE_QUOTA
    assert all(vm["launches_failed"] == 0 for vm in stats["vms"])
    # both guests powered off: their sessions closed the model, it can be removed
    assert hvd.wait_usage(1, lambda used: used == 0)["memory_used"] == 0
    assert hvd.ctl("model", "list")["models"][0]["opens"] == 0


def test_pxos_vm_generate_json(guest_artefacts, llama):
    proc = subprocess.run([sys.executable, "-m", "qemu", "generate", "--prompt", PROMPTS[0], "--max-tokens", "8",
                           "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert {"prompt_tokens", "tokens", "text", "ttft_s", "tokens_per_s"} <= res.keys()
    assert len(res["tokens"]) <= 8
    _check_against_llama_cpp(llama, res)
