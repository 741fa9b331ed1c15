"""The replicated controller: its state in etcd and its leadership by an etcd lease (docs/network.md).

``qkdseg controller serve CTRLDIR --store etcd://HOST:PORT[,HOST:PORT...]``
runs one of several controllers over one etcd cluster. The client is
``etcd3gw`` (OpenStack's client of etcd's v3 JSON gateway, over ``requests``);
:class:`Etcd` gives it several endpoints, trying the next one when a member
does not answer.

- **Leadership** (:class:`Election`): each controller holds a lease of
  ``QKDSEG_LEASE_TTL_S`` seconds (default 3), kept alive every third of it,
  and campaigns with a compare-and-set: put ``PREFIX/leader`` with its lease
  *if the key does not exist* (``create_revision == 0``). The winner
  remembers the key's ``create_revision``; when its lease expires (the
  process died or stopped), etcd deletes the key and a standby's next
  campaign (every 0.2 s) wins.
- **State** (:class:`EtcdStore`, the key service's store interface for what a
  controller keeps): ``PREFIX/state`` holds every link's row (consumed bits,
  level, time: the reservations) and the audit chain's head;
  ``PREFIX/audit/<seq>`` the audit lines of one commit (plans, voids,
  lowered levels), chained with the deployment's audit key. Every commit is
  one etcd transaction that compares ``PREFIX/leader``'s ``create_revision``
  with the writer's own **and** ``PREFIX/state``'s ``mod_revision`` with the
  one it read or wrote last: a deposed leader (its lease gone, another
  leading) cannot commit, and neither can a writer whose view is stale.
  No key material is ever written (the controller holds none).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import InvalidRequest, env_number
from ..server.audit import GENESIS, chain_line
from ..server.store import Batch

logger = logging.getLogger("qkdseg.net.replica")

LEASE_TTL_S = env_number("QKDSEG_LEASE_TTL_S", 3, int)
CAMPAIGN_S = 0.2


class NotLeader(Exception):
    """This controller does not lead (now)."""


def not_leader(msg: str, leader: str | None):
    """The 503 problem of a controller that cannot plan now (``reason: "not_leader"``, ``leader``: an address hint);
    a node then asks the next controller."""
    from .wire import Problem

    return Problem(503, "Service Unavailable", msg, message=msg, reason="not_leader", leader=leader)


class EtcdUnavailable(Exception):
    """No etcd member answered."""


def parse_store(spec: str) -> list[tuple[str, int]]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` -> endpoints; anything else is one line of error."""
    if not spec.startswith("etcd://"):
        raise InvalidRequest(f"--store {spec!r}: expected etcd://HOST:PORT[,HOST:PORT...] (SQLite is the default)")
    return [parse_address(part, f"--store {spec!r}:") for part in spec[len("etcd://"):].split(",")]


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise InvalidRequest(f"{what} {text!r}: expected HOST:PORT")
    if not 0 < int(port) < 65536:
        raise InvalidRequest(f"{what} {text!r}: port {port} is not in 1..65535")
    return host, int(port)


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


class Etcd:
    """etcd3gw clients of every endpoint; a call goes to the last one that answered, then to the others."""

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = 1.5) -> None:
        import etcd3gw

        self.clients = [etcd3gw.client(host=h, port=p, timeout=timeout, api_path="/v3/") for h, p in endpoints]
        self.current = 0
        self._lock = threading.Lock()

    def post(self, path: str, body: dict) -> dict:
        from etcd3gw import exceptions

        last = None
        for i in range(len(self.clients)):
            j = (self.current + i) % len(self.clients)
            c = self.clients[j]
            try:
                out = c.post(c.get_url(path), json=body)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError) as err:
                last = err
                continue
            self.current = j
            return out
        raise EtcdUnavailable(f"no etcd member answered ({type(last).__name__})")

    def txn(self, compare: list, success: list, failure: list | None = None) -> dict:
        return self.post("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    def get(self, key: str) -> dict | None:
        r = self.post("/kv/range", {"key": _b64(key)})
        kvs = r.get("kvs") or []
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: str) -> list[dict]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self.post("/kv/range", {"key": _b64(prefix), "range_end": _b64(end)}).get("kvs") or []

    def grant(self, ttl: int) -> int:
        return int(self.post("/lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's TTL after the refresh (0 or less: it is gone)."""
        r = self.post("/lease/keepalive", {"ID": lease})
        return int(r.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.post("/kv/lease/revoke", {"ID": lease})


def deployment_prefix(ctrl_dir: Path) -> str:
    """``/qkdseg/<16 hex of the deployment CA's SHA-256>/``: two deployments on one etcd never share keys."""
    return "/qkdseg/" + hashlib.sha256((Path(ctrl_dir) / "ca.crt").read_bytes()).hexdigest()[:16] + "/"


class Election:
    """Leadership by a lease and a compare-and-set on ``PREFIX/leader`` (value: ``{"id", "address"}``).

    A thread keeps the lease alive and campaigns; ``on_change(leading)`` is
    called (from that thread) when this process starts or stops leading.
    """

    def __init__(self, etcd: Etcd, prefix: str, ident: str, address: str, on_change, ttl: int = LEASE_TTL_S) -> None:
        self.etcd, self.key, self.ident, self.address = etcd, prefix + "leader", ident, address
        self.on_change, self.ttl = on_change, ttl
        self.lease: int | None = None
        self.leader_rev: int | None = None  # create_revision of our leader key while we lead
        self.leader_hint: str | None = None  # the leader's address as last seen
        self.leading = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="qkdseg-election", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            logger.warning("controller %s: %s", self.ident, "leads" if leading else "stands by")
            self.on_change(leading)

    def _campaign(self) -> None:
        value = _b64(json.dumps({"id": self.ident, "address": self.address}))
        r = self.etcd.txn([{"key": _b64(self.key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                          [{"request_put": {"key": _b64(self.key), "value": value, "lease": str(self.lease)}}],
                          [{"request_range": {"key": _b64(self.key)}}])
        if r.get("succeeded"):
            self.leader_rev = int(r["header"]["revision"])
            self.leader_hint = self.address
            self._set(True)
            return
        kvs = (r.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
        if kvs:
            cur = json.loads(_unb64(kvs[0]["value"]))
            self.leader_hint = cur.get("address")
            if cur.get("id") == self.ident and int(kvs[0].get("lease", 0)) == self.lease:
                self.leader_rev = int(kvs[0]["create_revision"])  # ours (a reply lost on the way)
                self._set(True)
                return
        self._set(False)

    def _run(self) -> None:
        last_alive = 0.0
        while not self.stop.is_set():
            try:
                if self.lease is None:
                    self.lease = self.etcd.grant(self.ttl)
                    last_alive = time.monotonic()
                if time.monotonic() - last_alive >= self.ttl / 3:
                    if self.etcd.keepalive(self.lease) <= 0:  # expired (we were stopped or cut off): a new one
                        self.lease, self.leader_rev = None, None
                        self._set(False)
                        continue
                    last_alive = time.monotonic()
                if self.leading:
                    kv = self.etcd.get(self.key)
                    if kv is None or int(kv["create_revision"]) != self.leader_rev:
                        self.leader_rev = None
                        self._set(False)
                else:
                    self._campaign()
            except EtcdUnavailable as err:
                logger.warning("controller %s: %s", self.ident, err)
                if self.leading and time.monotonic() - last_alive > self.ttl:  # our lease may be gone: stand by
                    self.leader_rev = None
                    self._set(False)
            except Exception:  # noqa: BLE001 -- keep campaigning; the commits' comparisons keep the state safe
                logger.exception("controller %s: election step failed", self.ident)
            self.stop.wait(CAMPAIGN_S)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        if self.lease is not None:  # a clean stop hands over at once
            try:
                self.etcd.post("/lease/revoke", {"ID": self.lease})
            except Exception:  # noqa: BLE001 -- it expires by itself
                pass


class EtcdStore:
    """What a controller keeps (links' rows, audit chain, meta), in etcd, written only while it leads.

    The methods the controller's :class:`qkdseg.server.core.ServiceState` calls on its store:
    ``load_links``, ``meta``,
    ``set_meta``, ``renumber_links``, ``commit`` and ``close``.
    """

    def __init__(self, etcd: Etcd, prefix: str, audit_key: bytes, election: Election | None = None) -> None:
        self.etcd, self.prefix, self.audit_key, self.election = etcd, prefix, audit_key, election
        self.db_path = f"etcd:{prefix}"
        self.directory = None
        self.rows: dict[int, tuple] = {}
        self.state_rev = 0
        self.audit_seq, self.audit_hash = 0, GENESIS
        self.commits = 0
        self.refused = 0  # commits etcd refused (deposed, or a stale state)
        #: More of the controller's state, written into ``PREFIX/state`` with every commit: name -> a callable
        #: giving it (JSON); :attr:`extra` holds them as the last :meth:`reload` read them (the suspects: .suspects).
        self.sections: dict = {}
        self.extra: dict = {}
        self.reload()

    def reload(self) -> None:
        """Read the state (links, audit head) and its revision: what a new leader starts from."""
        kv = self.etcd.get(self.prefix + "state")
        if kv is None:
            self.rows, self.state_rev, self.audit_seq, self.audit_hash = {}, 0, 0, GENESIS
            self.extra = {}
            return
        st = json.loads(_unb64(kv["value"]))
        self.extra = {k: v for k, v in st.items() if k not in ("links", "audit_seq", "audit_hash")}
        self.rows = {int(k): tuple(v) for k, v in st["links"].items()}
        self.state_rev = int(kv["mod_revision"])
        self.audit_seq, self.audit_hash = int(st["audit_seq"]), st["audit_hash"]

    # -- the ServiceState's store interface -------------------------------------------------
    def load_links(self) -> dict[int, tuple]:
        return dict(self.rows)

    def meta(self, name: str) -> str | None:
        kv = self.etcd.get(self.prefix + "meta/" + name)
        return None if kv is None else _unb64(kv["value"]).decode()

    def set_meta(self, name: str, value: str) -> None:
        if self.election is not None and not self.election.leading:
            return  # the leader writes it
        self.etcd.post("/kv/put", {"key": _b64(self.prefix + "meta/" + name), "value": _b64(value)})

    def renumber_links(self, rows: dict) -> None:
        self.rows = dict(rows)  # written with the next commit

    def seal(self, row, material):  # pragma: no cover -- a controller never holds keys
        raise RuntimeError("the controller holds no key material")

    open = seal

    def commit(self, batch: Batch) -> None:
        """One etcd transaction: the links' rows and the audit head in ``state``, the audit lines in
        ``audit/<first seq>``; refused (:class:`NotLeader`) unless this process leads with the state it read."""
        if batch.put_keys or batch.issue_keys or batch.delete_keys:
            raise RuntimeError("the controller holds no key material")
        rev = None if self.election is None else self.election.leader_rev
        if self.election is not None and rev is None:
            raise not_leader("this controller does not lead; ask the leader", self.election.leader_hint)
        rows = {**self.rows, **{int(k): tuple(v) for k, v in batch.links.items()}}
        seq, head = self.audit_seq, self.audit_hash
        lines = []
        by = None if self.election is None else self.election.address
        for rec in batch.audit:
            rec = {**rec, "controller": by} if by else rec  # which of the controllers wrote it
            seq += 1
            line, head = chain_line(self.audit_key, rec, seq, head)
            lines.append(line)
        state = {"links": {str(k): list(v) for k, v in sorted(rows.items())}, "audit_seq": seq, "audit_hash": head,
                 **{name: get() for name, get in self.sections.items()}}
        compare = [{"key": _b64(self.prefix + "state"), "result": "EQUAL", "target": "MOD",
                    "mod_revision": str(self.state_rev)}]
        if rev is not None:
            compare.append({"key": _b64(self.prefix + "leader"), "result": "EQUAL", "target": "CREATE",
                            "create_revision": str(rev)})
        ops = [{"request_put": {"key": _b64(self.prefix + "state"), "value": _b64(json.dumps(state))}}]
        if lines:
            ops.append({"request_put": {"key": _b64(f"{self.prefix}audit/{self.audit_seq + 1:012d}"),
                                        "value": _b64("\n".join(lines))}})
        try:
            r = self.etcd.txn(compare, ops)
        except EtcdUnavailable as err:  # its outcome is unknown: the next leader's reload reads what etcd holds
            raise not_leader(f"the controller's store (etcd) is unavailable ({err}); try again", None) from None
        if not r.get("succeeded"):
            self.refused += 1
            if self.election is not None:
                self.election.leader_rev = None  # deposed: stand by until the next campaign
            raise not_leader("etcd refused the commit: this controller no longer leads; try again",
                             None if self.election is None else self.election.leader_hint)
        self.rows, self.audit_seq, self.audit_hash = rows, seq, head
        self.extra = {k: v for k, v in state.items() if k not in ("links", "audit_seq", "audit_hash")}
        self.state_rev = int(r["header"]["revision"])
        self.commits += 1

    def close(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()


def read_state(etcd: Etcd, prefix: str) -> dict:
    """``PREFIX/state`` as stored: ``links`` (link index -> [u, v, consumed bits, level, time]), ``audit_seq``,
    ``audit_hash``; ``{}`` before the first commit."""
    kv = etcd.get(prefix + "state")
    return {} if kv is None else json.loads(_unb64(kv["value"]))


def audit_lines(etcd: Etcd, prefix: str) -> list[str]:
    """Every audit line in etcd, in order (``qkdseg.server.audit.check_lines`` checks the chain)."""
    out = []
    for kv in sorted(etcd.get_prefix(prefix + "audit/"), key=lambda kv: _unb64(kv["key"])):
        out += _unb64(kv["value"]).decode().split("\n")
    return out


def open_replicated_service(directory: Path, store_spec: str, address: str):
    """The key service of a controller over etcd, and its election (started by the caller)."""
    from ..server.audit import load_audit_key
    from ..server.config import load_config
    from ..server.core import ServiceState
    from ..topology import load

    d = Path(directory)
    cfg = load_config(d)
    spec = cfg.network
    if not (spec == "example" or spec.startswith("topohub:")):
        spec = str(cfg.path(spec))
    etcd = Etcd(parse_store(store_spec))
    prefix = deployment_prefix(d)
    ident = f"{address}|{os.getpid()}"
    election = Election(etcd, prefix, ident, address, lambda leading: None)
    from ..server.lock import lock_directory

    lock = lock_directory(d)  # one process per controller directory, as with SQLite
    try:
        store = EtcdStore(etcd, prefix, load_audit_key(cfg.path(cfg.audit_key)), election)
        store.lock = lock
        svc = ServiceState(cfg, load(spec), store)
    except EtcdUnavailable as err:
        lock.release()
        raise InvalidRequest(f"--store {store_spec}: {err}") from None
    except BaseException:
        lock.release()
        raise
    return svc, election


class ReplicaHook:
    """The controller's hooks in replicated mode: ``check()`` before a plan, a report or a status (503
    ``not_leader`` on a standby; a fresh state from etcd on the first request after taking over, or after a
    failed commit), ``health()`` fields, and ``close()``."""

    def __init__(self, svc, election: Election) -> None:
        self.svc, self.election = svc, election
        self.dirty = True
        self.failovers = 0  # times this process took over
        self.on_reload: list = []  # called after each reload from etcd (the suspects: .suspects.replicated)
        election.on_change = self._changed

    def _changed(self, leading: bool) -> None:  # the election's thread
        self.dirty = True
        if leading:
            self.failovers += 1

    def check(self) -> None:
        from ..server.groupcommit import GroupCommit

        el, svc = self.election, self.svc
        if not el.leading or el.leader_rev is None:
            raise not_leader("this controller is a standby; ask the leader", el.leader_hint)
        if self.dirty or svc.committer.failed is not None:
            old = svc.committer
            svc.store.reload()
            svc.load()  # the levels (reservations) and the audit head as etcd holds them
            svc.committer = GroupCommit(svc.store)
            old._executor.shutdown(wait=False)
            for fn in self.on_reload:
                fn()
            self.dirty = False

    def health(self) -> dict:
        return {"leader": bool(self.election.leading and self.election.leader_rev is not None),
                "leader_address": self.election.leader_hint, "store": "etcd", "takeovers": self.failovers,
                "commits": self.svc.store.commits, "commits_refused": self.svc.store.refused}

    def close(self) -> None:
        self.election.close()


def attach(directory: Path, store_spec: str, address: str):
    """``(service, hook)`` of a controller over etcd; the election runs from now on."""
    svc, election = open_replicated_service(directory, store_spec, address)
    hook = ReplicaHook(svc, election)
    election.start()
    return svc, hook
