"""``qkdseg net chaos DIR --duration S --seed N``: faults while SAEs request keys, and what survived (docs/network.md).

On a network started by ``net up`` (best with ``--controllers 3 --etcd 3
--faults``), for ``duration`` seconds:

- **clients**: per registered SAE pair (master, slave) at different nodes,
  one thread asks the master's node for one key (``enc_keys``) every
  ``1/rate`` seconds and fetches it at the slave's node (``dec_keys``),
  over ETSI GS QKD 014 with the SAEs' certificates (``DIR/pki/``);
- **faults**, from a schedule drawn with ``random.Random(seed)`` before the
  run (the same seed gives the same schedule; what happens then depends on
  timing): one at a time, each held a few seconds, then undone and followed
  by a quiet gap: ``kill -9`` of a relay (a node without SAEs) or of the
  controller leader or of the etcd leader (restarted after the hold; a
  leader is whoever leads when the fault starts), a link's delay, loss or
  cut (through the fault proxies). Kinds the network lacks (no etcd, no
  proxies, one controller) are not drawn;
- **watch**: every 0.5 s each controller's ``/health`` (who leads), every
  second each node's link offsets (read-only from ``relay.sqlite3``).

The report (text, or ``--format json``): ``requests``, ``delivered``,
``refused`` and ``refused_by_reason``, ``latency_mean_s`` and
``latency_p99_s`` (of delivered ``enc_keys``), ``mismatched_keys`` (the
slave's bytes differ from the master's), ``bits_reused`` (link bits that
both ends' offsets show used twice: a counter or mark that went back, or a
receiver's mark past its sender's counter), ``unfetchable_keys`` (issued to
a master, never fetched by its slave within 20 s after the run, not expired),
``failovers`` (changes of the leading controller), ``longest_leaderless_s``,
``stocked_pairs``, ``served_from_stock`` (delivered keys that came from a
key stock, ``net init --stock``) and ``stock_outs`` (requests of a stocked
pair its stock did not serve: relayed on demand, or refused), and ``seed``,
``duration_s``, ``schedule``, ``faults``. Exit 1 when
``mismatched_keys``, ``bits_reused`` or ``unfetchable_keys`` is not 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import InvalidRequest

KINDS = ("kill_relay", "kill_controller_leader", "kill_etcd_leader", "link_delay", "link_loss", "link_cut")


def make_schedule(seed: int, duration: float, kinds: list[str], relays: list[str], links: list[str]) -> list[dict]:
    """The faults of one run, from ``seed`` alone: ``[{at_s, kind, target, hold_s, value}]``, one at a time."""
    rng = random.Random(seed)
    out, t = [], 2.0 + rng.uniform(0, 2)
    while kinds:
        kind = rng.choice(kinds)
        hold = round(rng.uniform(2.0, 5.0), 2)
        if t + hold > duration - 3:
            break
        ev = {"at_s": round(t, 2), "kind": kind, "hold_s": hold, "target": None, "value": None}
        if kind == "kill_relay":
            ev["target"] = rng.choice(relays)
        elif kind in ("kill_controller_leader", "kill_etcd_leader"):
            ev["target"] = "leader"
        else:
            ev["target"] = rng.choice(links)
            ev["value"] = {"link_delay": f"{rng.choice([50, 100, 200])}ms", "link_loss": f"{rng.choice([5, 10])}%",
                           "link_cut": "cut"}[kind]
        out.append(ev)
        t += hold + rng.uniform(2.0, 4.0)
    return out


class Chaos:
    def __init__(self, directory: Path, duration: float, seed: int, rate: float) -> None:
        from .cluster import load
        from .procs import _net, _pids, processes

        self.dir = Path(directory)
        self.net = _net(self.dir)
        if not _pids(self.dir):
            raise InvalidRequest(f"{self.dir}: not up (start it with 'qkdseg net up {self.dir} --detach' first)")
        if duration <= 0 or rate <= 0:
            raise InvalidRequest("--duration and --rate must be positive")
        self.duration, self.seed, self.rate = duration, seed, rate
        self.procs = {p["name"]: p for p in processes(self.dir)}
        self.layout = load(self.dir) or {"etcd": [], "controllers": [], "proxies": []}
        self.addr = {str(n["id"]): n["address"] for n in self.net["nodes"]}
        self.sae_node = {s: str(n["id"]) for n in self.net["nodes"] for s in n["saes"]}
        self.names = {str(n["id"]): n["dir"] for n in self.net["nodes"]}
        self.stocked = set()  # the stocked pairs (net init --stock), from the nodes' configurations
        for d in self.names.values():
            conf = json.loads((self.dir / "nodes" / d / "node.json").read_text())
            self.stocked |= {tuple(p.split(":", 1)) for p in (conf.get("stock") or {}).get("pairs", [])}
        relays = [str(n["id"]) for n in self.net["nodes"] if not n["saes"]]
        links = [p["link"] for p in self.layout.get("proxies", [])]
        kinds = []
        if relays:
            kinds.append("kill_relay")
        if len(self.layout["controllers"]) > 1:
            kinds.append("kill_controller_leader")
        if len(self.layout["etcd"]) > 2:  # one member lost keeps a quorum
            kinds.append("kill_etcd_leader")
        if links:
            kinds += ["link_delay", "link_loss", "link_cut"]
        self.schedule = make_schedule(seed, duration, kinds, relays, links)
        self.lock = threading.Lock()
        self.results: list[dict] = []
        self.pending: list[dict] = []  # issued to a master, not fetched yet
        self.leader_log: list[tuple[float, str | None]] = []
        self.offset_log: dict = {}
        self.reused_bits = 0
        self.applied: list[dict] = []
        self.stop = threading.Event()

    # -- the SAEs ---------------------------------------------------------------------------------------------
    def _sae_client(self, sae: str):
        import httpx

        from .wire import client_context

        pk = self.dir / "pki"
        return httpx.Client(verify=client_context(pk / f"{sae}.crt", pk / f"{sae}.key", pk / "ca.crt"), timeout=30.0)

    @staticmethod
    def _reason(status: int, body) -> str:
        msg = (body.get("message") if isinstance(body, dict) else "") or ""
        m = msg.lower()
        for word, reason in (("failing over", "not_leader"), ("standby", "not_leader"), ("no longer leads", "not_leader"),
                             ("etcd", "store_unavailable"), ("controller", "controller_unavailable"),
                             ("no route", "no_route"), ("relay", "relay_failed"), ("unreachable", "node_unavailable"),
                             ("time", "timeout"), ("not enough", "no_key_material"),
                             ("key material", "no_key_material")):
            if word in m:
                return reason
        return f"status_{status}"

    def _client(self, master: str, slave: str) -> None:
        m, s = self._sae_client(master), self._sae_client(slave)
        mu, su = self.addr[self.sae_node[master]], self.addr[self.sae_node[slave]]
        period = 1.0 / self.rate
        nxt = time.monotonic()
        with m, s:
            while not self.stop.is_set():
                t0 = time.monotonic()
                rec = {"master": master, "slave": slave, "t": t0}
                try:
                    r = m.get(f"https://{mu}/api/v1/keys/{slave}/enc_keys", params={"number": 1, "size": 256})
                    rec["status"] = r.status_code
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                except Exception as err:  # noqa: BLE001 -- the SAE's own timeout or a reset: a refusal
                    rec["status"], body = None, {"message": f"client {type(err).__name__}"}
                rec["latency_s"] = time.monotonic() - t0
                if rec["status"] == 200:
                    k = body["keys"][0]
                    rec["key_id"], rec["key"] = k["key_ID"], k["key"]
                    rec["from_stock"] = k.get("key_extension", {}).get("qkdseg_from_stock") is True
                    self._fetch(s, su, master, rec, tries=3)
                else:
                    rec["reason"] = "client_timeout" if rec["status"] is None else self._reason(rec["status"], body)
                with self.lock:
                    self.results.append(rec)
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
                nxt = max(nxt, time.monotonic() - period)

    def _fetch(self, s, su: str, master: str, rec: dict, tries: int) -> None:
        for _ in range(tries):
            try:
                r = s.post(f"https://{su}/api/v1/keys/{master}/dec_keys", json={"key_IDs": [{"key_ID": rec["key_id"]}]})
            except Exception:  # noqa: BLE001 -- the slave's node is down or cut off: try again later
                time.sleep(0.5)
                continue
            if r.status_code == 200:
                rec["fetched"] = r.json()["keys"][0]["key"]
                return
            if r.status_code == 400 and "already" in r.text.lower():  # an earlier answer was lost on the way
                rec["answer_lost"] = True
                return
            time.sleep(0.5)
        rec["fetched"] = None

    # -- watching -----------------------------------------------------------------------------------------------
    def _leaders(self) -> str | None:
        from .cluster import leaders

        ctrls = [p for p in self.procs.values() if p["role"] == "controller"]
        if len(ctrls) < 2:
            return "controller"
        lead = [name for name, flag in leaders(self.dir, ctrls) if flag]
        return lead[0] if len(lead) == 1 else None

    def _watch_leaders(self) -> None:
        while not self.stop.is_set():
            who = self._leaders()
            self.leader_log.append((time.monotonic(), who))
            self.stop.wait(0.5)

    def _offsets(self) -> dict:
        out = {}
        for node, d in self.names.items():
            path = self.dir / "nodes" / d / "relay.sqlite3"
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
                try:
                    for link, dr, v in db.execute("SELECT link, dir, value FROM offsets"):
                        out[(node, link, int(dr))] = int(v)
                finally:
                    db.close()
            except sqlite3.Error:
                continue
        return out

    def _check_offsets(self, snap: dict) -> None:
        """A counter or mark that went back: those bytes may be used again."""
        for k, v in snap.items():
            before = self.offset_log.get(k, 0)
            if v < before:
                self.reused_bits += 8 * (before - v)
            self.offset_log[k] = max(before, v)

    def _watch_offsets(self) -> None:
        while not self.stop.is_set():
            self._check_offsets(self._offsets())
            self.stop.wait(1.0)

    # -- faults -------------------------------------------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        from .procs import _alive, _pids

        pid = _pids(self.dir).get(name)
        return pid if _alive(pid) else None

    def _restart(self, name: str) -> None:
        from .procs import _pids, health, start_one

        p = self.procs[name]
        proc = start_one(self.dir, p)
        pids = _pids(self.dir)
        pids[name] = proc.pid
        tmp = self.dir / "run" / "pids.json.chaos"
        tmp.write_text(json.dumps(pids) + "\n")
        os.replace(tmp, self.dir / "run" / "pids.json")
        deadline = time.monotonic() + 90
        while not health(self.dir, [p], timeout=1.0)[name] and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)

    def _etcd_leader(self) -> str | None:
        from .cluster import etcd_health

        for p in self.procs.values():
            if p["role"] == "etcd" and etcd_health(p["member"])[1]:
                return p["name"]
        return None

    def _apply(self, ev: dict) -> None:
        from .faults import parse_delay, parse_loss, set_fault

        kind, done = ev["kind"], {**ev, "started": round(time.monotonic() - self.t0, 2)}
        victim = None
        if kind == "kill_relay":
            victim = f"node-{self.names[ev['target']]}"
        elif kind == "kill_controller_leader":
            victim = self._leaders()
        elif kind == "kill_etcd_leader":
            victim = self._etcd_leader()
        if kind.startswith("kill_"):
            pid = self._pid(victim) if victim else None
            done["victim"] = victim
            if pid:
                os.kill(pid, signal.SIGKILL)
                self.stop.wait(ev["hold_s"])
                self._restart(victim)
            else:
                done["skipped"] = "no such process running"
        else:
            if kind == "link_delay":
                set_fault(self.dir, ev["target"], delay_ms=parse_delay(ev["value"]))
            elif kind == "link_loss":
                set_fault(self.dir, ev["target"], loss=parse_loss(ev["value"]))
            else:
                set_fault(self.dir, ev["target"], cut=True)
            self.stop.wait(ev["hold_s"])
            set_fault(self.dir, ev["target"], heal=True)
        done["ended"] = round(time.monotonic() - self.t0, 2)
        self.applied.append(done)

    def _faults(self) -> None:
        for ev in self.schedule:
            wait = self.t0 + ev["at_s"] - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return
            if time.monotonic() - self.t0 > self.duration:
                return
            self._apply(ev)

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        pairs = [(a, b) for a in sorted(self.sae_node) for b in sorted(self.sae_node)
                 if a != b and self.sae_node[a] != self.sae_node[b]]
        if not pairs:
            raise InvalidRequest(f"{self.dir}: no two SAEs at different nodes to request keys")
        pairs = pairs[:4]
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._client, args=p, daemon=True) for p in pairs]
        threads += [threading.Thread(target=self._watch_leaders, daemon=True),
                    threading.Thread(target=self._watch_offsets, daemon=True)]
        faults = threading.Thread(target=self._faults, daemon=True)
        for t in threads + [faults]:
            t.start()
        self.stop.wait(self.duration)
        self.stop.set()
        faults.join(120)  # a restart under way finishes
        for t in threads:
            t.join(60)
        return self.report()

    def _unfetched(self) -> list[dict]:
        """Keys issued to a master and not fetched: fetched again for up to 20 s (the network healed)."""
        todo = [r for r in self.results if r.get("status") == 200 and r.get("fetched") is None
                and not r.get("answer_lost")]
        deadline = time.monotonic() + 20
        while todo and time.monotonic() < deadline:
            left = []
            for r in todo:
                with self._sae_client(r["slave"]) as s:
                    self._fetch(s, self.addr[self.sae_node[r["slave"]]], r["master"], r, tries=1)
                if r.get("fetched") is None:
                    left.append(r)
            todo = left
            if todo:
                time.sleep(1.0)
        return todo

    def report(self) -> dict:
        import numpy as np

        unfetched = self._unfetched()
        self._check_offsets(self._offsets())
        snap = self.offset_log
        past = 0  # a receiver's mark past its sender's counter
        for (node, link, d), mark in snap.items():
            u, v = (str(x) for x in json.loads(link))
            sender, receiver = (u, v) if d == 0 else (v, u)
            if node == receiver:
                past += 8 * max(0, mark - snap.get((sender, link, d), 0))
        res = self.results
        ok = [r for r in res if r.get("status") == 200]
        refused = [r for r in res if r.get("status") != 200]
        by_reason: dict[str, int] = {}
        for r in refused:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        lat = np.array([r["latency_s"] for r in ok]) if ok else np.zeros(0)
        mismatched = sum(1 for r in ok if r.get("fetched") not in (None,) and r["fetched"] != r["key"])
        changes, longest, last, since = 0, 0.0, None, None
        for t, who in self.leader_log:
            if who is None:
                since = t if since is None else since
                longest = max(longest, t - since)
                continue
            if since is not None:
                longest = max(longest, t - since)
                since = None
            if last is not None and who != last:
                changes += 1
            last = who
        ttl = float(os.environ.get("QKDSEG_KEY_TTL_S", "inf"))
        unfetchable = sum(1 for r in unfetched if time.monotonic() - r["t"] < ttl)
        return {
            "seed": self.seed, "duration_s": self.duration, "rate_per_pair": self.rate,
            "pairs": sorted({f"{r['master']}->{r['slave']}" for r in res}),
            "requests": len(res), "delivered": len(ok), "refused": len(refused),
            "refused_by_reason": dict(sorted(by_reason.items())),
            "latency_mean_s": round(float(lat.mean()), 4) if lat.size else None,
            "latency_p99_s": round(float(np.quantile(lat, 0.99)), 4) if lat.size else None,
            "mismatched_keys": mismatched, "bits_reused": self.reused_bits + past,
            "unfetchable_keys": unfetchable, "failovers": changes, "longest_leaderless_s": round(longest, 2),
            "stocked_pairs": sorted(f"{m}->{s}" for m, s in self.stocked),
            "served_from_stock": sum(1 for r in ok if r.get("from_stock")),
            "stock_outs": sum(1 for r in res if (r["master"], r["slave"]) in self.stocked and not r.get("from_stock")),
            "schedule": self.schedule, "faults": self.applied,
        }


def format_report(rep: dict) -> str:
    lines = [f"chaos run: {rep['duration_s']:g} s, seed {rep['seed']}, {len(rep['faults'])} faults "
             f"({', '.join(f['kind'] for f in rep['faults']) or 'none'})",
             f"requests {rep['requests']}: delivered {rep['delivered']}, refused {rep['refused']} "
             f"{json.dumps(rep['refused_by_reason'])}",
             f"latency: mean {rep['latency_mean_s']} s, p99 {rep['latency_p99_s']} s",
             f"mismatched keys {rep['mismatched_keys']}, link bits reused {rep['bits_reused']}, "
             f"unfetchable keys {rep['unfetchable_keys']}",
             f"controller failovers {rep['failovers']}, longest with no leader {rep['longest_leaderless_s']} s"]
    if rep.get("stocked_pairs"):
        lines.append(f"stocks ({', '.join(rep['stocked_pairs'])}): served from stock {rep['served_from_stock']}, "
                     f"stock outs {rep['stock_outs']}")
    return "\n".join(lines)


def chaos(directory: Path, duration: float, seed: int, rate: float = 2.0) -> dict:
    return Chaos(directory, duration, seed, rate).run()
