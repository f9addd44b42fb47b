"""A loopback server speaking the OpenAI chat-completions shape, for the CLI's failure tests.

    python -m tests.chat_server --reply "Paris" --hang-at 3      # prints its port, then serves

Replies: the `--reply` texts in order (the last one repeats). At request number N (1-based, counted over
POST /v1/chat/completions) it can instead: --kill-at N (SIGKILL itself mid-request: the client sees the
connection drop, then refusals), --hang-at N (never answer this request or any later one), --garbage-at N
(answer bytes that are not HTTP), --notjson-at N (HTTP 200 whose body is not JSON). Any other path is 404.
Each request's JSON body is appended to --record FILE (one line each) when given.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "model": "loopback",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


class ChatServer:
    def __init__(self, replies: list[str], kill_at: int = 0, hang_at: int = 0, garbage_at: int = 0,
                 notjson_at: int = 0, record: str | None = None, port: int = 0) -> None:
        self.replies = list(replies) or ["ok"]
        self.kill_at, self.hang_at, self.garbage_at, self.notjson_at = kill_at, hang_at, garbage_at, notjson_at
        self.record = record
        self.count = 0
        self.bodies: list[dict] = []
        self.release = threading.Event()   # set to let hung requests go (thread mode, on close)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self.answer(404, b'{"error": {"message": "not found"}}')
                with server.lock:
                    server.count += 1
                    n = server.count
                    try:
                        server.bodies.append(json.loads(body))
                    except ValueError:
                        server.bodies.append({})
                    if server.record:
                        with open(server.record, "a", encoding="utf-8") as fh:
                            fh.write(json.dumps(server.bodies[-1]) + "\n")
                if server.kill_at and n >= server.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if server.hang_at and n >= server.hang_at:
                    server.release.wait()
                    return None
                if server.garbage_at and n == server.garbage_at:
                    self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
                    return None
                if server.notjson_at and n == server.notjson_at:
                    return self.answer(200, b"<html>it works</html>")
                text = server.replies[min(n, len(server.replies)) - 1]
                return self.answer(200, json.dumps(completion(text)).encode())

            def answer(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ChatServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reply", action="append", default=[])
    for name in ("kill-at", "hang-at", "garbage-at", "notjson-at"):
        p.add_argument(f"--{name}", type=int, default=0)
    p.add_argument("--record", default=None)
    a = p.parse_args(argv)
    server = ChatServer(a.reply, a.kill_at, a.hang_at, a.garbage_at, a.notjson_at, a.record)
    print(server.port, flush=True)
    try:
        server.httpd.serve_forever(poll_interval=0.02)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ChatServer", "completion", "free_port"]
