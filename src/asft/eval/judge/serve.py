"""A local judge: vLLM's OpenAI-compatible server of the judge model, started by the score job.

`eval.judge.serve: <model>` (a hub id or a folder) runs `python -m vllm.entrypoints.openai.api_server`
on a free local port for the job's duration, waits until it lists the model, and stops it after. The
annotator then calls it like any endpoint (chat completions with logprobs, which vLLM serves).
GPU-only: real code selected by config, never run in this repository's tests (no GPU here).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

READY_TIMEOUT_S = 1800  # loading a 70B judge from disk can take many minutes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lists_model(base_url: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            return any(m.get("id") == model for m in json.load(response).get("data", []))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def local_judge_server(model: str, *, tensor_parallel: int = 1, log: Path | None = None) -> Iterator[str]:
    """Serve `model` with vLLM on localhost; yields its base URL (http://127.0.0.1:<port>/v1)."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port),
               "--tensor-parallel-size", str(tensor_parallel), "--max-logprobs", "20"]
    sink = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + READY_TIMEOUT_S
        while not _lists_model(base_url, model):
            if server.poll() is not None:
                raise RuntimeError(f"eval.judge.serve: the vLLM server of {model} exited with {server.returncode}"
                                   + (f"; see {log}" if log else ""))
            if time.time() > deadline:
                raise RuntimeError(f"eval.judge.serve: the vLLM server of {model} was not ready in {READY_TIMEOUT_S} s")
            time.sleep(5)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        if log:
            sink.close()
