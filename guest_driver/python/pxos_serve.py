"""pxos_serve: an OpenAI-compatible completions server inside a guest (standard library only,
besides pxos_llm).

It opens the shared model through /dev/pxosN once (pxos_llm.LlamaRunner: the compiled
kernels and this VM's KV cache) and answers over HTTP:

- ``POST /v1/completions`` with ``prompt`` (a string, or a list of one), ``max_tokens``
  (default 16, at most MAX_TOKENS and what the KV cache holds), ``stream`` (server-sent
  events, one ``data:`` chunk per piece of text, the last one with ``finish_reason`` and
  ``usage``, then ``data: [DONE]``) and ``ignore_eos`` (vLLM's extension: always
  ``max_tokens`` tokens). Decoding is greedy: ``temperature`` and the other sampling fields
  are accepted and ignored. ``finish_reason`` is ``stop`` (end of generation token) or
  ``length``.
- ``GET /health``: ``{"status": "ok", ...}`` once the model is open; ``GET /v1/models``.

One generation runs at a time (one KV cache); other requests wait their turn, which is
what a saturated VM's queue is. A client that goes away stops its generation at the next
token (``should_stop``). Bad requests get a 400 with OpenAI's error object, and the server
carries on; a device error is a 503 for that request only.

    python -m pxos_serve --model smollm2 --port 8000 [--ctx 512] [--class INTERACTIVE]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pxos_guest as px
import pxos_llm

DEFAULT_PORT = 8000
#: A request body larger than this is refused unread: a client cannot make the guest hold
#: an arbitrary amount of JSON.
MAX_BODY_BYTES = 256 << 10
#: Tokens one request may ask for (the KV cache bounds it further).
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 16
#: Requests waiting for the generator at once; more get a 503 rather than a thread each.
MAX_WAITING = 64
#: Connections open at once (a thread each); more are closed unanswered.
MAX_CONNECTIONS = 256
#: How often the server checks that its VM still exists (a removed VM ends it within this).
WATCH_PERIOD_S = 0.5
#: Seconds a connection may sit idle in a read or a write before it is dropped.
CONNECTION_TIMEOUT_S = 120
#: Marker on the console once the server listens (the host waits for it).
MARK_SERVING = "PXOS-SERVING"


class BadRequest(ValueError):
    """The request is not one this server answers (a 400, with the reason)."""


def parse_request(body: bytes) -> dict:
    """The completion request's fields, typed and in range, or BadRequest."""
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string (or a list of one)")
    max_tokens = req.get("max_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadRequest(f"'max_tokens' must be an integer from 1 to {MAX_TOKENS}")
    flags = {}
    for name in ("stream", "ignore_eos"):
        value = req.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"'{name}' must be true or false")
        flags[name] = value
    if req.get("n", 1) != 1:
        raise BadRequest("'n' other than 1 is not supported")
    return {"prompt": prompt, "max_tokens": max_tokens, **flags}


class Engine:
    """The runner and the lock that gives it to one request at a time."""

    def __init__(self, runner, model: str):
        self.runner, self.model = runner, model
        self.lock = threading.Lock()
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)
        self.served = 0
        self.started = time.time()

    def complete(self, req: dict, on_text=None, should_stop=None):
        """Tokenize (outside the lock: a long prompt does not hold up the others), check it
        fits the KV cache (ValueError), then generate in turn."""
        tok = self.runner.tokenizer
        ids = tok.encode(req["prompt"])
        if not ids or len(ids) + req["max_tokens"] - 1 > self.runner.ctx:
            raise ValueError(f"{len(ids)} prompt tokens + max_tokens {req['max_tokens']} do not fit the "
                             f"{self.runner.ctx}-position context")
        with self.lock:
            res = self.runner.generate_ids(ids, req["max_tokens"], on_text=on_text, prompt=req["prompt"],
                                           stop_at_eog=not req["ignore_eos"], should_stop=should_stop)
            self.served += 1
        res.text = tok.decode(res.tokens)
        return res


def _finish_reason(res) -> str:
    return "stop" if res.stopped == "eog" else "length"


def _usage(res) -> dict:
    return {"prompt_tokens": len(res.prompt_tokens), "completion_tokens": len(res.tokens),
            "total_tokens": len(res.prompt_tokens) + len(res.tokens)}


class Handler(BaseHTTPRequestHandler):
    server_version = "pxos-serve/1"
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S
    engine: Engine  # set on the subclass made by make_server

    def log_message(self, fmt, *args) -> None:  # the console is the guest's; keep it for results
        pass

    # ---- plumbing ----
    def _json(self, status: int, obj: dict, *, close: bool = False) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, close=True)

    def _client_gone(self) -> bool:
        """True once the client closed its end (readable with nothing to read)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            return bool(r) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ---- routes ----
    def do_GET(self) -> None:
        e = self.engine
        if self.path == "/health":
            self._json(200, {"status": "ok", "model": e.model, "ctx": e.runner.ctx, "served": e.served,
                             "uptime_s": round(time.time() - e.started, 3)})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": e.model, "object": "model", "owned_by": "pxos"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path != "/v1/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a Content-Length is required")
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            self._error(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
            return
        try:
            req = parse_request(self.rfile.read(length))
        except BadRequest as e:
            self._error(400, str(e))
            return
        if not self.engine.waiting.acquire(blocking=False):
            self._error(503, "too many requests waiting", "server_busy")
            return
        try:
            (self._stream if req["stream"] else self._whole)(req)
        finally:
            self.engine.waiting.release()

    def _whole(self, req: dict) -> None:
        try:
            res = self.engine.complete(req, should_stop=self._client_gone)
        except ValueError as e:  # the prompt does not fit the KV cache
            self._error(400, str(e))
            return
        except px.PxosDeviceError as e:
            self._error(503, f"the device failed: {e}", "device_error")
            return
        self._json(200, {"id": f"cmpl-{time.monotonic_ns():x}", "object": "text_completion", "created": int(time.time()),
                         "model": self.engine.model,
                         "choices": [{"index": 0, "text": res.text, "finish_reason": _finish_reason(res),
                                      "logprobs": None}],
                         "usage": _usage(res)})

    def _stream(self, req: dict) -> None:
        cid, created, model = f"cmpl-{time.monotonic_ns():x}", int(time.time()), self.engine.model
        started = False
        gone = False

        def chunk(text: str, finish: str | None, usage: dict | None = None) -> bytes:
            obj = {"id": cid, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
            if usage is not None:
                obj["usage"] = usage
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def send(data: bytes) -> None:
            nonlocal started, gone
            if gone:
                return
            try:
                if not started:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.close_connection = True
                    self.end_headers()
                    started = True
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                gone = True

        try:
            res = self.engine.complete(req, on_text=lambda piece: send(chunk(piece, None)),
                                       should_stop=lambda: gone or self._client_gone())
        except ValueError as e:
            if not started:
                self._error(400, str(e))
            return
        except px.PxosDeviceError as e:
            if not started:
                self._error(503, f"the device failed: {e}", "device_error")
            else:
                send(b'data: {"error": {"message": ' + json.dumps(str(e)).encode() + b', "type": "device_error"}}\n\n')
            return
        send(chunk("", _finish_reason(res), _usage(res)))
        send(b"data: [DONE]\n\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)  # too many open: closed unanswered
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


def make_server(engine: Engine, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> Server:
    return Server((host, port), type("BoundHandler", (Handler,), {"engine": engine}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pxos_serve", description="OpenAI-compatible completions through pxOS.")
    p.add_argument("--device", default=None, help="default $PXOS_DEVICE or /dev/pxos0")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--ctx", type=int, default=512, help="KV cache positions (prompt + completion)")
    p.add_argument("--class", dest="wclass", default="NONE", choices=list(px.CLASSES))
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0 to 65535")
    with px.Device(args.device) as dev:
        try:
            runner = pxos_llm.LlamaRunner(dev, args.model, ctx=args.ctx, class_hint=args.wclass)
            _ = runner.tokenizer  # built now: the first request should not pay for it
        except (px.PxosDeviceError, ValueError) as e:
            print(f"pxos_serve: {e}", file=sys.stderr)
            return 1
        server = make_server(Engine(runner, args.model), args.host, args.port)
        host, port = server.server_address[:2]
        gone: list[str] = []
        threading.Thread(target=_watch_device, args=(dev, server, gone), name="pxos-watch", daemon=True).start()
        print(f"{MARK_SERVING} {host}:{port} model={args.model} ctx={runner.ctx} class={args.wclass}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            runner.close()
        if gone:
            print(f"pxos_serve: stopping: {gone[0]}", file=sys.stderr)
            return 1
    return 0


def _watch_device(dev: px.Device, server: Server, gone: list[str]) -> None:
    """Ask the device for its stats every WATCH_PERIOD_S: once the operator has removed the
    VM (VMGone), stop serving, so the server exits within about a second, saying why,
    instead of answering 503 for ever."""
    while True:
        time.sleep(WATCH_PERIOD_S)
        try:
            dev.stats()
        except px.VMGone as e:
            gone.append(str(e))
            server.shutdown()
            return
        except px.PxosDeviceError:
            pass  # busy or transient: the requests themselves report it


if __name__ == "__main__":
    sys.exit(main())
