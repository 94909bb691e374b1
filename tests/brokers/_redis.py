"""Helpers for Redis tests: private redis-server / sentinel processes, raw captures."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def need_redis_server() -> str:
    """The redis-server binary: skip without it (fail under CI=true)."""
    if REDIS_SERVER is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("redis-server binary not installed (CI=true: a failure, not a skip)")
        pytest.skip("redis-server binary not installed")
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class RedisProcess:
    """A redis-server (or sentinel) on a loopback port, in a temp dir; restartable."""

    def __init__(self, port: int, workdir: Path, *args: str, config: str | None = None) -> None:
        self.port = port
        self.workdir = workdir
        self.args = list(args)
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        binary = need_redis_server()
        cmd = [binary]
        if self.config is not None:
            conf = self.workdir / f"sentinel-{self.port}.conf"
            if not conf.exists():
                conf.write_text(self.config)
            cmd += [str(conf), "--sentinel"]
        cmd += [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--logfile", str(self.workdir / f"{self.port}.log"),
            *(a.replace("{port}", str(self.port)) for a in self.args),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_processes() -> Iterator[Callable[..., RedisProcess]]:
    """``spawn(*args, config=None)`` starts servers in a temp dir; all are killed at the end."""
    with tempfile.TemporaryDirectory(prefix="aiocelev-redis-") as tmp:
        started: list[RedisProcess] = []

        def spawn(*args: str, config: str | None = None) -> RedisProcess:
            server = RedisProcess(free_port(), Path(tmp), *args, config=config)
            started.append(server)
            return server.start()

        try:
            yield spawn
        finally:
            for server in started:
                server.stop()


def make_tls_files(workdir: Path) -> dict[str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1 (needs the openssl binary)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=workdir, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=aiocelev-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (workdir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return {name: str(workdir / f"{name}.pem") for name in ("ca", "server")} | {
        "key": str(workdir / "server.key")
    }
