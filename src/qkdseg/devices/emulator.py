"""A QKD device emulator: the devices of a network's links as one ETSI GS QKD 014 server (``qkdseg device serve``).

Each link ``U|V`` of the network has two SAEs on the emulated device pair,
``a_sae`` (the end at ``U``) and ``b_sae`` (at ``V``). Keys of the link's
``key_size`` appear at its ``rate_bps`` up to ``buffer_bits`` (the device's
buffer starts full). ``enc_keys`` by one end takes keys from the buffer,
gives them fresh UUIDv4 ids and keeps them for the other end; ``dec_keys`` by
the other end returns the same bytes, once. The HTTP front end is the key
service's own (:func:`.app.create_app`: strict parsing, JSON errors, the
caller's SAE id from its client certificate's CN), over mutual TLS.

The emulator writes one line per call that moved keys to ``DIR/keys.jsonl``
(``enc_keys``, ``dec_keys``, ``lost``, ``expired``: link, SAE, key ids; no key
bytes), and serves, to its operator certificate only:

``GET /qkdseg/v1/counters``
    Per link: keys issued (``enc_keys``), delivered (``dec_keys``), lost,
    expired and pending, the buffer's key count now; and refusals by status.
``POST /qkdseg/v1/faults``
    ``{"mode": "none"|"refuse"|"slow"|"unauthorized"|"lose", "delay_s": s,
    "count": n, "links": ["U|V", ...]}``: from now on every ETSI call (of
    those links; all by default) is answered 503 (``refuse``), 401
    (``unauthorized``), after ``delay_s`` seconds (``slow``), or the next
    ``count`` keys issued are lost before their ``dec_keys`` (``lose``).

docs/kms.md, "Link keys from devices", documents the directory, the
configuration and these counters.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import socket
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidRequest
from ..server.config import check_sae_id
from ..server.etsi import MSG_EXT_UNSUPPORTED, MSG_NOT_FOUND, Caller, KmsError, _b64, clip

CONFIG_NAME = "device.toml"
LOG_NAME = "keys.jsonl"
ADMIN = "device-operator"
_LINK_FIELDS = ("a_sae", "b_sae", "rate_bps", "buffer_bits", "key_size")


@dataclass
class DeviceConfig:
    """``DIR/device.toml``: where the emulator listens, its TLS files, and each link's device pair."""

    host: str
    port: int
    network: str
    links: dict[str, dict]
    kme_id: str = "KME_device"
    max_key_per_request: int = 64
    key_ttl_s: float = 600.0
    ca: str = "pki/ca.crt"
    cert: str = "pki/server.crt"
    key: str = "pki/server.key"
    max_body_bytes: int = 1 << 16
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: float = 30.0
    max_connections: int = 1024
    _dir: Path = field(default=Path("."), repr=False)

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self._dir / p


_TOP = ("host", "port", "network", "kme_id", "max_key_per_request", "key_ttl_s", "ca", "cert", "key")


def write_device_config(directory: Path, cfg: DeviceConfig) -> Path:
    lines = ["# qkdseg QKD device emulator (docs/kms.md, 'Link keys from devices'). Paths relative to this directory.",
             ""]
    lines += [f"{name} = {json.dumps(getattr(cfg, name))}" for name in _TOP]
    for name, link in cfg.links.items():
        lines += ["", f"[links.{json.dumps(name)}]"] + [f"{k} = {json.dumps(link[k])}" for k in _LINK_FIELDS]
    path = Path(directory) / CONFIG_NAME
    path.write_text("\n".join(lines) + "\n")
    return path


def load_device_config(directory: Path) -> DeviceConfig:
    """Read and check ``DIR/device.toml``; :class:`InvalidRequest` names the file and the field at fault."""
    d = Path(directory)
    path = d / CONFIG_NAME
    if not d.is_dir():
        raise InvalidRequest(f"{d}: not a device emulator directory (qkdseg kms init DIR ... --link-source device "
                             "writes DIR/devices/)")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"{path}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidRequest(f"{path}: not valid TOML: {err}") from None
    known = set(_TOP) | {"links"}
    for name in raw:
        if name not in known:
            raise InvalidRequest(f"{path}: unknown field {name!r} (known: {', '.join(sorted(known))})")
    for name in ("host", "port", "network", "links"):
        if name not in raw:
            raise InvalidRequest(f"{path}: missing field {name!r}")
    port = raw["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidRequest(f"{path}: field 'port'={port!r} must be in 0..65535")
    for name in ("host", "network", "ca", "cert", "key"):
        if name in raw and (not isinstance(raw[name], str) or not raw[name].strip()):
            raise InvalidRequest(f"{path}: field {name!r}={raw[name]!r} must be text")
    check_sae_id(raw.get("kme_id", "KME_device"), f"{path}: field 'kme_id'")
    ttl = raw.get("key_ttl_s", 600.0)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 1e9:
        raise InvalidRequest(f"{path}: field 'key_ttl_s'={ttl!r} must be a positive number of seconds, at most 1e9")
    if not isinstance(raw["links"], dict) or not raw["links"]:
        raise InvalidRequest(f"{path}: field 'links' must be a table of \"U|V\" = link tables")
    seen: set[str] = set()
    for name, link in raw["links"].items():
        where = f"{path}: [links.{json.dumps(name)}]"
        if not isinstance(link, dict) or set(link) != set(_LINK_FIELDS):
            raise InvalidRequest(f"{where} needs exactly the fields {', '.join(_LINK_FIELDS)}")
        for end in ("a_sae", "b_sae"):
            check_sae_id(link[end], f"{where}: {end}")
            if link[end] in seen or link[end] == ADMIN:
                raise InvalidRequest(f"{where}: {end} {link[end]!r} is used twice (one SAE per link end)")
            seen.add(link[end])
        rate = link["rate_bps"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (rate >= 0 and math.isfinite(rate)):
            raise InvalidRequest(f"{where}: rate_bps={rate!r} must be a non-negative number (bits/s)")
        for f in ("buffer_bits", "key_size"):
            v = link[f]
            if isinstance(v, bool) or not isinstance(v, int) or v < 8 or (f == "key_size" and v % 8):
                raise InvalidRequest(f"{where}: {f}={v!r} must be a positive integer"
                                     + (" multiple of 8" if f == "key_size" else ""))
    mk = raw.get("max_key_per_request", 64)
    if isinstance(mk, bool) or not isinstance(mk, int) or mk < 1:
        raise InvalidRequest(f"{path}: field 'max_key_per_request'={mk!r} must be a positive integer")
    return DeviceConfig(**raw, _dir=d)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (init writes it into the emulator's config)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_devices(directory: Path, network, spec: str, *, key_size: int = 256, default_rate_bps: float = 100_000,
                 host: str = "127.0.0.1", port: int | None = None) -> tuple[DeviceConfig, dict[str, dict]]:
    """Write the emulator's directory (``device.toml``, ``pki/``, ``keys.jsonl`` empty) for every link of ``network``.

    Returns its config and, for ``kms.toml``, each link's ``[device_links]``
    table with paths relative to ``directory``'s parent (the service directory).
    """
    from ..server.pki import add_sae_cert, make_pki

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    a = network.arrays
    g = network.graph
    links: dict[str, dict] = {}
    for k in range(a.n_links):
        u, v = a.node_ids[a.edge_u[k]], a.node_ids[a.edge_v[k]]
        rate = g.edges[u, v].get("rate_bps")
        links[f"{u}|{v}"] = {"a_sae": f"link{k}-a", "b_sae": f"link{k}-b",
                             "rate_bps": float(default_rate_bps if rate is None else rate),
                             "buffer_bits": int(a.pool_bits[k]), "key_size": int(key_size)}
    cfg = DeviceConfig(host=host, port=free_port(host) if port is None else port, network=spec, links=links, _dir=d)
    saes = [end for link in links.values() for end in (link["a_sae"], link["b_sae"])]
    make_pki(d / "pki", saes, cfg.kme_id)
    add_sae_cert(d / "pki", ADMIN)
    write_device_config(d, cfg)
    (d / LOG_NAME).touch()
    url = f"https://{host}:{cfg.port}"
    rel = d.name
    tables = {}
    for name, link in links.items():
        tables[name] = {"a_sae": link["a_sae"], "b_sae": link["b_sae"], "a_url": url, "b_url": url,
                        "ca": f"{rel}/pki/ca.crt",
                        "a_cert": f"{rel}/pki/{link['a_sae']}.crt", "a_key": f"{rel}/pki/{link['a_sae']}.key",
                        "b_cert": f"{rel}/pki/{link['b_sae']}.crt", "b_key": f"{rel}/pki/{link['b_sae']}.key",
                        "key_size": int(key_size)}
    return cfg, tables


class _Link:
    __slots__ = ("name", "a", "b", "rate", "buffer", "size", "bits", "t", "issued", "delivered", "lost", "expired",
                 "pending", "lose")

    def __init__(self, name: str, spec: dict, now: float):
        self.name, self.a, self.b = name, spec["a_sae"], spec["b_sae"]
        self.rate, self.buffer, self.size = float(spec["rate_bps"]), int(spec["buffer_bits"]), int(spec["key_size"])
        self.bits, self.t = float(self.buffer), now  # the buffer starts full
        self.issued = self.delivered = self.lost = self.expired = self.lose = 0
        self.pending: dict[str, tuple[str, str, bytes, float]] = {}  # key id -> (master, slave, bytes, expires)

    def stored(self, now: float) -> int:
        if now > self.t:
            self.bits = min(float(self.buffer), self.bits + self.rate * (now - self.t))
            self.t = now
        return int(self.bits // self.size)


class DeviceService:
    """The emulated devices: the methods :func:`.app.create_app` calls, over every link's pair of SAEs."""

    def __init__(self, cfg: DeviceConfig, clock=time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        now = clock()
        self.links = {name: _Link(name, spec, now) for name, spec in cfg.links.items()}
        self.by_sae: dict[str, _Link] = {}
        for link in self.links.values():
            self.by_sae[link.a] = link
            self.by_sae[link.b] = link
        self.refused: dict[str, int] = {}
        self.fault = {"mode": "none", "delay_s": 0.0, "links": None}
        self._log = os.open(cfg.path(LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    # -- records --------------------------------------------------------------------
    def _record(self, op: str, link: _Link, sae: str | None, ids: list[str]) -> None:
        line = json.dumps({"t": round(self.clock(), 6), "op": op, "link": link.name, "sae": sae, "key_ids": ids},
                          separators=(",", ":"))
        os.write(self._log, (line + "\n").encode())  # one write per line: a kill -9 loses no line written

    async def deny(self, err: KmsError, caller, op: str, peer=None) -> None:
        self.refused[str(err.status)] = self.refused.get(str(err.status), 0) + 1

    def counters(self) -> dict:
        now = self.clock()
        return {"time": now, "fault": dict(self.fault), "refused": dict(self.refused), "links": {
            name: {"a_sae": l.a, "b_sae": l.b, "issued": l.issued, "delivered": l.delivered, "lost": l.lost,
                   "expired": l.expired, "pending": len(l.pending), "stored_keys": l.stored(now), "key_size": l.size}
            for name, l in self.links.items()}}

    # -- faults ---------------------------------------------------------------------------
    async def _gate(self, link: _Link | None) -> None:
        f = self.fault
        if f["mode"] in ("none", "lose") or (f["links"] is not None and (link is None or link.name not in f["links"])):
            return
        if f["mode"] == "slow":
            await asyncio.sleep(f["delay_s"])
        elif f["mode"] == "refuse":
            raise KmsError(503, "the QKD device is not available (emulated fault 'refuse')", reason="device_fault")
        elif f["mode"] == "unauthorized":
            raise KmsError(401, "the QKD device refuses this SAE (emulated fault 'unauthorized')")

    def set_fault(self, data: dict) -> dict:
        mode = data.get("mode")
        if mode not in ("none", "refuse", "slow", "unauthorized", "lose"):
            raise KmsError(400, "mode must be none, refuse, slow, unauthorized or lose")
        unknown = sorted(set(data) - {"mode", "delay_s", "count", "links"})
        if unknown:
            raise KmsError(400, f"unknown field(s): {', '.join(clip(u) for u in unknown)}")
        delay = data.get("delay_s", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 600:
            raise KmsError(400, "delay_s must be a number of seconds in [0, 600]")
        links = data.get("links")
        if links is not None and (not isinstance(links, list) or any(x not in self.links for x in links)):
            raise KmsError(400, "links must be a list of link names (\"U|V\") of device.toml")
        count = data.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise KmsError(400, "count must be a non-negative integer")
        self.fault = {"mode": mode, "delay_s": float(delay), "links": links}
        for link in self.links.values():
            link.lose = count if mode == "lose" and (links is None or link.name in links) else 0
        return dict(self.fault)

    # -- ETSI 014 ----------------------------------------------------------------------
    def _pair(self, caller: Caller, peer: str, role: str) -> _Link:
        link = self.by_sae.get(caller.sae)
        if link is None:
            raise KmsError(401, f"SAE {clip(caller.sae)} is not an SAE of this device")
        other = link.b if caller.sae == link.a else link.a
        if peer != other:
            raise KmsError(400, f"{role} SAE {clip(peer)} is not the other end of link {link.name} "
                                f"(that is {other})")
        return link

    def parse_key_request(self, number, size, ext_mandatory, ext_optional, additional) -> "_Request":
        """Table 10's fields: ``number`` (1..max_key_per_request), ``size`` (checked against the link's in
        ``enc_keys``), no mandatory extension, no additional slave."""
        if ext_mandatory not in (None, []):
            raise KmsError(400, MSG_EXT_UNSUPPORTED, [{"extension_mandatory_unsupported":
                                                       "this device supports no extension"}])
        if additional not in (None, []):
            raise KmsError(400, "additional_slave_SAE_IDs is not supported: this KME's max_SAE_ID_count is 0")
        number = 1 if number is None else number
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise KmsError(400, f"number={clip(number)} must be a positive integer")
        if number > self.cfg.max_key_per_request:
            raise KmsError(400, f"number={number} exceeds max_key_per_request={self.cfg.max_key_per_request}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise KmsError(400, f"size={clip(size)} must be a positive integer (bits)")
        return _Request(number, size)

    async def status(self, caller: Caller, slave: str) -> dict:
        link = self._pair(caller, slave, "slave")
        await self._gate(link)
        return {
            "source_KME_ID": self.cfg.kme_id, "target_KME_ID": self.cfg.kme_id,
            "master_SAE_ID": caller.sae, "slave_SAE_ID": slave, "key_size": link.size,
            "stored_key_count": link.stored(self.clock()), "max_key_count": link.buffer // link.size,
            "max_key_per_request": self.cfg.max_key_per_request, "max_key_size": link.size,
            "min_key_size": link.size, "max_SAE_ID_count": 0,
        }

    async def enc_keys(self, caller: Caller, slave: str, req) -> dict:
        link = self._pair(caller, slave, "slave")
        await self._gate(link)
        size = link.size if req.size is None else req.size
        if size != link.size:
            raise KmsError(400, f"size={size}: this device's keys are {link.size} bits")
        now = self.clock()
        if link.stored(now) < req.number:
            raise KmsError(503, f"the device holds {link.stored(now)} keys of {link.size} bits, fewer than "
                                f"number={req.number}", reason="no_key_material")
        link.bits -= req.number * link.size
        out = []
        for _ in range(req.number):
            kid, material = str(uuid.uuid4()), secrets.token_bytes(link.size // 8)
            link.pending[kid] = (caller.sae, slave, material, now + self.cfg.key_ttl_s)
            out.append((kid, material))
        link.issued += req.number
        ids = [kid for kid, _ in out]
        self._record("enc_keys", link, caller.sae, ids)
        if link.lose:
            gone = ids[: link.lose]
            link.lose -= len(gone)
            for kid in gone:
                del link.pending[kid]
            link.lost += len(gone)
            self._record("lost", link, None, gone)
        return {"keys": [{"key_ID": kid, "key": _b64(m)} for kid, m in out]}

    async def dec_keys(self, caller: Caller, master: str, key_ids: list[str]) -> dict:
        link = self._pair(caller, master, "master")
        await self._gate(link)
        if len(set(key_ids)) != len(key_ids):
            raise KmsError(400, "key_IDs names a key twice")
        now = self.clock()
        rows = [link.pending.get(kid) for kid in key_ids]
        if any(r is None or r[3] <= now for r in rows):
            raise KmsError(400, MSG_NOT_FOUND, reason="key_not_found")
        if any(r[1] != caller.sae or r[0] != master for r in rows):
            raise KmsError(401, "the caller is not the slave SAE of one or more keys requested")
        for kid in key_ids:
            del link.pending[kid]
        link.delivered += len(key_ids)
        self._record("dec_keys", link, caller.sae, list(key_ids))
        return {"keys": [{"key_ID": kid, "key": _b64(r[2])} for kid, r in zip(key_ids, rows)]}

    async def expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.cfg.key_ttl_s / 4))
            now = self.clock()
            for link in self.links.values():
                old = [kid for kid, r in link.pending.items() if r[3] <= now]
                for kid in old:
                    del link.pending[kid]
                if old:
                    link.expired += len(old)
                    self._record("expired", link, None, old)

    def close(self) -> None:
        os.close(self._log)


@dataclass(frozen=True)
class _Request:
    number: int
    size: int | None


def _control_routes(service: DeviceService) -> list:
    from starlette.requests import Request
    from starlette.routing import Route

    from ..server.http import JSONResponse
    from ..server.frontend import _caller, _json_body

    def admin(request: Request) -> None:
        if _caller(request).sae != ADMIN:
            raise KmsError(401, f"only the operator certificate (CN {ADMIN}) may use /qkdseg/v1/")

    async def counters(request: Request):
        admin(request)
        return JSONResponse(service.counters())

    async def faults(request: Request):
        admin(request)
        data = await _json_body(request, {"mode", "delay_s", "count", "links"}, service.cfg.max_body_bytes)
        return JSONResponse(service.set_fault(data))

    return [Route("/qkdseg/v1/counters", counters, methods=["GET"]),
            Route("/qkdseg/v1/faults", faults, methods=["POST"])]


def serve(directory: str | Path, *, host: str | None = None, port: int | None = None,
          log_level: str = "warning") -> None:
    """Serve the emulated devices of ``DIR/device.toml`` until SIGINT/SIGTERM; prints the URL."""
    import uvicorn

    from ..server.frontend import create_app, service_protocol
    from ..server.http import graceful_server, listen_socket
    from ..server.tls import tls_context

    cfg = load_device_config(Path(directory))
    service = DeviceService(cfg)
    try:
        ctx = tls_context(cfg, "device.toml")  # type: ignore[arg-type]  (the same fields: ca, cert, key, path())
        h = cfg.host if host is None else host
        sock = listen_socket(h, cfg.port if port is None else port, "device emulator")
        bound = sock.getsockname()[1]
        config = uvicorn.Config(create_app(service, routes=_control_routes(service)),  # type: ignore[arg-type]
                                http=service_protocol(service),  # type: ignore[arg-type]
                                ssl_context_factory=lambda _c, _d: ctx, ssl_certfile=str(cfg.path(cfg.cert)),
                                access_log=False, log_level=log_level, lifespan="on",
                                timeout_keep_alive=cfg.keep_alive_s)
        server = graceful_server()(config)
        print(f"qkdseg device: ETSI GS QKD 014 on https://{h}:{bound}/api/v1/keys/ "
              f"({len(cfg.links)} links, {2 * len(cfg.links)} SAEs, KME {cfg.kme_id})", flush=True)
        server.run(sockets=[sock])
    finally:
        service.close()
    print("qkdseg device: stopped", file=sys.stderr, flush=True)
