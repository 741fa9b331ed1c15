"""``python -m benchmarks.confirm_cost [--requests 40] [--stock LOW:HIGH] [--take N]``: the link key that delivered
or stocked keys cost on the example network (issue 38: the confirmation's one-time MAC key).

Runs ``qkdseg net init`` (the example network, A at node 0, B at node 7, level 0.5) and ``net up``, then either

- ``--requests N`` one-key ``enc_keys`` of A, one after the other (spare keys of earlier runs serve some); or
- ``--stock LOW:HIGH`` (a stock of A:B): waits for the first fill, then takes ``--take`` keys (below LOW) and waits
  for the refill;

and reads the controller's audited plans (each plan's ``route.consumed_bits``: the link key its relays took) and
what was delivered (the keys A got) or stocked (node 0's ``stock refill`` records). Prints one JSON line: link bits,
key bits, link bits per key bit, relay runs and relays. The same script measures any checkout: run it with that
checkout's sources first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .network import _port, _run  # the qkdseg console script beside this Python, a free loopback port

SIZE = 256


def _records(path: Path, event: str) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == event:
            out.append(rec)
    return out


class _Session:
    """One SAE's HTTPS session; the CA given per call (a session's ``verify`` loses to REQUESTS_CA_BUNDLE)."""

    def __init__(self, d: Path, sae: str) -> None:
        import requests

        self.s = requests.Session()
        self.s.cert = (str(d / "pki" / f"{sae}.crt"), str(d / "pki" / f"{sae}.key"))
        self.ca = str(d / "pki" / "ca.crt")

    def get(self, url: str, **kw):
        return self.s.get(url, verify=self.ca, **kw)

    def post(self, url: str, **kw):
        return self.s.post(url, verify=self.ca, **kw)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--stock", default=None, help="LOW:HIGH: measure a stock's refill runs instead")
    ap.add_argument("--take", type=int, default=49)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "deploy"
        extra = ["--stock", "A:B", "--stock-keys", a.stock] if a.stock else []
        _run("net", "init", str(d), "--network", "example", "--sae", "A=0", "--sae", "B=7", "--security-level",
             "0.5", "--port", str(_port()), *extra)
        addr = {str(n["id"]): n["address"] for n in json.loads((d / "controller" / "net.json").read_text())["nodes"]}
        url = f"https://{addr['0']}/api/v1/keys/B"
        _run("net", "up", str(d), "--detach", "--dashboard-port", str(_port()))
        try:
            sess = _Session(d, "A")
            if a.stock:
                high = int(a.stock.split(":")[1])
                _wait(sess, url, high)
                got = sess.post(f"{url}/enc_keys", json={"number": a.take}, timeout=60)
                assert got.status_code == 200, got.text
                _wait(sess, url, high)
                time.sleep(2.0)  # the audit lines of the last run
                plans = [p for p in _records(d / "controller" / "audit.jsonl", "plan") if p.get("refill")]
                stocked = sum(len(r["key_ids"]) for r in _records(d / "nodes" / _name(d, "0") / "audit.jsonl",
                                                                   "stock refill"))
                key_bits, what = stocked * SIZE, f"stocked keys (refill runs asked {a.take} after the first fill)"
            else:
                delivered = 0
                for _ in range(a.requests):
                    r = sess.post(f"{url}/enc_keys", json={"number": 1}, timeout=60)
                    if r.status_code == 200:
                        delivered += len(r.json()["keys"])
                time.sleep(1.0)
                plans = _records(d / "controller" / "audit.jsonl", "plan")
                key_bits, what = delivered * SIZE, f"delivered keys ({a.requests} one-key requests)"
        finally:
            _run("net", "down", str(d))
    link = sum(p["route"]["consumed_bits"] for p in plans)
    print(json.dumps({"what": what, "key_bits": key_bits, "link_bits": link, "runs": len(plans),
                      "relays": sum(p["route"]["relays"] for p in plans),
                      "link_bits_per_key_bit": round(link / key_bits, 4) if key_bits else None,
                      "runs_numbers": [p["number"] for p in plans][:20]}))


def _name(d: Path, node: str) -> str:
    return json.loads((d / "nodes.json").read_text())[node]


def _wait(sess, url: str, high: int, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = sess.get(f"{url}/status", timeout=30)
        if r.status_code == 200 and r.json()["stored_key_count"] >= high:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the stock did not fill: {r.text}")
        time.sleep(0.3)


if __name__ == "__main__":
    main()
