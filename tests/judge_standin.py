"""A stand-in judge for the AlpacaEval tests: an OpenAI-compatible chat-completions server on localhost.

It answers the way `weighted_alpaca_eval_gpt4_turbo` asks to be answered: one output token, 'm' (the
first output is better) or 'M' (the second), with the top log-probabilities of both. Its rule is
simple and deterministic: the longer output wins with probability 0.8 (equal lengths: 0.5). It can
fail its first requests (`fail_first`, e.g. [500, 429]) to exercise retries, and it counts the
requests it answered, so a test can show that a second run asks nothing.

`calibration_cache` writes a synthetic stand-in of alpaca-eval's length-control calibration file
(`df_gamed.csv` of the hub dataset tatsu-lab/alpaca_eval: two "gamed" baselines, a verbose and a
concise one, on all 805 instructions) into a Hugging Face cache folder, so the length-controlled win
rate runs offline. Its numbers are made up: the win rates of these tests test the path, not a model.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OUTPUT = re.compile(r'"output": """(.*?)"""', re.DOTALL)
CALIBRATION_REVISION = "0" * 40


class JudgeStandIn:
    """`with JudgeStandIn(fail_first=[500, 429]) as judge:` ... `judge.base_url`, `judge.requests`."""

    def __init__(self, fail_first: list[int] | None = None, prefer: float = 0.8):
        self.fail_first = list(fail_first or [])
        self.prefer = prefer
        self.requests = 0  # answered with a verdict
        self.failed = 0  # answered with an injected error
        self.models: list[str] = []
        self.auth: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> JudgeStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def verdict(self, messages: list[dict]) -> float:
        """p('m'): the probability that the first output is better."""
        text = "\n".join(m.get("content", "") for m in messages if isinstance(m.get("content"), str))
        outputs = OUTPUT.findall(text)
        if len(outputs) != 2:
            raise ValueError(f"expected two outputs in the judge prompt, found {len(outputs)}")
        first, second = (len(o) for o in outputs)
        return 0.5 if first == second else (self.prefer if first > second else 1 - self.prefer)

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # the client's backoff, kept short for tests
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge._lock:
                    status = judge.fail_first.pop(0) if judge.fail_first else None
                    if status:
                        judge.failed += 1
                if status:
                    self._send(status, {"error": {"message": f"injected {status}", "type": "server_error"}})
                    return
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                p_first = judge.verdict(body["messages"])
                with judge._lock:
                    judge.requests += 1
                    judge.models.append(body.get("model"))
                    judge.auth.append(self.headers.get("Authorization", ""))
                logprob = {"m": math.log(max(p_first, 1e-9)), "M": math.log(max(1 - p_first, 1e-9))}
                token = "m" if p_first >= 0.5 else "M"
                top = [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                       for t, lp in sorted(logprob.items(), key=lambda kv: -kv[1])]
                self._send(200, {
                    "id": f"standin-{judge.requests}", "object": "chat.completion", "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": token},
                                 "logprobs": {"content": [{"token": token, "logprob": logprob[token],
                                                           "bytes": list(token.encode()), "top_logprobs": top}]}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
                })

        return Handler


def calibration_cache(hub_cache: Path, n_instructions: int = 805) -> Path:
    """A synthetic df_gamed.csv where `hf_hub_download('tatsu-lab/alpaca_eval', 'df_gamed.csv',
    repo_type='dataset')` finds it offline (HF_HUB_CACHE = `hub_cache`). Returns the file."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 1.0, n_instructions)
    frames = []
    for model, delta in (("gpt4_1106_preview_verbose", -1.0), ("gpt4_1106_preview_concise", 1.0)):
        std_delta_len = delta + rng.normal(0.0, 0.3, n_instructions)
        logit = -0.8 * np.tanh(std_delta_len) - 0.4 * difficulty
        frames.append(pd.DataFrame({
            "model": model, "index": np.arange(n_instructions), "preference": 1 / (1 + np.exp(-logit)),
            "std_delta_len": std_delta_len, "instruction_difficulty": difficulty, "not_gamed_baseline": False,
        }))
    folder = Path(hub_cache) / "datasets--tatsu-lab--alpaca_eval"
    snapshot = folder / "snapshots" / CALIBRATION_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(CALIBRATION_REVISION)
    path = snapshot / "df_gamed.csv"
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path
