"""The router in fleet/router/, run as supervisord runs it on a node, from a release folder, on 127.0.0.1:
its process, its files and a client that signs requests as deployctl does. conftest.py's fixtures
(release, state, start, node) build on these."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deployctl.remote import reqsign

ROUTER_DIR = Path(__file__).resolve().parents[2] / "fleet" / "router"
TOKEN = "tok-4f1c9e2b7a"
ORDER = {"id": "p-1", "symbol": "AAPL", "side": "buy", "quantity": 250, "limit_price": 10.5}


def folder_digest(folder):
    """The release digest of docs/node-layout.md, computed here independently of the router's code."""
    files = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
                   key=lambda path: path.encode("utf-8"))
    text = "".join(f"{hashlib.sha256((folder / path).read_bytes()).hexdigest()}  {path}\n" for path in files)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shipped_files():
    """The relative paths of the router's files, as `deployctl build` packs them (no __pycache__, no .pyc)."""
    return sorted(p.relative_to(ROUTER_DIR).as_posix() for p in ROUTER_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url, method="GET", body=None, raw=None, token=None, timeout=5, fields=None):
    """Send one request, signed with token as deployctl signs it (or with the given header fields);
    return (status, parsed JSON body)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None and fields is None:
        fields = reqsign.headers(token, method, urllib.parse.urlsplit(url).path, data or b"")
    for name, value in (fields or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers["Content-Type"]
    assert kind == "application/json"
    return status, json.loads(payload)


class RouterProcess:
    """router.py running from a release folder, with its stderr in a file.

    python_flags and env default to what supervisord uses (-B, PYTHONDONTWRITEBYTECODE=1).
    """

    def __init__(self, release, state, log_path, python_flags=("-B",), env=None):
        self.port, self.log_path = free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        argv = [sys.executable, *python_flags, str(release / "router.py"), "--state-dir", str(state),
                "--port", str(self.port), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=env if env is not None else {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"router exited {self.proc.returncode}: {self.log()}")
            try:
                return call(self.url + "/health", timeout=1)[1]
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"router not ready after {timeout}s: {self.log()}")

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def health(self):
        return call(self.url + "/health")[1]

    def control(self, action, body=None, token=TOKEN):
        return call(f"{self.url}/control/{action}", "POST", body=body if body is not None else {}, token=token)

    def order(self, body=ORDER, raw=None):
        return call(self.url + "/orders", "POST", body=body, raw=raw)
