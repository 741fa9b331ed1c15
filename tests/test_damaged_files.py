"""Damaged files of a network's directory: every command that reads one answers with one line naming the file and
what is wrong with it, exit 2, no traceback (issue 32). No server starts: each refusal comes before it listens."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import portblock

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("damaged") / "net"
    r = subprocess.run([QKDSEG, "net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                        "--port", str(portblock.port())], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return d


def _seal_cut(p: Path) -> None:
    d = json.loads(p.read_text())
    first = next(iter(d))
    d[first] = d[first][:-8] + "AAAAAAA="
    p.write_text(json.dumps(d))


def _drop_link(p: Path) -> None:
    d = json.loads(p.read_text())
    del d[next(iter(d))]
    p.write_text(json.dumps(d))


# (file under the network's directory, damage, command (DIR = the copy), text the line must contain)
CASES = [
    ("nodes/0/node.json", "{bad", ["node", "serve", "DIR/nodes/0"], "not valid JSON"),
    ("nodes/0/node.json", "[]", ["node", "serve", "DIR/nodes/0"], "a JSON list where an object belongs"),
    ("nodes/0/node.json", "{}", ["node", "serve", "DIR/nodes/0"], "field 'id' is missing"),
    ("nodes/0/node.json", b"\xff\xfe{", ["node", "serve", "DIR/nodes/0"], "not UTF-8"),
    ("nodes/0/node.json", None, ["node", "serve", "DIR/nodes/0"], "not a node directory"),
    ("nodes/0/links.sealed.json", "{bad", ["node", "serve", "DIR/nodes/0"], "not valid JSON"),
    ("nodes/0/links.sealed.json", _seal_cut, ["node", "serve", "DIR/nodes/0"], "does not open with"),
    ("nodes/0/links.sealed.json", _drop_link, ["node", "serve", "DIR/nodes/0"], "is missing"),
    ("controller/net.json", "{bad", ["controller", "serve", "DIR/controller"], "not valid JSON"),
    ("controller/net.json", '{"address": 5}', ["controller", "serve", "DIR/controller"], "is damaged"),
    ("controller/net.json", "{bad", ["net", "up", "DIR"], "not valid JSON"),
    ("controller/net.json", "{bad", ["net", "status", "DIR"], "not valid JSON"),
]


@pytest.mark.parametrize("rel, damage, cmd, says", CASES, ids=[f"{c[0]}-{' '.join(c[2][:2])}-{i}"
                                                               for i, c in enumerate(CASES)])
def test_a_damaged_file_is_one_line_naming_it(pristine, tmp_path, rel, damage, cmd, says):
    d = tmp_path / "net"
    shutil.copytree(pristine, d, symlinks=True)
    target = d / rel
    if damage is None:
        target.unlink()
    elif callable(damage):
        damage(target)
    elif isinstance(damage, bytes):
        target.write_bytes(damage)
    else:
        target.write_text(damage)
    r = subprocess.run([QKDSEG, *[a.replace("DIR", str(d)) for a in cmd]], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and says in lines[0], lines[0]
    if damage is not None:
        assert str(target.relative_to(tmp_path)) in lines[0] or str(target) in lines[0], lines[0]


def _rm(p: Path) -> None:
    p.unlink()


def _garbage(p: Path) -> None:
    p.write_text("garbage\n")


def _other_key(p: Path) -> None:
    shutil.copy(p.parent.parent / "1" / "node.key", p)


# (file to damage or None, damage, command, text the one line must contain)
CAUSES = [
    ("nodes/0/node.key", _rm, ["node", "serve", "DIR/nodes/0"], "node.key: no such file (the private key)"),
    ("nodes/0/node.crt", _garbage, ["node", "serve", "DIR/nodes/0"], "node.crt: not a PEM certificate"),
    ("nodes/0/node.key", _other_key, ["node", "serve", "DIR/nodes/0"], "node.key: not the private key of"),
    ("controller/ca.crt", _garbage, ["controller", "serve", "DIR/controller"], "ca.crt: not a PEM CA certificate"),
    (None, None, ["controller", "serve", "DIR/controller", "--address", "127.0.0.1:99999"],
     "port 99999 is not in 1..65535"),
    (None, None, ["kms", "status", "DIR/nodes/0"], "a node's directory of a network of nodes"),
    (None, None, ["net", "chaos", "DIR", "--duration", "0"], "--duration 0: must be more than 0"),
    (None, None, ["route", "example", "--algorithm", "smr-level", "--src", "0", "--dst", "7"],
     "--algorithm smr-level needs --epsilon"),
    (None, None, ["net", "init", "DIR/x", "--network", "example", "--sae", "A=0", "--sae", "B=7", "--security-level",
                  "1.5"], "--security-level 1.5 must be a probability"),
    (None, None, ["net", "init", "DIR/x", "--network", "example", "--sae", "A=0", "--sae", "B=7",
                  "--algorithm-option", "nosuch=1"], "--algorithm-option nosuch=1: is not an option"),
    (None, None, ["net", "init", "DIR/x", "--network", "example", "--sae", "A=0"], "--sae A=0 must name at least two"),
    (None, None, ["net", "up", "DIR", "--timeout", "-1"], "--timeout -1: seconds to wait"),
    (None, None, ["net", "up", "DIR", "--etcd", "2"], "--etcd 2: 1 or 3 members"),
]


@pytest.mark.parametrize("rel, damage, cmd, says", CAUSES, ids=[f"{' '.join(c[2][:2])}-{i}" for i, c in enumerate(CAUSES)])
def test_an_error_names_its_real_cause(pristine, tmp_path, rel, damage, cmd, says):
    d = tmp_path / "net"
    shutil.copytree(pristine, d, symlinks=True)
    if rel is not None:
        damage(d / rel)
    r = subprocess.run([QKDSEG, *[a.replace("DIR", str(d)) for a in cmd]], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert says in lines[0], lines[0]
    assert not (d / "x").exists()  # a refused net init leaves nothing behind



def test_net_up_names_who_holds_its_port_and_net_down_stops_a_network_whose_files_are_damaged(tmp_path):
    """A port already taken: the cause (the address, and the process that holds it) in net up's one line; then a
    running network whose pid file and net.json are damaged is still stopped by net down, which says why."""
    import os
    import socket
    import time

    port = portblock.port()
    d = tmp_path / "net"
    assert subprocess.run([QKDSEG, "net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                           "--port", str(port)], capture_output=True, timeout=120).returncode == 0
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.2", port))  # node 0's address
        squatter.listen()
        r = subprocess.run([QKDSEG, "net", "up", str(d), "--detach"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "node-0: cannot listen on 127.0.0.2:" in r.stderr and f"(held by pid {os.getpid()} " in r.stderr, r.stderr
    subprocess.run([QKDSEG, "net", "down", str(d)], capture_output=True, timeout=120)
    r = subprocess.run([QKDSEG, "net", "up", str(d), "--detach"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pids = json.loads((d / "run" / "pids.json").read_text())
    (d / "run" / "pids.json").write_text("{bad")
    (d / "controller" / "net.json").write_text("{bad")
    r = subprocess.run([QKDSEG, "net", "down", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"stopped {len(pids)} process(es)" in r.stdout, r.stdout + r.stderr
    assert "pids.json" in r.stderr and "command line names" in r.stderr and "Traceback" not in r.stderr, r.stderr
    def running(pid) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace")
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while any(running(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(running(p) for p in pids.values())


def test_the_holder_named_is_the_one_on_the_address_asked_for():
    """'held by' names the listener on the address the server asked for, or on every interface, never a process
    listening on the same port at another address (two runs of the suite: another run's node on 127.0.0.5:P)."""
    import os
    import socket

    from qkdseg.errors import InvalidRequest
    from qkdseg.server.http import listen_socket, port_holder

    with socket.socket() as other:  # this process, on another address than the one asked for
        other.bind(("127.0.0.5", 0))
        other.listen()
        port = other.getsockname()[1]
        assert port_holder(port, "127.0.0.5").startswith(f"pid {os.getpid()} (")
        assert port_holder(port, "127.0.0.2") is None and port_holder(port, "::1") is None
        listen_socket("127.0.0.2", port).close()  # free there: nothing to name
    # a child on every interface, this process on ::1 at the same port (found first in /proc, a lower pid)
    code = ("import socket, sys\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()\n"
            "print(s.getsockname()[1], flush=True)\nsys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with socket.socket(socket.AF_INET6) as six:
            six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            six.bind(("::1", port))
            six.listen()
            with pytest.raises(InvalidRequest) as err:
                listen_socket("127.0.0.3", port, "node-0")
            assert f"cannot listen on 127.0.0.3:{port} (node-0): " in str(err.value), err.value
            assert f"(held by pid {child.pid} " in str(err.value), err.value
            assert port_holder(port, "::1").startswith(f"pid {os.getpid()} (")  # 0.0.0.0 keeps IPv4 addresses only
    finally:
        child.kill()
        child.wait()
