"""XOR against threshold sharing in the network of processes, with a relay killed and with a tampering relay
(issue 40). Real processes on loopback (``net init`` + ``net up``), as tests/test_net_threshold.py runs them.

For each network and sharing:

Every request asks for a key size no earlier one had, so that no spare key of an earlier run serves it: each is a
relay run.

- **kill**: 8 clients, ``--per-client`` requests each (one key of 256 bits), the relay ``kill`` killed with SIGKILL
  0.5 s in; the node is restarted afterwards;
- **tamper**: the relay ``tamper`` restarted as the hostile-node harness flipping a byte of every piece it forwards,
  then ``--tamper-requests`` requests one after the other.

Printed per run: requests answered 200 (runs survived), keys delivered identical at both ends, the median and the
95th percentile of a request's time and the keys delivered per second of the scenario's wall time.

    PYTHONPATH=src python benchmarks/threshold_net.py [--per-client 4] [--tamper-requests 12] [--out FILE.json]
    PYTHONPATH=src python benchmarks/threshold_net.py --slow 500ms   # one path slow instead: the k-th fastest path
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from four_paths import FOUR  # noqa: E402 -- tests/ on the path first

# (label, network, SAE B's node, net init flags, relay killed, relay tampering)
CASES = [
    ("four, xor (paper)", "four", "10", ["--security-level", "0.2"], "2", "7"),
    ("four, threshold T=1", "four", "10", ["--security-level", "0.2", "--tolerate", "1"], "2", "7"),
    ("four, threshold T=2", "four", "10", ["--security-level", "0.2", "--tolerate", "2"], "2", "7"),
    ("example, xor (xor-all)", "example", "7", ["--security-level", "0.2", "--reconstruction", "xor-all"], "1", "5"),
    ("example, threshold T=1 (xor-all)", "example", "7",
     ["--security-level", "0.2", "--reconstruction", "xor-all", "--tolerate", "1"], "1", "5"),
]


_SIZES = itertools.count(0)
_LOCK = threading.Lock()


def _one(net, bnode: str) -> tuple[int, float, str]:
    """One request A -> B of a key size no earlier request had (so no spare key of an earlier run serves it: every
    request is a relay run), the slave's fetch and the comparison: (code, seconds, why)."""
    with _LOCK:
        size = 256 + 8 * (next(_SIZES) % 480)
    m, s = net.client("A", "0"), net.client("B", bnode)
    t0 = time.monotonic()
    code, c = m.get_key("B", size=size)
    dt = time.monotonic() - t0
    if code == 200:
        code2, back = s.get_key_with_key_IDs("A", [c.keys[0].key_id])
        if code2 != 200 or back.keys[0].key != c.keys[0].key:
            return -1, dt, "keys differ"  # never expected: counted apart
    return code, dt, "" if code == 200 else str(getattr(c, "message", c))[:120]


def _summary(results: list, wall: float) -> dict:
    ok = [dt for code, dt, _ in results if code == 200]
    return {"requests": len(results), "delivered": len(ok), "wrong": sum(code == -1 for code, _, _ in results),
            "failed": len(results) - len(ok),
            "median_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(sorted(ok)[math.ceil(0.95 * len(ok)) - 1], 3) if ok else None,  # nearest rank
            "keys_per_s": round(len(ok) / wall, 2), "wall_s": round(wall, 2),
            "why": sorted({w for code, _, w in results if code != 200})[:3]}


def kill_run(net, bnode: str, victim: str, per_client: int) -> dict:
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(lambda: [_one(net, bnode) for _ in range(per_client)]) for _ in range(8)]
        time.sleep(0.5)
        os.kill(net.pid(f"node-{net.names[victim]}"), signal.SIGKILL)
        results = [r for f in futs for r in f.result()]
    out = _summary(results, time.monotonic() - t0)
    net.restart(f"node-{net.names[victim]}", "node", net.dir / "nodes" / net.names[victim])
    return out


def tamper_run(net, bnode: str, victim: str, n: int) -> dict:
    from test_net_hostile import _restart

    _restart(net, net.names[victim], hostile=True)
    net.hostile_file.write_text(json.dumps({"corrupt": ["pieces"]}))
    t0 = time.monotonic()
    results = [_one(net, bnode) for _ in range(n)]
    out = _summary(results, time.monotonic() - t0)
    net.hostile_file.write_text("{}")
    audit = [json.loads(x) for x in (net.dir / "controller" / "audit.jsonl").read_text().splitlines()]
    out["controller_share_altered"] = sum(r["event"] == "share altered" for r in audit)
    out["controller_suspects"] = sorted({r["node"] for r in audit if r["event"] == "node suspect"})
    return out


def slow_run(net, bnode: str, link: str, delay: str, n: int) -> dict:
    """``n`` requests one after the other with link ``link`` (on one path) delayed by ``delay`` each way (``net up
    --faults``): XOR waits for that path's piece, threshold decodes from the others."""
    from test_net import _run

    r = _run("net", "fault", str(net.dir), "--link", link, "--delay", delay)
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    results = [_one(net, bnode) for _ in range(n)]
    out = _summary(results, time.monotonic() - t0)
    _run("net", "fault", str(net.dir), "--link", link, "--heal")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--tamper-requests", type=int, default=12)
    ap.add_argument("--only", default="", help="run the cases whose label contains this")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--slow", metavar="DELAY", help="instead: net up --faults, one path's link delayed by DELAY "
                    "(e.g. 500ms), --tamper-requests requests one after the other (the run's time: k-th fastest path)")
    args = ap.parse_args()
    from test_net import _free_port, _run, net_up

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        topo = Path(tmp) / "four.json"
        topo.write_text(json.dumps(FOUR))
        for k, (label, network, bnode, flags, kill, tamper) in enumerate(CASES):
            if args.only not in label:
                continue
            d = Path(tmp) / f"net{k}"
            spec = str(topo) if network == "four" else network
            r = _run("net", "init", str(d), "--network", spec, "--sae", "A=0", "--sae", f"B={bnode}", *flags,
                     "--port", str(_free_port()))
            assert r.returncode == 0, r.stderr
            env = {**os.environ, "QKDSEG_RELAY_TIMEOUT_S": "8", "QKDSEG_REPORT_S": "0.5"}
            if args.slow:
                from test_net import Net

                r = _run("net", "up", str(d), "--detach", "--faults", env=env, timeout=180)
                assert r.returncode == 0, r.stdout + r.stderr
                try:
                    net = Net(d, Path(tmp), env)
                    net.deliver("A", "0", "B", bnode)
                    link = f"0-{kill}" if network == "four" else f"{kill}-3"  # the killed relay's path, first hop
                    row = {"case": label, "slow": {"link": link, "delay": args.slow, **slow_run(
                        net, bnode, link, args.slow, args.tamper_requests)}}
                finally:
                    _run("net", "down", str(d), timeout=120)
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            with net_up(d, Path(tmp), env) as net:
                net.hostile_file = Path(tmp) / f"hostile{k}.json"
                net.hostile_file.write_text("{}")
                net.deliver("A", "0", "B", bnode)  # warm: the first plan compiles the routing
                row = {"case": label, "kill": kill_run(net, bnode, kill, args.per_client),
                       "tamper": tamper_run(net, bnode, tamper, args.tamper_requests)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
