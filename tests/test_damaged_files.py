"""Damaged files of a network's directory: every command that reads one answers with one line naming the file and
what is wrong with it, exit 2, no traceback (issue 32). No server starts: each refusal comes before it listens."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("damaged") / "net"
    r = subprocess.run([QKDSEG, "net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                        "--port", "19601"], capture_output=True, text=True, timeout=120)
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
