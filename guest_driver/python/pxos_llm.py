"""pxos_llm: greedy text generation with a shared LLaMA-family model, through /dev/pxosN.

The model's weights live on the host, loaded once by the operator and shared read-only
by every VM (MODEL_OPEN); this program holds only what is its own: the KV cache of every
layer, the activations and two one-token buffers, all in its VM's memory quota. It
tokenizes the prompt exactly as llama.cpp does for the model's file (pxos_tokenizer,
built from the model's metadata), then runs one forward pass per token as a chain of
launches: ``embed`` (a GATHER of the token rows), one ``layer`` per block (RMSNorm,
q/k/v projections, RoPE, the KV-cache append at the token's position, grouped-query
attention with a causal mask, the output projection, the SiLU-gated FFN, both residual
adds), and ``head`` (the final norm, the tied output projection and an ARGMAX), which
writes 4 bytes: the next token. Only those 4 bytes come back to the guest.

Decoding is pipelined: the next token stays on the device, where the next step's
``embed`` reads it, so the guest queues step k+1 before it has read token k, and the
device never waits for the guest. Two token buffers alternate; a step's ``head`` is
submitted only once the token it overwrites has been read.

Usage in a guest (the host's Python over virtio-9p, see qemu/initramfs.py)::

    python pxos_llm.py --model smollm2 --prompt "The capital of France is" --max-tokens 32 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pxos_guest as px

#: Launches this program keeps in flight at once: under the driver's PXOS_MAX_SUBMITTED
#: (64 un-reaped submits per session) with room for the READs of the tokens.
MAX_INFLIGHT = 48
ARCHITECTURES = ("llama", "mistral", "granite")


#: Params a layer binds (besides x and pos): what LAYERS_PER_LAUNCH is bounded by, since a
#: kernel has at most 32 params (PXOS_MAX_PARAMS): 2 + 2 x 11 = 24.
LAYER_PARAMS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "wg", "wu", "wd", "kc", "vc")
#: Layers one launch runs. Two halve the launches (and the guest's requests) of a token
#: against one, while a launch's working set stays two layers (what overcommit streams).
LAYERS_PER_LAUNCH = 2


def _layer_code(cfg: dict, f: str, j: str) -> tuple[str, str]:
    """The params and the statements of one decoder block, its params suffixed with ``j``."""
    d, h, hkv, hd, ff = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"], cfg["n_ff"]
    eps, base = repr(float(cfg["rms_eps"])), repr(float(cfg["rope_base"]))
    g = h // hkv  # query heads per KV head (grouped-query attention)
    scale = repr(float(hd) ** -0.5)
    params = f"""GPU_PARAM attn_norm{j} {f}[{d}]
GPU_PARAM wq{j} {f}[{h * hd}, {d}]
GPU_PARAM wk{j} {f}[{hkv * hd}, {d}]
GPU_PARAM wv{j} {f}[{hkv * hd}, {d}]
GPU_PARAM wo{j} {f}[{d}, {h * hd}]
GPU_PARAM ffn_norm{j} {f}[{d}]
GPU_PARAM wg{j} {f}[{ff}, {d}]
GPU_PARAM wu{j} {f}[{ff}, {d}]
GPU_PARAM wd{j} {f}[{d}, {ff}]
GPU_PARAM kc{j} {f}[{hkv}, S, {hd}]
GPU_PARAM vc{j} {f}[{hkv}, S, {hd}]
"""
    code = f"""    RMSNORM x attn_norm{j} eps={eps} -> hn
    LINEAR hn wq{j} -> q
    LINEAR hn wk{j} -> k
    LINEAR hn wv{j} -> v
    RESHAPE q shape=[T, {h}, {hd}] -> q3
    RESHAPE k shape=[T, {hkv}, {hd}] -> k3
    RESHAPE v shape=[T, {hkv}, {hd}] -> v3
    ROPE q3 pos axis=0 base={base} -> qr
    ROPE k3 pos axis=0 base={base} -> kr
    PERMUTE kr axes=[1, 0, 2] -> kt
    PERMUTE v3 axes=[1, 0, 2] -> vt
    SLICE_WRITE kt axis=1 start=pos -> kc{j}
    SLICE_WRITE vt axis=1 start=pos -> vc{j}
    PERMUTE qr axes=[1, 0, 2] -> qt
    RESHAPE qt shape=[{hkv}, {g}, T, {hd}] -> qg
    RESHAPE kc{j} shape=[{hkv}, 1, S, {hd}] -> kg
    RESHAPE vc{j} shape=[{hkv}, 1, S, {hd}] -> vg
    LINEAR qg kg -> scores
    MUL scores {scale} -> scaled
    CAUSAL_MASK scaled pos -> masked
    SOFTMAX masked axis=-1 -> probs
    PARALLEL_MATMUL probs vg -> og
    RESHAPE og shape=[{h}, T, {hd}] -> oh
    PERMUTE oh axes=[1, 0, 2] -> ot
    RESHAPE ot shape=[T, {h * hd}] -> o
    LINEAR o wo{j} -> attn
    ADD x attn -> x
    RMSNORM x ffn_norm{j} eps={eps} -> hf
    LINEAR hf wg{j} -> gate
    LINEAR hf wu{j} -> up
    SILU gate -> act
    MUL act up -> m
    LINEAR m wd{j} -> down
    ADD x down -> x
"""
    return params, code


def llama_source(cfg: dict, dtype: str = "float32") -> str:
    """The primitive program of one LLaMA-family forward pass: ``embed`` (the token rows),
    ``layer`` (one decoder block), ``layer2`` (two blocks in one launch), ``head`` (the final
    norm, the output projection and the ARGMAX) and ``head_logits`` (the same head returning
    every logit, for checks). Sizes come from the model's config; ``T`` (tokens in this
    pass) and ``S`` (the KV cache's length) are symbols bound at launch."""
    d, v, f = cfg["n_embd"], cfg["n_vocab"], dtype
    eps = repr(float(cfg["rms_eps"]))
    p1, c1 = _layer_code(cfg, f, "")
    p2a, c2a = _layer_code(cfg, f, "0")
    p2b, c2b = _layer_code(cfg, f, "1")
    head_params = f"""GPU_PARAM x {f}[T, {d}]
GPU_PARAM last int
GPU_PARAM norm {f}[{d}]
GPU_PARAM out_w {f}[{v}, {d}]
"""
    head_code = f"""    SLICE x axis=0 start=last size=1 -> xl
    RMSNORM xl norm eps={eps} -> hl
    LINEAR hl out_w -> logits
"""
    return f"""# A LLaMA-family forward pass (generated by pxos_llm.llama_source).
GPU_KERNEL embed
GPU_PARAM ids int[T]
GPU_PARAM table {f}[{v}, {d}]
GPU_PARAM x {f}[T, {d}]
GPU_THREAD_CODE:
    GATHER table ids -> x
GPU_END

GPU_KERNEL layer
GPU_PARAM x {f}[T, {d}]
GPU_PARAM pos int
{p1}GPU_THREAD_CODE:
{c1}GPU_END

GPU_KERNEL layer2
GPU_PARAM x {f}[T, {d}]
GPU_PARAM pos int
{p2a}{p2b}GPU_THREAD_CODE:
{c2a}{c2b}GPU_END

GPU_KERNEL head
{head_params}GPU_PARAM tok int[1]
GPU_THREAD_CODE:
{head_code}    ARGMAX logits axis=-1 -> tok
GPU_END

GPU_KERNEL head_logits
{head_params}GPU_PARAM logits {f}[1, {v}]
GPU_THREAD_CODE:
{head_code}GPU_END
"""


@dataclass
class Result:
    prompt: str
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    ttft_s: float = 0.0  # prompt submitted -> first token read
    decode_s: float = 0.0  # first token -> last token
    total_s: float = 0.0
    stopped: str = "length"  # "length" | "eog" | "cancelled" (should_stop said so)
    launches: int = 0
    device_ns: int = 0  # device time the host charged to this generation

    @property
    def tokens_per_s(self) -> float:
        n = len(self.tokens) - 1  # tokens produced by decode steps, after the first
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def as_json(self) -> dict:
        return {"prompt": self.prompt, "prompt_tokens": self.prompt_tokens, "tokens": self.tokens,
                "text": self.text, "ttft_s": round(self.ttft_s, 6), "decode_s": round(self.decode_s, 6),
                "total_s": round(self.total_s, 6), "tokens_per_s": round(self.tokens_per_s, 3),
                "stopped": self.stopped, "launches": self.launches, "device_ns": self.device_ns}


class LlamaRunner:
    """One model opened on a device session, compiled once, with its own KV cache of
    ``ctx`` positions; ``generate`` may be called again (the cache is reused)."""

    def __init__(self, dev, model: str = "smollm2", *, ctx: int = 512, class_hint: str = "NONE",
                 priority: int | None = None, layers_per_launch: int = LAYERS_PER_LAUNCH):
        if layers_per_launch not in (1, 2):
            raise ValueError("layers_per_launch is 1 or 2 (a kernel has at most 32 params)")
        self.dev, self.class_hint, self.priority = dev, class_hint, priority
        self.layers_per_launch = layers_per_launch
        self.model = dev.open_model(model)
        meta = self.model.meta
        if meta.get("architecture") not in ARCHITECTURES:
            raise ValueError(f"model {model} is a {meta.get('architecture')!r}, not a LLaMA-family model")
        self.cfg = cfg = meta["config"]
        self.dtype = np.dtype(meta["dtype"])
        self._tokenizer = None
        self.ctx = min(int(ctx), int(cfg["n_ctx"]))
        self.kernels = dev.compile(llama_source(cfg, self.dtype.name))
        w = self.model.tensors
        out_w = w.get("output.weight", w["token_embd.weight"])
        self.embed_w, self.head_w = {"table": w["token_embd.weight"]}, {"norm": w["output_norm.weight"],
                                                                          "out_w": out_w}
        shape = (cfg["n_head_kv"], self.ctx, cfg["head_dim"])
        self.layers = []
        for i in range(cfg["n_layer"]):
            p = f"blk.{i}."
            self.layers.append({
                "attn_norm": w[p + "attn_norm.weight"], "wq": w[p + "attn_q.weight"], "wk": w[p + "attn_k.weight"],
                "wv": w[p + "attn_v.weight"], "wo": w[p + "attn_output.weight"], "ffn_norm": w[p + "ffn_norm.weight"],
                "wg": w[p + "ffn_gate.weight"], "wu": w[p + "ffn_up.weight"], "wd": w[p + "ffn_down.weight"],
                "kc": dev.alloc(self.dtype, shape), "vc": dev.alloc(self.dtype, shape)})
        self.toks = [dev.alloc(np.int32, (1,)), dev.alloc(np.int32, (1,))]
        self.x1 = dev.alloc(self.dtype, (1, cfg["n_embd"]))

    @property
    def tokenizer(self):
        """Built from the model's metadata on first use (a second or so for 50k tokens)."""
        if self._tokenizer is None:
            from pxos_tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_metadata(self.model.meta["tokenizer"])
        return self._tokenizer

    # ---- launches ----
    def _layer_launches(self) -> list[tuple]:
        """(kernel, bindings) of the blocks, LAYERS_PER_LAUNCH at a time (x and pos apart)."""
        out, k, n = [], self.kernels, self.layers_per_launch
        for i in range(0, len(self.layers), n):
            group = self.layers[i:i + n]
            if len(group) == 2:
                out.append((k["layer2"], {f"{p}{j}": layer[p] for j, layer in enumerate(group) for p in LAYER_PARAMS}))
            else:
                out += [(k["layer"], dict(layer)) for layer in group]
        return out

    def _pass(self, ids, x, pos: int, last: int, out) -> list[tuple]:
        """The launches of one forward pass, in order: (kernel, bindings)."""
        k = self.kernels
        seq = [(k["embed"], {"ids": ids, "x": x, **self.embed_w})]
        seq += [(kernel, {"x": x, "pos": pos, **b}) for kernel, b in self._layer_launches()]
        seq.append((k["head"], {"x": x, "last": last, "tok": out, **self.head_w}))
        return seq

    def _prepare_decode(self) -> None:
        """Decode steps differ only in the token buffers (two, alternating) and ``pos``: their
        launches are prepared once and resubmitted with a new ``pos``."""
        if getattr(self, "_decode", None) is not None:
            return
        kw = {"priority": self.priority, "class_hint": self.class_hint}
        k, dev = self.kernels, self.dev
        self._decode = {
            "embed": [dev.prepare(k["embed"], ids=self.toks[1 - par], x=self.x1, **self.embed_w, **kw)
                      for par in (0, 1)],
            "layers": [dev.prepare(kernel, x=self.x1, pos=0, **b, **kw) for kernel, b in self._layer_launches()],
            "head": [dev.prepare(k["head"], x=self.x1, last=0, tok=self.toks[par], **self.head_w, **kw)
                     for par in (0, 1)],
        }

    def _step(self, step: int, pos: int) -> list[tuple]:
        """Decode step ``step`` (>= 1): (prepared launch, pos or None, token buffer or None)."""
        d, par = self._decode, step % 2
        return [(d["embed"][par], None, None), *((p, pos, None) for p in d["layers"]),
                (d["head"][par], None, self.toks[par])]

    def logits(self, token_ids: list[int], feed: list[int] = ()) -> list[np.ndarray]:
        """For checks: the logits after the prompt ``token_ids`` (one pass from position 0),
        then after each token of ``feed``, one decode step at a time (T = 1 at its runtime
        position, through the KV cache), as generation runs them."""
        dev, kw = self.dev, {"priority": self.priority, "class_hint": self.class_hint}
        ids = dev.upload(np.asarray(token_ids, np.int32))
        x = dev.alloc(self.dtype, (len(token_ids), self.cfg["n_embd"]))
        one = dev.alloc(np.int32, (1,))
        logits = dev.alloc(self.dtype, (1, self.cfg["n_vocab"]))
        out = []
        try:
            for step, tok in enumerate([None, *feed]):
                if step == 0:
                    seq = self._pass(ids, x, 0, len(token_ids) - 1, None)[:-1]
                    src = x
                else:
                    one.write(np.asarray([tok], np.int32))
                    seq = self._pass(one, self.x1, len(token_ids) + step - 1, 0, None)[:-1]
                    src = self.x1
                seq.append((self.kernels["head_logits"], {"x": src, "last": src.shape[0] - 1, "logits": logits,
                                                          **self.head_w}))
                for kernel, bindings in seq:
                    dev.launch(kernel, **bindings, **kw)
                out.append(logits.read()[0].astype(np.float32))
            return out
        finally:
            for b in (ids, x, one, logits):
                b.free()

    def prefill_logits(self, token_ids: list[int]) -> np.ndarray:
        """The logits after feeding ``token_ids`` from position 0 (for checks)."""
        return self.logits(token_ids)[0]

    def generate(self, prompt: str, max_tokens: int = 32, *, on_text=None, stop_at_eog: bool = True,
                 should_stop=None) -> Result:
        """Tokenize ``prompt`` as llama.cpp does, generate greedily, detokenize."""
        tok = self.tokenizer
        res = self.generate_ids(tok.encode(prompt), max_tokens, on_text=on_text, stop_at_eog=stop_at_eog,
                                prompt=prompt, should_stop=should_stop)
        res.text = tok.decode(res.tokens)
        return res

    def generate_ids(self, ids: list[int], max_tokens: int = 32, *, on_text=None, stop_at_eog: bool = False,
                     prompt: str = "", should_stop=None) -> Result:
        """Greedy generation from prompt token ids (``res.text`` is left to ``generate``).
        ``should_stop()``, asked after each token, ends it early (``stopped`` "cancelled"):
        a server stops generating for a client that went away."""
        if not ids:
            raise ValueError("the prompt has no tokens")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if len(ids) + max_tokens - 1 > self.ctx:
            raise ValueError(f"{len(ids)} prompt tokens + {max_tokens} new ones do not fit the {self.ctx}-position "
                             "KV cache (raise --ctx)")
        self._prepare_decode()
        res = Result(prompt, list(ids))
        t0 = time.perf_counter()
        ids_buf = self.dev.upload(np.asarray(ids, np.int32))
        x = self.dev.alloc(self.dtype, (len(ids), self.cfg["n_embd"]))
        stream = self.tokenizer.stream() if on_text is not None else None
        self._inflight: deque = deque()
        try:
            self._run(res, ids_buf, x, max_tokens, on_text, stream, stop_at_eog, t0, should_stop)
        finally:
            self._drain()
            ids_buf.free()
            x.free()
        res.total_s = time.perf_counter() - t0
        return res

    def _run(self, res, ids_buf, x, max_tokens, on_text, stream, stop_at_eog, t0, should_stop=None) -> None:
        n = len(res.prompt_tokens)
        kw = {"priority": self.priority, "class_hint": self.class_hint}
        # step 0 (the prompt) is submitted as it is; step k >= 1 feeds token k-1 at position n+k-1
        planned: deque = deque()
        for kernel, bindings in self._pass(ids_buf, x, 0, n - 1, self.toks[0]):
            planned.append((0, self.dev.prepare(kernel, **bindings, **kw), None,
                            self.toks[0] if kernel is self.kernels["head"] else None))
        next_step = 1
        unread: deque = deque()  # steps whose head was submitted and whose token is not read yet
        t_first = None
        per_step = len(self._decode["layers"]) + 2
        while True:
            while next_step < max_tokens and len(planned) < 2 * per_step:
                planned.extend((next_step, *launch) for launch in self._step(next_step, n + next_step - 1))
                next_step += 1
            while planned and len(self._inflight) < MAX_INFLIGHT:
                step, prepared, pos, writes = planned[0]
                if writes is not None and unread and unread[0] == step - 2:
                    break  # this head would overwrite a token not read yet
                planned.popleft()
                if pos is not None:
                    prepared.set("pos", pos)
                self._inflight.append((self.dev.submit_prepared(prepared), writes))
                if writes is not None:
                    unread.append(step)
            if not self._inflight:
                return
            t, writes = self._inflight.popleft()
            r = self.dev.reap(t)
            res.launches += 1
            res.device_ns += r.device_ns
            if writes is None:
                continue
            unread.popleft()
            token = int(writes.read()[0])
            now = time.perf_counter()
            if t_first is None:
                t_first = now
                res.ttft_s = now - t0
            res.tokens.append(token)
            res.decode_s = now - t_first
            if stream is not None:
                piece = stream.push(token)
                if piece:
                    on_text(piece)
            eog = stop_at_eog and self.tokenizer.is_eog(token)
            if eog or len(res.tokens) >= max_tokens:
                res.stopped = "eog" if eog else "length"
                return
            if should_stop is not None and should_stop():
                res.stopped = "cancelled"
                return

    def _drain(self) -> None:
        """Reap what is still in flight (a step begun past the end): it writes only cache
        positions that a later generation overwrites before it reads them."""
        while self._inflight:
            t, _ = self._inflight.popleft()
            try:
                self.dev.reap(t)
            except px.PxosDeviceError:
                pass

    def close(self) -> None:
        """Free the runner's buffers and close the model. A VM the operator removed has
        nothing left to free (pxos-hvd freed it all): the cleanup stops there instead of
        replacing the error being reported."""
        try:
            for layer in self.layers:
                layer["kc"].free()
                layer["vc"].free()
            for b in (*self.toks, self.x1):
                b.free()
            self.model.close()
        except px.VMGone:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pxos_llm", description="Generate text with a shared model through pxOS.")
    p.add_argument("--device", default=None, help="default $PXOS_DEVICE or /dev/pxos0")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompt", action="append", required=True, help="repeatable: one generation each")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--ctx", type=int, default=0, help="KV cache positions (default: what the prompts need)")
    p.add_argument("--class", dest="wclass", default="NONE", choices=list(px.CLASSES))
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    args = p.parse_args(argv)
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1")
    t0 = time.perf_counter()
    with px.Device(args.device) as dev:
        ctx = args.ctx or 0
        runner = None
        try:
            if not ctx:
                # enough for the longest prompt (a byte per token bounds it) and the new tokens
                ctx = max(len(q.encode()) for q in args.prompt) + args.max_tokens + 8
                ctx = -(-ctx // 64) * 64
            runner = LlamaRunner(dev, args.model, ctx=ctx, class_hint=args.wclass)
            setup_s = time.perf_counter() - t0
            for prompt in args.prompt:
                if args.json:
                    res = runner.generate(prompt, args.max_tokens, stop_at_eog=not args.ignore_eos)
                    out = res.as_json()
                    out["setup_s"] = round(setup_s, 3)
                    print(json.dumps(out, ensure_ascii=False), flush=True)
                else:
                    sys.stdout.write(prompt)
                    res = runner.generate(prompt, args.max_tokens, stop_at_eog=not args.ignore_eos,
                                          on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
                    print(f"\n[{len(res.prompt_tokens)} prompt tokens, {len(res.tokens)} generated, ttft "
                          f"{res.ttft_s:.3f} s, {res.tokens_per_s:.1f} tokens/s]", flush=True)
        except px.PxosDeviceError as exc:
            print(f"pxos_llm: {exc}", file=sys.stderr)
            return 1
        finally:
            if runner is not None:
                runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
