"""Start a real ``qkdseg kms serve`` on 127.0.0.1 and talk to it over mutual TLS (tests only)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))


def kms_init(directory: Path, network: str = "example", saes=("A=0", "B=7", "C=4"), *extra: str) -> Path:
    args = [QKDSEG, "kms", "init", str(directory), "--network", network]
    for s in saes:
        args += ["--sae", s]
    subprocess.run(args + list(extra), check=True, capture_output=True, text=True, timeout=60)
    return directory


def set_config(directory: Path, **fields) -> None:
    """Change fields of DIR/kms.toml (top-level scalars only)."""
    path = directory / "kms.toml"
    lines = path.read_text().splitlines()
    for name, value in fields.items():
        val = json.dumps(value) if isinstance(value, str) else repr(value)
        for i, line in enumerate(lines):
            if line.startswith(f"{name} = "):
                lines[i] = f"{name} = {val}"
                break
        else:
            raise KeyError(name)
    path.write_text("\n".join(lines) + "\n")


class Server:
    """``qkdseg kms serve DIR --port 0`` as a child process; its stdout+stderr go to ``DIR/server.log``."""

    def __init__(self, directory: Path, args: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.log_path = self.directory / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.args = tuple(args)  # more options of `kms serve` (--dashboard-port 0 ...)
        self.dashboard_url: str | None = None  # "http(s)://127.0.0.1:PORT/dashboard/" when one was started

    def start(self, timeout: float = 60.0) -> "Server":
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "ab")
        self.port = None
        self.proc = subprocess.Popen(
            [QKDSEG, "kms", "serve", str(self.directory), "--port", "0", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start:].decode(errors="replace")
            for line in text.splitlines():
                if "ETSI GS QKD 014 on https://127.0.0.1:" in line:
                    self.port = int(line.split("127.0.0.1:")[1].split("/")[0])
                if "dashboard on http" in line:
                    self.dashboard_url = line.split("dashboard on ")[1].split()[0]
            want_dashboard = any(a.startswith("--dashboard-port") for a in self.args)
            if (self.port is not None and self.proc.poll() is None and _listening(self.port)
                    and (not want_dashboard or self.dashboard_url is not None)):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start in time")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}/api/v1/keys"

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()
        self.port = None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self.log.close()
        return rc

    def log_tail(self, n: int = 4000) -> str:
        """The end of the server's output, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def client(self, sae: str, pki: Path | None = None) -> "Client":
        pki = pki or self.directory / "pki"
        return Client(self, (str(pki / f"{sae}.crt"), str(pki / f"{sae}.key")), str(self.directory / "pki" / "ca.crt"))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Client:
    """Raw HTTPS requests as one SAE (requests, with its client certificate)."""

    def __init__(self, server: Server, cert, ca: str):
        self.server = server
        self.session = requests.Session()
        self.session.cert = cert
        self.ca = ca  # given per request: a session-level verify loses to REQUESTS_CA_BUNDLE in the environment

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(f"{self.server.url}/{path}", timeout=30, verify=self.ca, **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return self.session.post(f"{self.server.url}/{path}", timeout=30, verify=self.ca, **kw)


def consumed_offsets(directory: Path) -> dict[int, int]:
    """Every link's consumed offset (bits) as committed in the database."""
    db = sqlite3.connect(f"file:{directory / 'kms.sqlite3'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT k, consumed FROM links").fetchall())
    finally:
        db.close()


class Device:
    """``qkdseg device serve DIR`` (the QKD device emulator) as a child process; output to ``DIR/device.log``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.log_path = self.directory / "device.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, timeout: float = 60.0) -> "Device":
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([QKDSEG, "device", "serve", str(self.directory)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start:].decode(errors="replace")
            for line in text.splitlines():
                if "ETSI GS QKD 014 on https://127.0.0.1:" in line:
                    self.port = int(line.split("127.0.0.1:")[1].split("/")[0])
            if self.port is not None and self.proc.poll() is None and _listening(self.port):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"device emulator exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("device emulator did not start in time")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self.log.close()
        return rc

    def _operator(self) -> dict:
        pki = self.directory / "pki"
        return {"cert": (str(pki / "device-operator.crt"), str(pki / "device-operator.key")),
                "verify": str(pki / "ca.crt"), "timeout": 30}

    def counters(self) -> dict:
        r = requests.get(f"https://127.0.0.1:{self.port}/qkdseg/v1/counters", **self._operator())
        r.raise_for_status()
        return r.json()

    def fault(self, mode: str, **fields) -> dict:
        r = requests.post(f"https://127.0.0.1:{self.port}/qkdseg/v1/faults", json={"mode": mode, **fields},
                          **self._operator())
        r.raise_for_status()
        return r.json()

    def log_records(self) -> list[dict]:
        """The emulator's own record, DIR/keys.jsonl: one object per call that moved keys."""
        return [json.loads(line) for line in (self.directory / "keys.jsonl").read_text().splitlines() if line]
