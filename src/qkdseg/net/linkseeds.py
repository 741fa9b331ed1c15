"""Link seeds the two ends of a link agree between themselves (``net init --link-seeds agree``; docs/network.md,
"Link seeds agreed by the nodes").

With ``--link-seeds agree`` ``net init`` writes no seed: each emulated link's
32-byte seed is drawn by its **proposer**, the link's first end in the
network's orientation (``link[0]``), and sent to the other end (the
**acceptor**) over their mutual-TLS channel (``POST /relay/v1/seed``). Still an
emulation of QKD: the seed's secrecy rests on TLS 1.3's key exchange and on the
two nodes' hosts, not on physics.

**[choice]** The proposer seals its seed (under its own storage key, in
``links.sealed.json``) *before* it sends it, and sends that same seed on every
retry, also after a crash: a link never has two candidate seeds, so there is
nothing to replace and no "unused proposal" to tell apart. The acceptor seals
what it receives (once; a different seed for a link it holds one for is
refused, 409, logged) and answers ``{"held": true}``. Who may use the stream:

- the acceptor, once it has sealed the seed (the proposer sealed it before);
- the proposer, reading the acceptor's messages once it holds the seed (the
  acceptor sends only once it has sealed it), and sending once the acceptor
  answered that it holds the same seed (a check value, an HMAC of the seed,
  is compared; after a restart only the check value is sent).

So no bit of a stream is used before both ends hold the same seed, and a
restart after the seed is sealed never draws another one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import time
from pathlib import Path

from ..errors import InvalidRequest
from ..server.etsi import KmsError
from ..server.files import write_durably
from .hostile import HOSTILE_ENV
from .keystream import LinkStream
from .layout import link_name, seal
from .limits import read_json
from .wire import Problem, json_response, problem_routes, require

logger = logging.getLogger("qkdseg.net")
#: TEST ONLY: a node started with this variable set to a link's name (and ``QKDSEG_ALLOW_HOSTILE=1``) kills itself
#: (SIGKILL) right after it sealed that link's seed: a crash in the middle of an agreement (tests/test_net_links36.py).
KILL_ENV = "QKDSEG_TEST_KILL_AFTER_SEAL"

#: Seconds between a proposer's tries while the other end does not answer (doubling up to the last).
RETRY_S = (0.2, 0.5, 1.0, 2.0)


def check_value(name: str, seed: bytes) -> str:
    """What both ends compare (an HMAC of the link's name under the seed: it tells nothing of the seed)."""
    return hmac.new(seed, b"qkdseg link seed check|" + name.encode(), hashlib.sha256).hexdigest()


class AgreedStream(LinkStream):
    """A link's key stream whose seed its ends agree at run time: reads refused (503) until this end may use it."""

    __slots__ = ("agreed", "held", "name", "out_dir")

    def __init__(self, name: str, out_dir: int, seed: bytes | None, agreed: bool) -> None:
        super().__init__(seed or bytes(32))
        self.name, self.out_dir = name, out_dir
        self.held, self.agreed = seed is not None, seed is not None and agreed

    def hold(self, seed: bytes, agreed: bool) -> None:
        self._seed, self.held, self.agreed = bytes(seed), True, agreed

    def check(self) -> str:
        return check_value(self.name, self._seed)

    def read(self, direction: int, offset: int, nbytes: int) -> bytes:
        if not self.held or (direction == self.out_dir and not self.agreed):
            raise KmsError(503, f"link {self.name}'s seed is not agreed with the other end yet (net init "
                                "--link-seeds agree); no key was issued", reason="link_not_agreed")
        return super().read(direction, offset, nbytes)


def _write_sealed(path: Path, sealed: dict) -> None:
    """``links.sealed.json`` replaced whole (mode 0600, on disk before the rename: a crash leaves the old or the new)."""
    write_durably(path, json.dumps(sealed, indent=1) + "\n")


class LinkSeeds:
    """The emulated links of one node whose seeds are agreed at run time (``svc.seeds``)."""

    def __init__(self, svc, skey: bytes, sealed: dict) -> None:
        self.svc, self.skey, self.sealed = svc, skey, dict(sealed)
        self.path = svc.dir / "links.sealed.json"
        self.ends: dict[str, tuple[str, bool, AgreedStream]] = {}  # name -> (neighbour, proposer?, stream)
        self.conflicts: dict[str, str] = {}  # name -> why the other end refused this node's seed
        self.kill_after = os.environ.get(KILL_ENV)
        if self.kill_after is not None and os.environ.get(HOSTILE_ENV) != "1":
            raise InvalidRequest(f"{KILL_ENV} kills this node in the middle of a link's seed agreement (for tests "
                                 f"only); it is refused unless {HOSTILE_ENV}=1")

    def add(self, lk: dict, seed: bytes | None) -> AgreedStream:
        """Link ``lk``'s stream (``seed``: the one sealed here, if any): the acceptor's is usable once held, the
        proposer's once the other end said it holds the same."""
        u, v = lk["link"]
        name = link_name(u, v)
        proposer = self.svc.id == u
        stream = AgreedStream(name, 0 if proposer else 1, seed, agreed=not proposer)
        self.ends[name] = (str(lk["neighbour"]), proposer, stream)
        return stream

    def ready(self, name: str) -> bool:
        end = self.ends.get(name)
        return end is None or end[2].agreed

    def pending(self) -> list[str]:
        """The links whose seed this node may not use yet (for /health and /readyz)."""
        return sorted(name for name, (_nb, _p, s) in self.ends.items() if not s.agreed)

    def _seal(self, name: str, seed: bytes) -> None:
        sealed = {**self.sealed, name: seal(self.skey, name, seed)}
        _write_sealed(self.path, sealed)  # on disk first: memory never holds a seal the file does not
        self.sealed = sealed
        if self.kill_after == name:  # TEST ONLY (KILL_ENV): a crash right after the seal
            os.kill(os.getpid(), signal.SIGKILL)
        self._audit(name, "sealed", check_value(name, seed))

    def _audit(self, name: str, what: str, check: str) -> None:
        from ..server.store import Batch
        from ..server.storehealth import CommitFailed

        try:
            self.svc.store.commit(Batch(audit=[{"time": round(time.time(), 6), "event": "link seed", "link": name,
                                                "outcome": what, "check": check[:16]}]))
        except CommitFailed as err:  # the seed is sealed whatever the audit: logged
            logger.warning("link %s: the seed's audit record was not written (%s)", name, err)

    def _agreed(self, name: str) -> None:
        logger.info("link %s: seed agreed with node %s", name, self.ends[name][0])
        now = getattr(self.svc, "_report_now", None)
        if now is not None:  # the controller learns that the link is up
            now.set()

    # -- the proposer ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until every link this node proposes for is agreed: propose (the neighbour down: again, backing off)."""
        tries = 0
        while True:
            todo = [name for name, (_nb, proposer, s) in self.ends.items() if proposer and not s.agreed]
            if not todo:
                return
            for name in todo:
                await self.propose(name)
            if any(not self.ends[n][2].agreed for n in todo):
                await asyncio.sleep(RETRY_S[min(tries, len(RETRY_S) - 1)] if not self.conflicts else 30.0)
                tries += 1

    async def propose(self, name: str) -> bool:
        """One try: the seed drawn and sealed here if none is, then the other end asked whether it holds it (sent
        the seed when it holds none). Returns whether the link is agreed."""
        nb, _proposer, stream = self.ends[name]
        if not stream.held:
            seed = secrets.token_bytes(32)
            try:
                self._seal(name, seed)  # sealed before it leaves: every retry, also after a crash, sends this one
            except OSError as err:
                logger.error("link %s: the seed could not be sealed (%s); trying again", name, err)
                return False
            stream.hold(seed, agreed=False)
        url = f"https://{self.svc.addresses[nb]}/relay/v1/seed"
        body = {"link": name, "check": stream.check()}
        try:
            r = await self.svc._http().post(url, json=body, timeout=5.0)
            if r.status_code == 200 and r.json().get("held") is False:
                r = await self.svc._http().post(
                    url, json={**body, "seed": base64.b64encode(stream._seed).decode()}, timeout=5.0)
        except Exception as err:  # noqa: BLE001 -- the other end down or unreachable: the next try
            from .tlsfail import describe

            logger.debug("link %s: node %s not reached for the seed (%s)", name, nb, describe(err))
            return False
        if r.status_code == 200 and r.json().get("held") is True:
            stream.agreed = True
            self.conflicts.pop(name, None)
            self._agreed(name)
            return True
        why = f"{r.status_code} {r.text[:300]}"
        if self.conflicts.get(name) != why:
            logger.error("link %s: node %s refused this node's seed: %s", name, nb, why)
        self.conflicts[name] = why
        return False

    # -- the acceptor ----------------------------------------------------------------------------------
    def accept(self, caller: str, w: dict) -> dict:
        """``POST /relay/v1/seed`` from ``caller``: ``{"link", "check"[, "seed"]}`` -> ``{"held": bool}``."""
        name = str(w["link"])
        end = self.ends.get(name)
        if end is None:
            raise Problem(404, "Not Found", f"node {self.svc.id!r} agrees no seed for link {name!r} (not its link, "
                                            "or its seed was written by net init, or it is device-fed)")
        nb, proposer, stream = end
        if proposer or caller != nb:
            raise Problem(403, "Forbidden", f"link {name}'s seed is proposed by its first end, node {nb!r}, only")
        check = str(w["check"])
        if stream.held:
            if hmac.compare_digest(stream.check(), check):
                return {"held": True}
            logger.error("link %s: node %s proposes another seed than the one sealed here; refused (was its "
                         "links.sealed.json lost or replaced?)", name, nb)
            raise Problem(409, "Conflict", f"node {self.svc.id!r} holds another seed for link {name}, agreed "
                                           "earlier; a link's seed is agreed once: restore the proposer's "
                                           "links.sealed.json from a backup, or run net init again")
        if "seed" not in w:
            return {"held": False}
        seed = base64.b64decode(str(w["seed"]), validate=True)
        if len(seed) != 32 or not hmac.compare_digest(check_value(name, seed), check):
            raise Problem(400, "Bad Request", "the seed is not 32 bytes, or does not match its check value")
        try:
            self._seal(name, seed)
        except OSError as err:
            raise Problem(503, "Service Unavailable", f"node {self.svc.id!r} could not seal link {name}'s seed "
                                                      f"({type(err).__name__}); try again") from None
        stream.hold(seed, agreed=True)
        self._agreed(name)
        return {"held": True}

    def routes(self) -> list:
        from starlette.routing import Route

        @problem_routes
        async def seed(request):
            role = require(request, "node")
            return json_response(self.accept(role.ident, await read_json(request, 4096)))

        return [Route("/relay/v1/seed", seed, methods=["POST"])]
