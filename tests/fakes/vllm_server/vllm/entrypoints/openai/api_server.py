"""A fake vLLM OpenAI server: the command line of the real one, a few of its endpoints.

Speaks `GET /health`, `GET /metrics` (vLLM's gauge names), `GET /v1/models`,
`POST /v1/chat/completions` (streamed or not), `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` (only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, as vLLM), and
checks the bearer key of `/v1/*` against VLLM_API_KEY, as vLLM does.

Told what to do by its environment:
    FAKE_VLLM_EXIT=N         exit with status N at once (a server that cannot start)
    FAKE_VLLM_STARTUP_S=S    listen only after S seconds (loading)
    FAKE_VLLM_TERM=S|ignore  on SIGTERM, exit after S seconds (default 0), or never
    FAKE_VLLM_CHILD=1        start a child process that sleeps (vLLM's engine process)
    FAKE_VLLM_LINES=N        print N lines at start (log rotation)
    FAKE_VLLM_CONTROL=DIR    DIR/unhealthy present: /health answers 503
A user message `slow:S` is answered after S seconds. It prints its command line and the
environment cumulo gives it (JSON lines starting with `fake-vllm`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATE = {"running": 0, "prompt_tokens": 0, "generation_tokens": 0}
ADAPTERS: dict[str, str] = {}
LOCK = threading.Lock()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    print("fake-vllm argv " + json.dumps(sys.argv[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "VLLM_", "CUMULO_"))}
    env["VLLM_API_KEY"] = "set" if os.environ.get("VLLM_API_KEY") else ""
    print("fake-vllm env " + json.dumps(env, sort_keys=True), flush=True)
    if "FAKE_VLLM_EXIT" in os.environ:
        print("fake-vllm: cannot start", flush=True)
        sys.exit(int(os.environ["FAKE_VLLM_EXIT"]))
    for i in range(int(os.environ.get("FAKE_VLLM_LINES", "0"))):
        print(f"fake-vllm filler line {i:06d} " + "x" * 80)
    sys.stdout.flush()
    if os.environ.get("FAKE_VLLM_CHILD"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"fake-vllm child {child.pid}", flush=True)
    term = os.environ.get("FAKE_VLLM_TERM", "0")

    def on_term(signum: int, frame: object) -> None:
        print("fake-vllm: SIGTERM", flush=True)
        if term == "ignore":
            return
        threading.Thread(target=lambda: (time.sleep(float(term)), os._exit(0))).start()

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(float(os.environ.get("FAKE_VLLM_STARTUP_S", "0")))
    Handler.served = args.served_model_name
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"fake-vllm: serving {args.served_model_name} on {args.port}", flush=True)
    server.serve_forever()


class Handler(BaseHTTPRequestHandler):
    served = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        print("fake-vllm: " + format % args, flush=True)

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {os.environ.get('VLLM_API_KEY')}":
            self._json(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            control = os.environ.get("FAKE_VLLM_CONTROL")
            sick = control and (Path(control) / "unhealthy").exists()
            self.send_response(503 if sick else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/metrics":
            name = self.served
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f'vllm:num_requests_running{{engine="0",model_name="{name}"}} {STATE["running"]}.0',
                "# TYPE vllm:num_requests_waiting gauge",
                f'vllm:num_requests_waiting{{engine="0",model_name="{name}"}} 0.0',
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="{name}"}} 0.25',
                "# TYPE vllm:prompt_tokens counter",
                f'vllm:prompt_tokens_total{{engine="0",model_name="{name}"}} '
                f"{STATE['prompt_tokens']}.0",
                "# TYPE vllm:generation_tokens counter",
                f'vllm:generation_tokens_total{{engine="0",model_name="{name}"}} '
                f"{STATE['generation_tokens']}.0",
                "# TYPE vllm:e2e_request_latency_seconds histogram",
                f'vllm:e2e_request_latency_seconds_bucket{{le="1.0",model_name="{name}"}} 3.0',
            ]
            data = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/v1/models":
            if self._authorized():
                ids = [self.served, *ADAPTERS]
                self._json(200, {"object": "list", "data": [{"id": i} for i in ids]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self._authorized():
            return
        lora = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True"
        if self.path == "/v1/load_lora_adapter" and lora:
            if not Path(body.get("lora_path", "")).is_dir():
                self._json(400, {"error": {"message": "adapter not found", "code": 400}})
                return
            ADAPTERS[body["lora_name"]] = body["lora_path"]
            print(f"fake-vllm: loaded adapter {body['lora_name']}", flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/unload_lora_adapter" and lora:
            ADAPTERS.pop(body.get("lora_name"), None)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/chat/completions":
            self._chat(body)
        else:
            self._json(404, {"error": "not found"})

    def _chat(self, body: dict) -> None:
        model = body.get("model")
        if model != self.served and model not in ADAPTERS:
            self._json(404, {"error": {"message": f"The model `{model}` does not exist."}})
            return
        text = str(body["messages"][-1].get("content") or "")
        with LOCK:
            STATE["running"] += 1
        try:
            if text.startswith("slow:"):
                time.sleep(float(text[5:]))
            reply = f"fake-vllm {self.server.server_address[1]} {model}"
            usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            with LOCK:
                STATE["prompt_tokens"] += 5
                STATE["generation_tokens"] += 3
            if not body.get("stream"):
                self._json(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 1,
                        "model": model,
                        "usage": usage,
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": reply},
                            }
                        ],
                    },
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for word in reply.split(" "):
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
        finally:
            with LOCK:
                STATE["running"] -= 1


if __name__ == "__main__":
    main()
