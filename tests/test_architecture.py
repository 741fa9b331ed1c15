"""The house's layers (docs/contributing.md): no import circle, and no lower layer importing a higher one.

``import-linter`` checks the layers contracts in ``pyproject.toml``; the
tests here also read ``grimp``'s import graph (every import, those inside
functions included) for circles between any two modules, and make sure that
a new subpackage or command group cannot escape the contracts by not being
named in them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import networkx as nx
import pytest

import portblock

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "qkdseg"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("qkdseg", cache_dir=None, exclude_type_checking_imports=True)  # as pyproject.toml


def _contracts() -> dict[str, list[str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {c["containers"][0]: c["layers"] for c in cfg["contracts"] if c["type"] == "layers"}


def _named(layers: list[str]) -> set[str]:
    return {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_import_circle_between_any_two_modules(graph):
    g = nx.DiGraph()
    for m in graph.modules:
        g.add_node(m)
        for imported in graph.find_modules_directly_imported_by(m):
            g.add_edge(m, imported)
    circles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert circles == []


@pytest.mark.parametrize("container", ["qkdseg", "qkdseg.cli", "qkdseg.network", "qkdseg.net", "qkdseg.server",
                                       "qkdseg.devices"])
def test_every_module_has_its_layer(container):
    """A new subpackage of ``qkdseg`` (or module of ``qkdseg.cli``, ``qkdseg.network``, ``qkdseg.net``,
    ``qkdseg.server`` or ``qkdseg.devices``) must be placed in a layer."""
    folder = PACKAGE.joinpath(*container.split(".")[1:])
    present = {p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")}
    present |= {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    assert present - _named(_contracts()[container]) == set()


def test_the_command_groups_do_not_import_the_assembler(graph):
    importers = graph.find_modules_that_directly_import("qkdseg.cli.app")
    assert importers <= {"qkdseg.cli"}  # only the package itself, for qkdseg.cli:main and qkdseg.cli.app


def _lint_swapped(tmp_path, pair: str, swapped_pair: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on pyproject.toml with the two layers of ``pair`` swapped."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    swapped = text.replace(pair, swapped_pair)
    assert swapped != text
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(swapped, encoding="utf-8")
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", str(cfg), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_layers_contract_catches_an_upward_import(tmp_path):
    """The contract is not vacuous: the same layers with two swapped break it."""
    run = _lint_swapped(tmp_path, '  "keys",\n  "api",\n', '  "api",\n  "keys",\n')
    assert run.returncode != 0 and "qkdseg.keys" in run.stdout


def test_every_import_of_the_package_resolves():
    """Imports inside functions run late: one that names a module that is not there (a relative import left
    behind when a module moved) fails here, not in the first user's command."""
    import ast
    import importlib.util

    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qkdseg"):
                target = node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("qkdseg") and importlib.util.find_spec(alias.name) is None:
                        missing.append(f"{path.name}:{node.lineno} import {alias.name}")
                continue
            else:
                continue
            if importlib.util.find_spec(target) is None:
                missing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {target}")
                continue
            for alias in node.names:  # `from .pkg import module` names a submodule or an attribute
                sub = f"{target}.{alias.name}"
                if alias.name != "*" and "." not in alias.name:
                    try:
                        found = importlib.util.find_spec(sub) is not None
                    except ModuleNotFoundError:
                        found = False
                    if not found and not hasattr(importlib.import_module(target), alias.name):
                        missing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {target} import {alias.name}")
    assert missing == []


def test_the_two_deployments_do_not_import_each_other(graph):
    """``kms`` (centralized) and ``net`` (network of nodes) are siblings on the shared core: no chain of imports
    leads from one to the other, and the core and the devices reach neither."""
    for a, b in (("qkdseg.kms", "qkdseg.net"), ("qkdseg.net", "qkdseg.kms"), ("qkdseg.server", "qkdseg.kms"),
                 ("qkdseg.server", "qkdseg.net"), ("qkdseg.server", "qkdseg.devices"),
                 ("qkdseg.devices", "qkdseg.kms"), ("qkdseg.devices", "qkdseg.net")):
        assert not graph.chain_exists(importer=a, imported=b, as_packages=True), f"{a} reaches {b}"


def test_layers_contract_catches_a_swapped_core_and_devices(tmp_path):
    """The shared core below the devices: with the two swapped, the devices' imports of the core break the contract."""
    run = _lint_swapped(tmp_path, '  "devices",\n  "server",\n', '  "server",\n  "devices",\n')
    assert run.returncode != 0 and "qkdseg.devices" in run.stdout


def test_controller_process_loads_no_kms_module(tmp_path):
    """`qkdseg controller serve` plans with the shared planner: like `node serve`, it loads no `qkdseg.kms` module
    (`python -X importtime` of the real process, up to its listening line and a SIGTERM)."""
    import signal

    qkdseg = str(Path(sys.executable).with_name("qkdseg"))
    port = portblock.port()
    d = tmp_path / "net"
    init = subprocess.run([qkdseg, "net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7",
                           "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    err = tmp_path / "importtime.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "qkdseg", "controller", "serve",
                                 str(d / "controller")], stdout=subprocess.PIPE, stderr=fh)
        try:
            line = proc.stdout.readline().decode()
            assert "listening on https://" in line, line + err.read_text()[-2000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    mods = [ln.rsplit("|", 1)[-1].strip() for ln in err.read_text().splitlines() if ln.startswith("import time:")]
    assert "qkdseg.net.controller" in mods and "qkdseg.server.planner" in mods
    assert [m for m in mods if m == "qkdseg.kms" or m.startswith("qkdseg.kms.")] == []


def test_no_module_over_500_lines():
    """Every room of the house stays under 500 lines (``_kernels.py``, numba's compiled kernels kept together for
    their shared helpers, excepted): a module that grows past it is split along a seam (docs/contributing.md)."""
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if p.name != "_kernels.py" and (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
