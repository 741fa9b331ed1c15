"""``qkdseg net bundle DIR --node ID | --controller [NAME] -o FILE``: one host's archive (docs/network.md).

A tar.gz with one directory (``node/`` or ``controller/``): the files of that
process's directory in ``DIR`` (its configuration, ``ca.crt``, its own link
seeds or device credentials, and whatever keys ``net init`` made for it when
not ``--enroll``), never its state (stores, audit, lock), never another
node's file; and ``README.txt``: the commands to run on the host and the
systemd unit to install. Files keep their modes (secrets 0600).
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

from ..errors import InvalidRequest
from ..server.files import load_json
from .layout import _STATE_FILES

_SKIP_SUFFIXES = (".tmp",)


def _readme(kind: str, name: str, address: str, keygen: bool) -> str:
    place = f"/var/lib/qkdseg/nodes/{name}" if kind == "node" else "/var/lib/qkdseg/controller"
    unit = "deploy/systemd/qkdseg-node@.service" if kind == "node" else "deploy/systemd/qkdseg-controller.service"
    service = f"qkdseg-node@{name}" if kind == "node" else "qkdseg-controller"
    steps = [f"qkdseg {kind}: {name}, listening on {address} (docs/network.md, \"Deploying one node per host\").", "",
             f"1. Unpack:  mkdir -p {Path(place).parent} /tmp/qkdseg-bundle && tar -xzf THIS.tar.gz -C "
             f"/tmp/qkdseg-bundle && mv /tmp/qkdseg-bundle/{kind} {place}"]
    if keygen:
        steps += [f"2. Make this host's keys and its CSR (they never leave the host):  qkdseg {kind} keygen {place}",
                  f"3. Send {place}/{kind}.csr to the admin machine; there:  qkdseg net sign DIR {kind}.csr "
                  f"--ca-key CA_KEY -o {kind}.crt",
                  f"4. Put the {kind}.crt it returns into {place}/"]
    n = len(steps) - 1
    steps += [f"{n}. Install the unit {unit} (from the qkdseg sources) and start it:  systemctl enable --now "
              f"{service}", f"   or run it by hand:  qkdseg {kind} serve {place}"]
    return "\n".join(steps) + "\n"


def bundle(directory: Path, out: Path, *, node: str | None = None, controller: str | None = None) -> dict:
    """Write the archive of node ``node`` or of controller ``controller`` (``"controller"``, ``"controller-1"``,
    ...); returns ``{"files": [...], "kind", "name"}``."""
    directory = Path(directory)
    names = load_json(directory / "nodes.json", "the deployment's list of nodes",
                      missing=f"{directory}: not a network directory (no nodes.json; run 'qkdseg net init' first)")
    if (node is None) == (controller is None):
        raise InvalidRequest("give one of --node ID and --controller")
    if node is not None:
        if str(node) not in names:
            raise InvalidRequest(f"--node {node}: not a node of {directory / 'nodes.json'}")
        src, kind, name = directory / "nodes" / str(names[str(node)]), "node", str(names[str(node)])
        conf = load_json(src / "node.json", "the node's configuration")
    else:
        if not controller.startswith("controller") or "/" in controller:
            raise InvalidRequest(f"--controller {controller}: 'controller' or 'controller-<i>'")
        src, kind, name = directory / controller, "controller", controller
        if not (src / "net.json").exists():
            raise InvalidRequest(f"--controller {controller}: {src} is not a controller directory of {directory}")
        conf = load_json(src / "net.json", "the network's layout")
    keygen = not (src / f"{kind}.key").exists()
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name not in _STATE_FILES
                   and p.name != "lock" and not p.name.startswith(("audit-", "kms.sqlite3", "relay.sqlite3"))
                   and not p.name.endswith(_SKIP_SUFFIXES))
    out = Path(out)
    if out.resolve().is_relative_to(src.resolve()):
        raise InvalidRequest(f"-o {out}: inside {src}, the directory it packs")
    tmp = out.with_name(out.name + ".tmp")
    now = int(time.time())
    with tarfile.open(tmp, "w:gz") as tar:
        top = tarfile.TarInfo(kind)
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(top)
        for p in files:
            info = tar.gettarinfo(str(p), arcname=f"{kind}/{p.relative_to(src)}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with p.open("rb") as fh:
                tar.addfile(info, fh)
        text = _readme(kind, name, conf["address"], keygen).encode()
        info = tarfile.TarInfo("README.txt")
        info.size, info.mode, info.mtime = len(text), 0o644, now
        tar.addfile(info, io.BytesIO(text))
    tmp.replace(out)
    return {"files": [str(p.relative_to(src)) for p in files], "kind": kind, "name": name}


def bundle_all(directory: Path, out_dir: Path) -> list[Path]:
    """Every process's archive into ``out_dir``: ``node-<dir>.tar.gz`` per node, ``controller.tar.gz`` (and
    ``controller-<i>.tar.gz``)."""
    directory, out_dir = Path(directory), Path(out_dir)
    names = load_json(directory / "nodes.json", "the deployment's list of nodes",
                      missing=f"{directory}: not a network directory (no nodes.json; run 'qkdseg net init' first)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidRequest(f"-o {out_dir}: exists and is not a directory (--all writes one archive per process)")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = []
    ctrls = sorted(p.name for p in directory.glob("controller*") if (p / "net.json").exists())
    for c in ctrls:
        made.append(out_dir / f"{c}.tar.gz")
        bundle(directory, made[-1], controller=c)
    for node, name in names.items():
        made.append(out_dir / f"node-{name}.tar.gz")
        bundle(directory, made[-1], node=node)
    return made
