"""``qkdseg kms demo``: a key service on the example network, its dashboard, and ETSI 014 traffic to watch.

One command sets up a service directory (the example network with small,
slowly refilled pools, four SAEs and a test PKI), serves it with the
dashboard on loopback, and runs :class:`Traffic`: real ETSI GS QKD 014
requests over mutual TLS (``enc_keys`` by a master, then ``dec_keys`` by its
slave), so that pools drain and refill and some requests are refused.
Every random choice comes from ``seed``.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import tempfile
import threading
import time
from pathlib import Path

#: SAE id -> node of the example network (both ends, and two nodes beside them).
DEMO_SAES = {"SAE_A": "0", "SAE_B": "7", "SAE_C": "2", "SAE_D": "9"}
#: Security levels the traffic asks for (the example network's best route from 0 to 7 has 0.884736).
DEMO_LEVELS = (0.5, 0.8, 0.85, 0.88, 0.95)


def make_demo(directory: Path, *, pool_bits: int = 24_000, rate_bps: float = 400.0) -> Path:
    """Write the demo's network (the example, pools of ``pool_bits`` refilled at ``rate_bps``) and ``kms init`` it."""
    from ..topology import example_network, write_network
    from ..network import Network
    from ..server.config import KmsConfig, write_config
    from ..server.pki import make_pki, write_secret
    from ..server.storagekey import init_keys

    directory.mkdir(parents=True, exist_ok=True)
    g = example_network().graph.copy()
    for u, v in g.edges:
        g.edges[u, v]["pool_bits"] = int(pool_bits)
        g.edges[u, v]["rate_bps"] = float(rate_bps)
    g.graph["name"] = "example (demo pools)"
    write_network(Network(g, name="example (demo pools)"), directory / "network.json")
    cfg = KmsConfig(network="network.json", saes=dict(DEMO_SAES), security_level=0.8, key_size=256,
                    _dir=directory)
    cfg.check()
    write_config(directory, cfg)
    make_pki(directory / "pki", list(DEMO_SAES), cfg.kme_id)
    init_keys(cfg)
    import secrets

    write_secret(cfg.path(cfg.dashboard_token), (secrets.token_urlsafe(32) + "\n").encode())
    return directory


class Traffic(threading.Thread):
    """ETSI 014 requests at ``rate`` per second between random SAE pairs, each key fetched by its slave.

    Parameters
    ----------
    directory : Path
        The service directory (its ``pki/`` holds the SAEs' certificates).
    port : int
        The ETSI 014 port on 127.0.0.1.
    rate : float
        Key requests per second.
    seed : int
        Seed of the pairs, numbers and levels asked for.
    """

    def __init__(self, directory: Path, port: int, rate: float = 4.0, seed: int = 0) -> None:
        super().__init__(name="qkdseg-demo-traffic", daemon=True)
        self.directory, self.port, self.rate = Path(directory), port, float(rate)
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.sent = 0
        self.issued = 0
        self.refused = 0

    def _context(self, sae: str) -> ssl.SSLContext:
        pki = self.directory / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(pki / f"{sae}.crt", pki / f"{sae}.key")
        return ctx

    def _call(self, conn: http.client.HTTPSConnection, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")

    def run(self) -> None:
        saes = list(DEMO_SAES)
        conns = {s: http.client.HTTPSConnection("127.0.0.1", self.port, context=self._context(s), timeout=10)
                 for s in saes}
        while not self.stop_event.is_set():
            master, slave = self.rng.sample(saes, 2)
            number = self.rng.randint(1, 4)
            level = self.rng.choice(DEMO_LEVELS)
            body = {"number": number, "extension_optional" if self.rng.random() < 0.5 else "extension_mandatory":
                    [{"qkdseg_security_level": level}]}
            try:
                status, out = self._call(conns[master], "POST", f"/api/v1/keys/{slave}/enc_keys", body)
                self.sent += 1
                if status == 200:
                    self.issued += 1
                    ids = [{"key_ID": k["key_ID"]} for k in out["keys"]]
                    self._call(conns[slave], "POST", f"/api/v1/keys/{master}/dec_keys", {"key_IDs": ids})
                else:
                    self.refused += 1
            except (OSError, http.client.HTTPException, ValueError):
                for c in conns.values():
                    c.close()  # the server is starting or restarting: a new connection next time
                time.sleep(0.5)
            self.stop_event.wait(self.rng.expovariate(self.rate))


def run_demo(directory: Path | None, port: int, dashboard_port: int, rate: float, seed: int) -> None:
    """Set up (if needed) and serve the demo with its traffic until SIGINT/SIGTERM."""
    from .server import serve

    d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="qkdseg-kms-demo-"))
    if (d / "kms.toml").exists():
        from ..errors import InvalidRequest
        from ..server.config import load_config

        if set(load_config(d).saes) != set(DEMO_SAES):
            raise InvalidRequest(f"--dir {d}: holds a key service that is not the demo's (SAEs "
                                 f"{', '.join(sorted(load_config(d).saes))}); give a new or empty directory")
    else:
        make_demo(d)
        print(f"qkdseg kms demo: service directory {d} (the example network, pools of 24,000 bits at 400 bit/s)",
              flush=True)
    holder: dict = {}

    def listening(etsi_port: int, _dash_port: int) -> None:
        holder["traffic"] = Traffic(d, etsi_port, rate=rate, seed=seed)
        holder["traffic"].start()
        print(f"qkdseg kms demo: {rate:g} ETSI 014 key requests per second (seed {seed}); Ctrl-C stops", flush=True)

    try:
        serve(d, "127.0.0.1", port, dashboard_port=dashboard_port, on_listening=listening)
    finally:
        if "traffic" in holder:
            holder["traffic"].stop_event.set()
            t = holder["traffic"]
            print(f"qkdseg kms demo: {t.sent} key requests sent, {t.issued} served, {t.refused} refused; "
                  f"{d} is kept (audit.jsonl, the database; 'qkdseg kms audit {d}' checks it)", flush=True)
