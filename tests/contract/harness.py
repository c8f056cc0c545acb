"""Starts the real ``keel serve`` for the contract stage: in-memory storage, a free
loopback port, one bearer token with the roles admin and worker (so every operation of
both documents is authorized), stopped with SIGTERM (which must exit 0)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Fixed, so that a request is the same bytes in every run (the stage is deterministic).
TOKEN = "contract-stage-token"


def keel_binary() -> Path:
    return Path(os.environ.get("KEEL_BIN") or REPO_ROOT / "target" / "debug" / "keel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keel:
    def __init__(self, log_path: Path) -> None:
        binary = keel_binary()
        if not binary.is_file():
            raise RuntimeError(f"keel binary not found at {binary}: cargo build, or set KEEL_BIN")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = log_path
        env = dict(os.environ, KEEL_TOKENS=f"admin+worker:{TOKEN}", RUST_LOG="warn")
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(binary), "serve", "--storage", "memory", "--listen", f"127.0.0.1:{self.port}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"keel did not become healthy:\n{self.log_tail()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
