"""Careless inputs and damaged files on every command, swept before an auditor does (issue 32, "Done when").

Each case is a command line (paths relative to the case's own directory, which holds fresh copies of the base
directories it names: ``kms`` made by ``kms init``, ``kmsdev`` by ``kms init --link-source device``, ``net`` by ``net
init``, and ``kmsserved``/``netserved``, the same with a store and an audit chain as a served one has), a damage done
to those files first, and the text the one line must contain. A refusal is exit 2, exactly one line on stderr
starting ``qkdseg: error:`` that contains the needle (it names the file, field or value at fault), and no traceback
anywhere. ``ACCEPTED`` lists careless-looking inputs that are fine: exit 0 (or the documented 1) and a sensible
answer.

The cases run in two driver processes (a fresh interpreter each, the cases shared between them; one import of qkdseg
instead of one per case), which call the console script's entry point once per case and forbid serving and starting
a process: every refusal of a server here (kms, node, controller, device serve, net up, kms demo) must come before it
serves. The driver is this module itself (``_drive``). tests/test_hostile_inputs.py does the
same for route and topology; tests/test_damaged_files.py has the end-to-end checks of the damaged files issue 32
named, and ``make check-careless`` the independent check of the batch commands.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BASES = ("kms", "kmsserved", "kmsdev", "net", "netserved")
GARBAGE = bytes(range(256)) * 4  # binary, not UTF-8, with newlines in it
NET_JSON = '{"nodes":[{"id":0,"p":0.9},{"id":1,"p":0.9}],"links":[{"source":0,"target":1}]}'


# -- damages (each returns a callable on the case's directory) -----------------------------------------------------
def w(rel: str, content):
    """Replace ``rel`` (a file or a directory) with ``content`` (text or bytes)."""
    def damage(d: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def rm(rel: str):
    def damage(d: Path) -> None:
        p = d / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return damage


def mkdir(rel: str):
    def damage(d: Path) -> None:
        p = d / rel
        if p.exists() and not p.is_dir():
            p.unlink()
        p.mkdir(parents=True, exist_ok=True)
    return damage


def symlink(rel: str, target: str):
    def damage(d: Path) -> None:
        (d / rel).symlink_to(target)
    return damage


def jedit(rel: str, edit):
    """Rewrite the JSON file ``rel`` as ``edit(value)`` (or the value ``edit`` changed in place)."""
    def damage(d: Path) -> None:
        p = d / rel
        v = json.loads(p.read_text())
        out = edit(v)
        p.write_text(json.dumps(v if out is None else out))
    return damage


def tset(rel: str, key: str, raw: str):
    """Set the top-level ``key = raw`` (TOML text) of a TOML file."""
    def damage(d: Path) -> None:
        p = d / rel
        lines = p.read_text().splitlines()
        at = next((i for i, line in enumerate(lines) if line.startswith(f"{key} = ")), None)
        if at is None:
            lines.insert(2, f"{key} = {raw}")
        else:
            lines[at] = f"{key} = {raw}"
        p.write_text("\n".join(lines) + "\n")
    return damage


def tsub(rel: str, old: str, new: str):
    def damage(d: Path) -> None:
        p = d / rel
        text = p.read_text()
        assert old in text, (rel, old)
        p.write_text(text.replace(old, new, 1))
    return damage


def truncate(rel: str, n: int):
    def damage(d: Path) -> None:
        p = d / rel
        p.write_bytes(p.read_bytes()[:n])
    return damage


def bom(rel: str):
    def damage(d: Path) -> None:
        p = d / rel
        p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    return damage


def append(rel: str, content):
    def damage(d: Path) -> None:
        with open(d / rel, "ab") as fh:
            fh.write(content if isinstance(content, bytes) else content.encode())
    return damage


def sql(rel: str, script: str):
    def damage(d: Path) -> None:
        db = sqlite3.connect(d / rel)
        db.executescript(script)
        db.close()
    return damage


def copy(src: str, dst: str):
    def damage(d: Path) -> None:
        shutil.copy(d / src, d / dst)
    return damage


def reissue(pki: str, name: str, *, days: int, ago: int):
    """``PKI/NAME.crt`` (and its key) issued again by the CA of ``PKI`` (its ca.key), valid ``days`` days from
    ``ago`` days ago (negative: in the future)."""
    def damage(d: Path) -> None:
        import datetime as dt

        from qkdseg.server import pki as p

        ca_key, ca = p.load_ca(d / pki)
        key, cert = p.issue(ca_key, ca, name, client=False, days=days,
                            not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=ago))
        p.write_key(d / pki / f"{name}.key", key)
        p.write_cert(d / pki / f"{name}.crt", cert)
    return damage


def both(*damages):
    def damage(d: Path) -> None:
        for one in damages:
            one(d)
    return damage


def lines_edit(rel: str, edit):
    """Rewrite a text file as ``edit(text)``."""
    def damage(d: Path) -> None:
        p = d / rel
        p.write_text(edit(p.read_text()))
    return damage


EX = ["--src", "0", "--dst", "7"]
KI = ["--network", "example", "--sae", "A=0", "--sae", "B=7"]
NI = [*KI, "--port", "19801"]
KS = ["kms", "serve", "kms", "--port", "0"]
SS = ["kms", "serve", "kmsserved", "--port", "0"]
DS = ["device", "serve", "kmsdev/devices", "--port", "0"]
NS = ["node", "serve", "net/nodes/0"]
CS = ["controller", "serve", "net/controller"]
PLACE = ["place", "example", "--budget", "2", "-q"]
STUDY_P = ["study", "--placement", "--no-zoo", "--waxman-seeds", "1", "--out", "o", "-q"]
SIM = ["simulate", "example", "--rate", "1", "--duration", "10", "--out", "o", "-q"]
TRACE = ["simulate", "example", "--trace", "t.csv", "--duration", "10", "--out", "o", "-q"]

#: (id, command line, damage or None, text the one line must contain)
CASES: list[tuple[str, list[str], object, str]] = []


def case(cid: str, argv: list[str], damage=None, needle: str = "") -> None:
    CASES.append((cid, list(argv), damage, needle))


# -- the command line itself ---------------------------------------------------------------------------------------
case("no-such-subcommand", ["kms", "serv", "kms"], None, "serv")
case("arg-order-serve-kms", ["serve", "kms", "kms"], None, "serve")
case("arg-order-dir-before-sub", ["kms", "kms", "serve"], None, "kms")
case("extra-argument", ["algorithms", "extra"], None, "extra")
case("two-directories", ["kms", "status", "kms", "kms"], None, "kms")
case("port-not-a-number", [*KS[:3], "--port", "abc"], None, "--port")
case("port-a-fraction", [*KS[:3], "--port", "8443.5"], None, "--port")
case("port-empty", [*KS[:3], "--port", ""], None, "--port")
case("option-without-value", [*KS[:3], "--port"], None, "--port")
case("bool-flag-with-value", ["kms", "status", "kms", "--json", "yes"], None, "yes")

# -- route, topology, demo, emulate: files and values the earlier sweeps did not take -------------------------------
case("route-net-bom-binary", ["topology", "show", "g.graphml"], w("g.graphml", b"\xef\xbb\xbf" + GARBAGE), "g.graphml")
case("route-net-pool-negative", ["route", "neg.json", "--src", "0", "--dst", "1"],
     w("neg.json", '{"nodes":[{"id":0,"p":0.9},{"id":1,"p":0.9}],"links":[{"source":0,"target":1,"pool_bits":-5}]}'),
     "pool_bits")
case("route-net-rate-nan", ["route", "r.json", "--src", "0", "--dst", "1"],
     w("r.json", '{"nodes":[{"id":0,"p":0.9},{"id":1,"p":0.9}],"links":[{"source":0,"target":1,"rate_bps":NaN}]}'),
     "rate")
case("route-net-symlink-loop", ["route", "loop.json", "--src", "0", "--dst", "1"], symlink("loop.json", "loop.json"),
     "loop.json")
case("route-net-broken-symlink", ["route", "bl.json", "--src", "0", "--dst", "1"], symlink("bl.json", "nowhere.json"),
     "bl.json")
case("route-net-dev-null", ["topology", "show", "dev.json"], symlink("dev.json", "/dev/null"), "dev.json")
case("route-graphml-empty", ["topology", "show", "e.graphml"], w("e.graphml", ""), "e.graphml")
case("route-graphml-p-text", ["topology", "show", "pt.graphml"],
     w("pt.graphml", '<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
       '<key id="p" for="node" attr.name="p" attr.type="string"/><graph edgedefault="undirected">'
       '<node id="a"><data key="p">high</data></node><node id="b"><data key="p">0.9</data></node>'
       '<edge source="a" target="b"/></graph></graphml>'), "'p'")
case("route-gml-empty", ["topology", "show", "e.gml"], w("e.gml", ""), "e.gml")
case("route-src-unicode", ["route", "example", "--src", "нуль", "--dst", "7"], None, "нуль")
case("route-src-empty", ["route", "example", "--src", "", "--dst", "7"], None, "''")
case("route-max-steps-smr", ["route", "example", *EX, "--max-steps", "0"], None, "max_steps")
case("route-max-steps-neg", ["route", "example", *EX, "-a", "msp", "--max-steps", "-1"], None, "--max-steps")
case("route-beta-nan", ["route", "example", *EX, "-a", "msp", "--beta", "nan"], None, "beta")
case("route-beta-neg", ["route", "example", *EX, "-a", "msp", "--beta", "-1"], None, "beta")
case("route-plot-directory", ["route", "example", *EX, "--plot", "adir"], mkdir("adir"), "adir")
case("route-plot-read-only", ["route", "example", *EX, "--plot", "/sys/qkdseg-x.png"], None, "/sys/qkdseg-x.png")
case("route-format-empty", ["route", "example", *EX, "--format", ""], None, "--format")
case("route-default-p-inf", ["route", "example", *EX, "--default-p", "inf"], None, "--default-p")
case("route-metric-empty", ["route", "example", *EX, "--metric", ""], None, "metric")
case("route-shared-relays-value", ["route", "example", *EX, "--shared-relays", "yes"], None, "yes")
case("route-max-paths-neg", ["route", "example", *EX, "--max-paths", "-1"], None, "--max-paths")
case("topology-list-group-bogus", ["topology", "list", "--group", "nosuch"], None, "nosuch")
case("topology-show-format-yaml", ["topology", "show", "example", "--format", "yaml"], None, "yaml")
case("generate-nodes-0", ["topology", "generate", "waxman", "--nodes", "0", "-o", "g.json"], None, "nodes")
case("generate-nodes-neg", ["topology", "generate", "waxman", "--nodes", "-5", "-o", "g.json"], None, "nodes")
case("generate-trusted-neg", ["topology", "generate", "waxman", "--trusted", "-1", "-o", "g.json"], None, "trusted")
case("generate-trusted-p-2", ["topology", "generate", "waxman", "--trusted-p", "2", "-o", "g.json"], None, "--trusted-p")
case("generate-beta-0", ["topology", "generate", "waxman", "--beta", "0", "-o", "g.json"], None, "beta")
case("generate-beta-nan", ["topology", "generate", "waxman", "--beta", "nan", "-o", "g.json"], None, "beta")
case("generate-mean-degree-neg", ["topology", "generate", "waxman", "--mean-degree", "-3", "-o", "g.json"], None,
     "--mean-degree")
case("generate-mean-degree-above-n", ["topology", "generate", "waxman", "--nodes", "10", "--mean-degree", "100", "-o",
                                      "g.json"], None, "--mean-degree 100")
case("generate-pool-neg", ["topology", "generate", "waxman", "--pool-bits", "-1", "-o", "g.json"], None, "--pool-bits")
case("generate-rates-bogus", ["topology", "generate", "waxman", "--rates", "fast", "-o", "g.json"], None, "fast")
case("generate-out-read-only", ["topology", "generate", "waxman", "-o", "/sys/qkdseg-g.json"], None, "/sys/qkdseg-g.json: cannot write")
case("generate-out-empty", ["topology", "generate", "waxman", "-o", ""], None, "empty path")
case("generate-out-missing-folder", ["topology", "generate", "waxman", "-o", "no/such/g.json"], None, "no/such/g.json: cannot write")
case("generate-p-neg", ["topology", "generate", "waxman", "--p", "-0.1", "-o", "g.json"], None, "--p ")
case("generate-alpha-0", ["topology", "generate", "waxman", "--alpha", "0", "-o", "g.json"], None, "alpha")
case("demo-requests-neg", ["demo", "--requests", "-3"], None, "--requests")
case("demo-requests-huge", ["demo", "--requests", str(10**12)], None, "--requests")
case("demo-format-xml", ["demo", "--format", "xml"], None, "xml")
case("emulate-default-p-neg", ["emulate", "example", *EX, "--default-p", "-0.5", "-n", "2"], None, "--default-p")
case("emulate-max-paths-neg", ["emulate", "example", *EX, "--max-paths", "-1", "-n", "2"], None, "--max-paths")
case("emulate-net-missing", ["emulate", "missing.json", *EX], None, "missing.json")

# -- batch commands: options checked before the run ----------------------------------------------------------------
case("reproduce-level-trials-neg", ["reproduce", "--trials", "1", "--level-trials", "-1", "--out", "o", "-q"], None,
     "--level-trials")
case("reproduce-seed-neg", ["reproduce", "--trials", "1", "--seed", "-1", "--out", "o", "-q"], None, "--seed -1")
case("reproduce-out-read-only", ["reproduce", "--trials", "1", "--out", "/sys/qkdseg-out", "-q"], None, "/sys/qkdseg-out: cannot write")
case("plot-missing", ["plot", "nosuch"], None, "nosuch")
case("plot-garbage-csv", ["plot", "res"], w("res/results.csv", GARBAGE), "res")
case("plot-empty-csv", ["plot", "res"], w("res/results.csv", ""), "res")
case("plot-garbage-parquet", ["plot", "res"], w("res/results.parquet", GARBAGE), "res")
case("plot-a-file", ["plot", "afile"], w("afile", "x"), "afile")
case("study-swap-max-k-neg", [*STUDY_P, "--swap-max-k", "-1"], None, "--swap-max-k")
case("study-max-placements-neg", [*STUDY_P, "--max-placements", "-1"], None, "--max-placements")
case("study-budgets-letters", [*STUDY_P, "--budgets", "a,b"], None, "--budgets")
case("study-exact-budgets-neg", [*STUDY_P, "--exact-budgets", "-1"], None, "--exact-budgets")
case("study-placement-min-nodes-neg", [*STUDY_P, "--min-nodes", "-1"], None, "--min-nodes")
case("study-placement-p-2", [*STUDY_P, "--p", "2"], None, "--p")
case("study-placement-workers-0", [*STUDY_P, "--workers", "0"], None, "--workers")
case("study-demands-bogus", [*STUDY_P, "--demands", "garbage"], None, "garbage")
case("study-topologies-empty", ["study", "--topologies", "", "--out", "o", "-q"], None, "''")
case("study-workers-neg", ["study", "--workers", "-1", "--out", "o", "-q"], None, "--workers")
case("study-min-nodes-neg", ["study", "--min-nodes", "-1", "--out", "o", "-q"], None, "--min-nodes")
case("study-trusted-nan", ["study", "--trusted", "nan", "--out", "o", "-q"], None, "--trusted")
case("simulate-ttl-neg", [*SIM, "--ttl", "-1"], None, "--ttl")
case("simulate-ttl-nan", [*SIM, "--ttl", "nan"], None, "--ttl")
case("simulate-link-rate-inf", [*SIM, "--link-rate", "inf"], None, "--link-rate")
case("simulate-key-bits-neg", [*SIM, "--key-bits", "-8"], None, "--key-bits")
case("simulate-replications-huge", ["simulate", "example", "--rates", "1,2", "--duration", "10", "--replications",
                                    str(10**9), "--out", "o", "-q"], None, "--replications")
case("simulate-scheduler-one-rate", [*SIM, "--scheduler", "tcp://127.0.0.1:1"], None, "--scheduler")
case("simulate-trace-directory", ["simulate", "example", "--trace", "tdir", "--out", "o", "-q"], mkdir("tdir"), "tdir")
case("simulate-trace-unknown-node", TRACE, w("t.csv", "t,src,dst\n1,0,99\n"), "99")
case("simulate-trace-negative-time", TRACE, w("t.csv", "t,src,dst\n-1,0,7\n"), "t.csv")
case("simulate-trace-nan-time", TRACE, w("t.csv", "t,src,dst\nnan,0,7\n"), "t.csv")
case("simulate-trace-binary", TRACE, w("t.csv", GARBAGE), "t.csv")
# a file's field named like a flag stays the file's (cli/errors.py flags_named rewrites only the value typed)
case("simulate-trace-key-bits-zero", [*TRACE, "--key-bits", "8"], w("t.csv", "t,src,dst,key_bits\n1,0,7,0\n"),
     "t.csv: row 2: key_bits=0")
case("simulate-trace-no-t-column", TRACE, w("t.csv", "time,src,dst\n1,0,7\n"), "t.csv")
case("simulate-interval-0", [*SIM, "--interval", "0"], None, "--interval")
case("simulate-reconstruction-bogus", [*SIM, "--reconstruction", "magic"], None, "magic")
case("simulate-out-read-only", [*SIM[:-3], "--out", "/sys/qkdseg-sim", "-q"], None, "/sys/qkdseg-sim: cannot write")
case("place-lazy-bogus", [*PLACE, "--lazy", "eager"], None, "eager")
case("place-curve-empty", [*PLACE, "--curve", "", "--out", "o"], None, "--curve")
case("place-curve-methods-bogus", [*PLACE, "--curve", "1..2", "--curve-methods", "greedy,magic", "--out", "o"], None,
     "magic")
case("place-curve-without-out", [*PLACE, "--curve", "1..2"], None, "--out")
case("place-epsilon-nan", [*PLACE, "--objective", "keys", "--epsilon", "nan"], None, "epsilon")
case("place-demands-directory", [*PLACE, "--demands", "adir"], mkdir("adir"), "adir")
case("place-demands-binary", [*PLACE, "--demands", "d.csv"], w("d.csv", GARBAGE), "d.csv")
case("place-demands-empty", [*PLACE, "--demands", "d.csv"], w("d.csv", ""), "d.csv")
case("place-budget-missing", ["place", "example", "-q"], None, "--budget")
case("place-exact-too-many", [*PLACE[:-1], "-m", "exact", "--max-placements", "-1", "-q"], None, "--max-placements")

# -- kms init ------------------------------------------------------------------------------------------------------
case("kms-init-network-missing", ["kms", "init", "k", "--network", "nosuch.json", "--sae", "A=0", "--sae", "B=1"],
     None, "nosuch.json")
case("kms-init-network-binary", ["kms", "init", "k", "--network", "g.json", "--sae", "A=0", "--sae", "B=1"],
     w("g.json", GARBAGE), "g.json")
case("kms-init-sae-unicode", ["kms", "init", "k", "--network", "example", "--sae", "Ä=0", "--sae", "B=7"], None, "Ä")
case("kms-init-sae-no-node", ["kms", "init", "k", "--network", "example", "--sae", "A=", "--sae", "B=7"], None, "A=")
case("kms-init-sae-no-id", ["kms", "init", "k", "--network", "example", "--sae", "=0", "--sae", "B=7"], None, "''")
case("kms-init-key-size-0", ["kms", "init", "k", *KI, "--key-size", "0"], None, "--key-size")
case("kms-init-key-size-huge", ["kms", "init", "k", *KI, "--key-size", str(10**20)], None, "--key-size")
case("kms-init-min-above-max", ["kms", "init", "k", *KI, "--min-key-size", "1024", "--max-key-size", "512"], None,
     "--key-size")
case("kms-init-max-key-size-huge", ["kms", "init", "k", *KI, "--max-key-size", str(1 << 40)], None,
     "--max-key-size")
case("kms-init-per-request-0", ["kms", "init", "k", *KI, "--max-key-per-request", "0"], None, "--max-key-per-request")
case("kms-init-kme-id-empty", ["kms", "init", "k", *KI, "--kme-id", ""], None, "--kme-id")
case("kms-init-kme-id-space", ["kms", "init", "k", *KI, "--kme-id", "my kme"], None, "--kme-id")
case("kms-init-kme-id-an-sae", ["kms", "init", "k", *KI, "--kme-id", "A"], None, "--kme-id")
case("kms-init-key-ttl-nan", ["kms", "init", "k", *KI, "--key-ttl", "nan"], None, "--key-ttl")
case("kms-init-key-ttl-inf", ["kms", "init", "k", *KI, "--key-ttl", "inf"], None, "--key-ttl")
case("kms-init-key-ttl-0", ["kms", "init", "k", *KI, "--key-ttl", "0"], None, "--key-ttl")
case("kms-init-durability-bogus", ["kms", "init", "k", *KI, "--durability", "paranoid"], None, "--durability")
case("kms-init-default-rate-neg", ["kms", "init", "k", *KI, "--default-rate", "-1"], None, "--default-rate")
case("kms-init-audit-max-mb-neg", ["kms", "init", "k", *KI, "--audit-max-mb", "-1"], None, "--audit-max-mb")
case("kms-init-audit-max-mb-nan", ["kms", "init", "k", *KI, "--audit-max-mb", "nan"], None, "--audit-max-mb")
case("kms-init-level-nan", ["kms", "init", "k", *KI, "--security-level", "nan"], None, "--security-level")
case("kms-init-algorithm-bogus", ["kms", "init", "k", *KI, "--algorithm", "teleport"], None, "teleport")
case("kms-init-link-source-bogus", ["kms", "init", "k", *KI, "--link-source", "fibre"], None, "fibre")
case("kms-init-ca-key-out-directory", ["kms", "init", "k", *KI, "--ca-key-out", "adir"], mkdir("adir"), "is a directory")
case("kms-init-ca-key-out-no-folder", ["kms", "init", "k", *KI, "--ca-key-out", "no/such/ca.key"], None, "no/such")
case("kms-init-no-pki-and-new-pki", ["kms", "init", "k", *KI, "--no-pki", "--new-pki"], None, "--no-pki")
case("kms-init-under-a-file", ["kms", "init", "afile/k", *KI], w("afile", "x"), "afile")
case("kms-init-read-only", ["kms", "init", "/sys/qkdseg-k", *KI], None, "/sys/qkdseg-k")
case("kms-init-on-a-network", ["kms", "init", "net", *KI], None, "a network of nodes (nodes.json)")
case("kms-init-on-a-node", ["kms", "init", "net/nodes/0", *KI], None, "a node's directory")
case("kms-init-on-the-controller", ["kms", "init", "net/controller", *KI, "--force"], None, "controller's directory")
case("kms-init-on-a-device-emulator", ["kms", "init", "kmsdev/devices", *KI], None, "device emulator's directory")
case("kms-init-storage-key-a-directory", ["kms", "init", "k", *KI], mkdir("k/storage.key"), "storage.key")
case("kms-init-audit-key-short", ["kms", "init", "kms", *KI, "--force"], w("kms/audit.key", b"short"), "audit.key")

# -- kms serve: refused before it listens --------------------------------------------------------------------------
case("kms-serve-toml-empty", KS, w("kms/kms.toml", ""), "kms.toml")
case("kms-serve-toml-binary", KS, w("kms/kms.toml", GARBAGE), "kms.toml")
case("kms-serve-toml-bom", KS, bom("kms/kms.toml"), "kms.toml")
case("kms-serve-toml-duplicate-key", KS, tsub("kms/kms.toml", "key_size = 256\n", "key_size = 256\nkey_size = 128\n"),
     "kms.toml")
case("kms-serve-toml-key-size-text", KS, tset("kms/kms.toml", "key_size", '"256"'), "key_size")
case("kms-serve-toml-key-size-float", KS, tset("kms/kms.toml", "key_size", "256.5"), "key_size")
case("kms-serve-toml-level-2", KS, tset("kms/kms.toml", "security_level", "2.0"), "security_level")
case("kms-serve-toml-level-nan", KS, tset("kms/kms.toml", "security_level", "nan"), "security_level")
case("kms-serve-toml-level-bool", KS, tset("kms/kms.toml", "security_level", "true"), "security_level")
case("kms-serve-toml-ttl-inf", KS, tset("kms/kms.toml", "key_ttl_s", "inf"), "key_ttl_s")
case("kms-serve-toml-connections-0", KS, tset("kms/kms.toml", "max_connections", "0"), "max_connections")
case("kms-serve-toml-connections-neg", KS, tset("kms/kms.toml", "max_connections", "-1"), "max_connections")
case("kms-serve-toml-body-huge", KS, tset("kms/kms.toml", "max_body_bytes", str(2**70)), "max_body_bytes")
case("kms-serve-toml-header-timeout-0", KS, tset("kms/kms.toml", "header_timeout_s", "0.0"), "header_timeout_s")
case("kms-serve-toml-keep-alive-neg", KS, tset("kms/kms.toml", "keep_alive_s", "-5.0"), "keep_alive_s")
case("kms-serve-toml-key-count-0", KS, tset("kms/kms.toml", "max_key_count", "0"), "max_key_count")
case("kms-serve-toml-retention-neg", KS, tset("kms/kms.toml", "retention_s", "-1.0"), "retention_s")
case("kms-serve-toml-device-poll-0", KS, tset("kms/kms.toml", "device_poll_s", "0.0"), "device_poll_s")
case("kms-serve-toml-reconstruction", KS, tset("kms/kms.toml", "reconstruction", '"magic"'), "reconstruction")
case("kms-serve-toml-algorithm", KS, tset("kms/kms.toml", "algorithm", '"teleport"'), "algorithm")
case("kms-serve-toml-durability", KS, tset("kms/kms.toml", "durability", '"paranoid"'), "durability")
case("kms-serve-toml-link-source", KS, tset("kms/kms.toml", "link_source", '"fibre"'), "link_source")
case("kms-serve-toml-device-without-links", KS, tset("kms/kms.toml", "link_source", '"device"'), "device_links")
case("kms-serve-toml-network-missing", KS, tset("kms/kms.toml", "network", '"nosuch.json"'), "nosuch.json")
case("kms-serve-toml-network-binary", KS, both(tset("kms/kms.toml", "network", '"g.json"'), w("kms/g.json", GARBAGE)),
     "g.json")
case("kms-serve-toml-network-number", KS, tset("kms/kms.toml", "network", "5"), "network")
case("kms-serve-toml-network-empty", KS, tset("kms/kms.toml", "network", '""'), "network")
case("kms-serve-toml-no-saes", KS, tsub("kms/kms.toml", '"A" = "0"\n"B" = "7"', ""), "saes")
case("kms-serve-toml-sae-unknown-node", KS, tsub("kms/kms.toml", '"B" = "7"', '"B" = "99"'), "kms.toml: SAE 'B'")
case("kms-serve-toml-sae-bad-id", KS, tsub("kms/kms.toml", '"B" = "7"', '"B B" = "7"'), "B B")
case("kms-serve-toml-saes-a-list", KS, tsub("kms/kms.toml", '[saes]\n"A" = "0"\n"B" = "7"', 'saes = ["A", "B"]'),
     "saes")
case("kms-serve-toml-cert-missing", KS, tset("kms/kms.toml", "cert", '"pki/nosuch.crt"'), "nosuch.crt")
case("kms-serve-toml-cert-a-directory", KS, tset("kms/kms.toml", "cert", '"pki"'), "pki")
case("kms-serve-toml-cert-number", KS, tset("kms/kms.toml", "cert", "5"), "cert")
case("kms-serve-toml-option-unknown", KS, append("kms/kms.toml", "\n[algorithm_options]\nwarp = 9\n"), "warp")
case("kms-serve-toml-option-wrong-type", KS, both(tset("kms/kms.toml", "algorithm", '"msp"'),
                                                  append("kms/kms.toml", '\n[algorithm_options]\nbeta = "x"\n')),
     "beta")
case("kms-serve-toml-unknown-table", KS, append("kms/kms.toml", "\n[extras]\nx = 1\n"), "extras")
case("kms-serve-server-key-garbage", KS, w("kms/pki/server.key", "garbage\n"), "server.key")
case("kms-serve-server-crt-empty", KS, w("kms/pki/server.crt", ""), "server.crt")
case("kms-serve-ca-is-an-sae-cert", KS, copy("kms/pki/A.crt", "kms/pki/ca.crt"), "not a CA certificate")
case("kms-serve-server-key-of-an-sae", KS, copy("kms/pki/A.key", "kms/pki/server.key"), "server.key")
case("kms-serve-server-cert-expired", KS, reissue("kms/pki", "server", days=1, ago=10), "server.crt")
case("kms-serve-server-cert-not-yet-valid", KS, reissue("kms/pki", "server", days=10, ago=-5), "valid only from")
case("device-cert-expired", DS, reissue("kmsdev/devices/pki", "server", days=1, ago=10), "expired on")
case("kms-serve-storage-key-short", KS, both(w("kms/storage.key", b"short"), lambda d: os.chmod(d / "kms/storage.key",
                                                                                                 0o600)), "storage.key")
case("kms-serve-storage-key-a-directory", KS, mkdir("kms/storage.key"), "storage.key")
case("kms-serve-audit-key-missing", KS, rm("kms/audit.key"), "audit.key")
case("kms-serve-audit-key-short", KS, both(w("kms/audit.key", b"x"), lambda d: os.chmod(d / "kms/audit.key", 0o600)),
     "audit.key")
case("kms-serve-token-missing", [*KS, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0", "--dashboard-public"],
     rm("kms/dashboard.token"), "dashboard.token")
case("kms-serve-host-unresolvable", [*KS, "--host", "no-such-host.invalid"], None, "no-such-host.invalid")
case("kms-serve-host-empty", [*KS, "--host", ""], None, "empty host")
case("kms-serve-host-not-here", [*KS, "--host", "203.0.113.7"], None, "203.0.113.7")
case("kms-serve-port-in-use", [*KS[:3], "--port", "PORT_IN_USE"], None, "PORT_IN_USE")
case("kms-serve-metrics-port-in-use", [*KS, "--metrics-port", "PORT_IN_USE"], None, "PORT_IN_USE")
case("kms-serve-dashboard-port-in-use", [*KS, "--dashboard-port", "PORT_IN_USE"], None, "PORT_IN_USE")
case("kms-serve-port-neg", [*KS[:3], "--port", "-1"], None, "--port")
case("kms-serve-port-65536", [*KS[:3], "--port", "65536"], None, "--port")
case("kms-serve-log-level", [*KS, "--log-level", "loud"], None, "loud")
case("kms-serve-log-format", [*KS, "--log-format", "xml"], None, "xml")
case("kms-serve-exit-after-nan", [*KS, "--exit-after-unready", "nan"], None, "--exit-after-unready")
case("kms-serve-exit-after-neg", [*KS, "--exit-after-unready", "-1"], None, "--exit-after-unready")
case("kms-serve-dashboard-public-host", [*KS, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0"], None,
     "--dashboard-public")
case("kms-serve-dashboard-host-unresolvable", [*KS, "--dashboard-port", "0", "--dashboard-host",
                                               "no-such-host.invalid", "--dashboard-public"], None,
     "no-such-host.invalid")
case("kms-serve-missing", ["kms", "serve", "nosuch", "--port", "0"], None, "nosuch")
case("kms-serve-a-file", ["kms", "serve", "afile", "--port", "0"], w("afile", "x"), "afile")
case("kms-serve-empty-directory", ["kms", "serve", "adir", "--port", "0"], mkdir("adir"), "adir")
case("kms-serve-device-emulator", ["kms", "serve", "kmsdev/devices", "--port", "0"], None, "device emulator")
case("kms-serve-the-controller", ["kms", "serve", "net/controller", "--port", "0"], None, "controller's directory")
case("kms-serve-sqlite-binary", SS, w("kmsserved/kms.sqlite3", GARBAGE), "kms.sqlite3: the database is damaged")
case("kms-serve-sqlite-cut", SS, truncate("kmsserved/kms.sqlite3", 5000), "kms.sqlite3")
case("kms-serve-sqlite-a-directory", SS, mkdir("kmsserved/kms.sqlite3"), "kms.sqlite3")
case("kms-serve-sqlite-another-database", SS, both(rm("kmsserved/kms.sqlite3"),
                                                   sql("kmsserved/kms.sqlite3", "create table t(x);")),
     "the database was replaced")
case("kms-serve-sqlite-table-dropped", SS, sql("kmsserved/kms.sqlite3", "drop table links;"), "no table links")
case("kms-serve-audit-garbage-line", SS, append("kmsserved/audit.jsonl", GARBAGE[:100] + b"\n"), "audit.jsonl")
case("kms-serve-audit-binary", SS, w("kmsserved/audit.jsonl", GARBAGE), "audit.jsonl")
case("kms-serve-audit-a-directory", SS, mkdir("kmsserved/audit.jsonl"), "audit.jsonl")
case("kms-serve-lock-a-directory", SS, mkdir("kmsserved/lock"), "lock")

# -- kms status, audit, rotate-storage-key, sae, demo ----------------------------------------------------------------
case("kms-status-missing", ["kms", "status", "nosuch"], None, "nosuch")
case("kms-status-a-file", ["kms", "status", "afile"], w("afile", "x"), "afile")
case("kms-status-toml-binary", ["kms", "status", "kms"], w("kms/kms.toml", GARBAGE), "kms.toml")
case("kms-status-device-emulator", ["kms", "status", "kmsdev/devices"], None, "device emulator")
case("kms-status-the-controller", ["kms", "status", "net/controller"], None, "controller's directory")
case("kms-audit-missing", ["kms", "audit", "nosuch"], None, "nosuch")
case("kms-audit-archive-missing", ["kms", "audit", "kmsserved", "--archive", "nosuch"], None, "nosuch")
case("kms-audit-archive-a-file", ["kms", "audit", "kmsserved", "--archive", "afile"], w("afile", "x"), "afile")
case("kms-audit-key-short", ["kms", "audit", "kmsserved"], both(w("kmsserved/audit.key", b"x"),
                                                                 lambda d: os.chmod(d / "kmsserved/audit.key", 0o600)),
     "audit.key")
case("kms-audit-key-a-directory", ["kms", "audit", "kmsserved"], mkdir("kmsserved/audit.key"), "audit.key")
case("kms-rotate-missing", ["kms", "rotate-storage-key", "nosuch"], None, "nosuch")
case("kms-rotate-storage-key-short", ["kms", "rotate-storage-key", "kmsserved"], w("kmsserved/storage.key", b"short"),
     "storage.key")
case("kms-rotate-sqlite-binary", ["kms", "rotate-storage-key", "kmsserved"], w("kmsserved/kms.sqlite3", GARBAGE),
     "kms.sqlite3")
case("kms-rotate-table-dropped", ["kms", "rotate-storage-key", "kmsserved"],
     sql("kmsserved/kms.sqlite3", "drop table links;"), "no table links")
case("kms-rotate-a-network", ["kms", "rotate-storage-key", "net"], None, "nodes.json")
case("kms-rotate-the-controller", ["kms", "rotate-storage-key", "net/controller"], None, "controller's directory")
case("kms-sae-add-no-equals", ["kms", "sae", "add", "kms", "C"], None, "SAE_ID=NODE")
case("kms-sae-add-unknown-node", ["kms", "sae", "add", "kms", "C=99"], None, "99")
case("kms-sae-add-bad-id", ["kms", "sae", "add", "kms", "C D=1"], None, "C D")
case("kms-sae-add-unicode", ["kms", "sae", "add", "kms", "Ç=1"], None, "Ç")
case("kms-sae-add-days-0", ["kms", "sae", "add", "kms", "C=1", "--days", "0"], None, "--days")
case("kms-sae-add-days-huge", ["kms", "sae", "add", "kms", "C=1", "--days", str(10**9)], None, "--days")
case("kms-sae-add-ca-key-missing", ["kms", "sae", "add", "kms", "C=1", "--ca-key", "nosuch.key"], None, "nosuch.key")
case("kms-sae-add-ca-key-garbage", ["kms", "sae", "add", "kms", "C=1", "--ca-key", "g.key"], w("g.key", "garbage\n"),
     "g.key")
case("kms-sae-add-ca-key-of-an-sae", ["kms", "sae", "add", "kms", "C=1", "--ca-key", "kms/pki/A.key"], None,
     "A.key: not the private key of")
case("kms-sae-add-ca-key-a-directory", ["kms", "sae", "add", "kms", "C=1", "--ca-key", "adir"], mkdir("adir"), "adir")
case("kms-sae-add-ca-crt-missing", ["kms", "sae", "add", "kms", "C=1"], rm("kms/pki/ca.crt"), "ca.crt")
case("kms-sae-add-ca-crt-garbage", ["kms", "sae", "add", "kms", "C=1"], w("kms/pki/ca.crt", "garbage\n"),
     "ca.crt: not a PEM CA certificate")
case("kms-sae-add-ca-key-kept-elsewhere", ["kms", "sae", "add", "kms", "C=1"], rm("kms/pki/ca.key"), "--ca-key")
case("kms-sae-add-ca-key-in-pki-garbage", ["kms", "sae", "add", "kms", "C=1"], w("kms/pki/ca.key", "garbage\n"),
     "ca.key")
case("kms-sae-add-the-kme-id", ["kms", "sae", "add", "kms", "KME_qkdseg=1"], None, "KME_qkdseg")
case("kms-sae-add-a-network", ["kms", "sae", "add", "net", "C=1"], None, "nodes.json")
case("kms-sae-add-the-controller", ["kms", "sae", "add", "net/controller", "C=1"], None, "controller's directory")
case("kms-sae-add-toml-binary", ["kms", "sae", "add", "kms", "C=1"], w("kms/kms.toml", GARBAGE), "kms.toml")
case("kms-sae-remove-unknown", ["kms", "sae", "remove", "kms", "Z"], None, "'Z'")
case("kms-sae-remove-empty", ["kms", "sae", "remove", "kms", ""], None, "''")
case("kms-sae-remove-leaving-one", ["kms", "sae", "remove", "kms", "A"], None, "at least two")
case("kms-sae-cert-unknown", ["kms", "sae", "cert", "kms", "Z"], None, "'Z'")
case("kms-sae-cert-days-neg", ["kms", "sae", "cert", "kms", "A", "--days", "-1"], None, "--days")
case("kms-sae-cert-ca-key-of-an-sae", ["kms", "sae", "cert", "kms", "A", "--ca-key", "kms/pki/B.key"], None, "B.key")
case("kms-demo-rate-nan", ["kms", "demo", "--rate", "nan", "--port", "0", "--dashboard-port", "0"], None, "--rate")
case("kms-demo-rate-inf", ["kms", "demo", "--rate", "inf", "--port", "0", "--dashboard-port", "0"], None, "--rate")
case("kms-demo-port-neg", ["kms", "demo", "--port", "-1"], None, "--port")
case("kms-demo-dir-a-file", ["kms", "demo", "--dir", "afile", "--port", "0", "--dashboard-port", "0"], w("afile", "x"),
     "afile")
case("kms-demo-dir-read-only", ["kms", "demo", "--dir", "/sys/qkdseg-demo", "--port", "0", "--dashboard-port", "0"],
     None, "/sys/qkdseg-demo")
case("kms-demo-seed-neg", ["kms", "demo", "--seed", "-1", "--port", "0", "--dashboard-port", "0"], None, "--seed")
case("kms-demo-port-in-use", ["kms", "demo", "--dir", "d", "--port", "PORT_IN_USE", "--dashboard-port", "0"], None,
     "PORT_IN_USE")
case("kms-demo-dir-a-network", ["kms", "demo", "--dir", "net", "--port", "0", "--dashboard-port", "0"], None,
     "nodes.json")
case("kms-demo-dir-another-service", ["kms", "demo", "--dir", "kms", "--port", "0", "--dashboard-port", "0"], None,
     "not the demo's")

# -- device serve --------------------------------------------------------------------------------------------------
case("device-missing", ["device", "serve", "nosuch", "--port", "0"], None, "nosuch")
case("device-a-kms-directory", ["device", "serve", "kms", "--port", "0"], None, "device.toml")
case("device-toml-binary", DS, w("kmsdev/devices/device.toml", GARBAGE), "device.toml")
case("device-toml-empty", DS, w("kmsdev/devices/device.toml", ""), "device.toml")
case("device-toml-port-text", DS[:3], tset("kmsdev/devices/device.toml", "port", '"x"'), "port")
case("device-toml-port-huge", DS[:3], tset("kmsdev/devices/device.toml", "port", "70000"), "port")
case("device-toml-host-number", DS, tset("kmsdev/devices/device.toml", "host", "5"), "host")
case("device-toml-kme-id-bad", DS, tset("kmsdev/devices/device.toml", "kme_id", '"a b"'), "kme_id")
case("device-toml-ttl-inf", DS, tset("kmsdev/devices/device.toml", "key_ttl_s", "inf"), "key_ttl_s")
case("device-toml-unknown-field", DS, tset("kmsdev/devices/device.toml", "colour", '"red"'), "colour")
case("device-toml-rate-neg", DS, tsub("kmsdev/devices/device.toml", "rate_bps = 100000.0", "rate_bps = -1.0"),
     "rate_bps")
case("device-toml-buffer-text", DS, tsub("kmsdev/devices/device.toml", "buffer_bits = 100000", 'buffer_bits = "big"'),
     "buffer_bits")
case("device-toml-key-size-7", DS, tsub("kmsdev/devices/device.toml", "key_size = 256", "key_size = 7"), "key_size")
case("device-toml-link-extra-field", DS, tsub("kmsdev/devices/device.toml", 'a_sae = "link0-a"',
                                              'a_sae = "link0-a"\nwarp = 1'), 'links."0|1"')
case("device-toml-links-a-number", DS, lines_edit("kmsdev/devices/device.toml",
                                                  lambda t: t.split("[links")[0] + "links = 5\n"), "links")
case("device-keys-log-a-directory", DS, mkdir("kmsdev/devices/keys.jsonl"), "keys.jsonl")
case("device-pki-missing", DS, rm("kmsdev/devices/pki"), "pki")
case("device-cert-garbage", DS, w("kmsdev/devices/pki/server.crt", "garbage\n"), "server.crt")
case("device-host-unresolvable", [*DS, "--host", "no-such-host.invalid"], None, "no-such-host.invalid")
case("device-host-empty", [*DS, "--host", ""], None, "empty host")
case("device-port-in-use", [*DS[:3], "--port", "PORT_IN_USE"], None, "PORT_IN_USE")
case("device-log-level", [*DS, "--log-level", "loud"], None, "loud")
case("device-port-65536", [*DS[:3], "--port", "65536"], None, "--port")

# -- net init ------------------------------------------------------------------------------------------------------
case("net-init-port-0", ["net", "init", "n", *KI, "--port", "0"], None, "--port")
case("net-init-port-65536", ["net", "init", "n", *KI, "--port", "65536"], None, "--port")
case("net-init-port-neg", ["net", "init", "n", *KI, "--port", "-1"], None, "--port")
case("net-init-retention-nan", ["net", "init", "n", *NI, "--retention", "nan"], None, "--retention")
case("net-init-retention-0", ["net", "init", "n", *NI, "--retention", "0"], None, "--retention")
case("net-init-clock-skew-neg", ["net", "init", "n", *NI, "--clock-skew", "-1"], None, "--clock-skew")
case("net-init-skew-above-retention", ["net", "init", "n", *NI, "--clock-skew", "7200"], None, "--clock-skew")
case("net-init-max-skip-neg", ["net", "init", "n", *NI, "--max-skip-bits", "-1"], None, "--max-skip-bits")
case("net-init-max-skip-0", ["net", "init", "n", *NI, "--max-skip-bits", "0"], None, "--max-skip-bits")
case("net-init-audit-max-mb-neg", ["net", "init", "n", *NI, "--audit-max-mb", "-1"], None, "--audit-max-mb")
case("net-init-key-ttl-nan", ["net", "init", "n", *NI, "--key-ttl", "nan"], None, "--key-ttl")
case("net-init-key-ttl-0", ["net", "init", "n", *NI, "--key-ttl", "0"], None, "--key-ttl")
case("net-init-reconstruction", ["net", "init", "n", *NI, "--reconstruction", "magic"], None, "magic")
case("net-init-algorithm", ["net", "init", "n", *NI, "--algorithm", "teleport"], None, "teleport")
case("net-init-link-source", ["net", "init", "n", *NI, "--link-source", "fibre"], None, "fibre")
case("net-init-key-size-0", ["net", "init", "n", *NI, "--key-size", "0"], None, "--key-size")
case("net-init-sae-twice", ["net", "init", "n", "--network", "example", "--sae", "A=0", "--sae", "A=7"], None,
     "given twice")
case("net-init-sae-bad-id", ["net", "init", "n", "--network", "example", "--sae", "A B=0", "--sae", "C=7"], None, "A B")
case("net-init-option-no-value", ["net", "init", "n", *NI, "--algorithm-option", "shared_relays"], None,
     "shared_relays")
case("net-init-option-not-a-bool", ["net", "init", "n", *NI, "--algorithm", "msp", "--algorithm-option",
                                    "shared_relays=maybe"], None, "must be true or false")
case("net-init-option-not-a-number", ["net", "init", "n", *NI, "--algorithm", "msp", "--algorithm-option", "beta=x"],
     None, "must be a number")
case("net-init-exists", ["net", "init", "net", *NI], None, "nodes.json")
case("net-init-on-a-kms-directory", ["net", "init", "kms", *NI], None, "kms.toml")
case("net-init-force-on-a-kms-directory", ["net", "init", "kms", *NI, "--force"], None, "kms.toml")
case("net-init-on-a-node", ["net", "init", "net/nodes/0", *NI, "--force"], None, "node.json")
case("net-init-a-file", ["net", "init", "afile", *NI], w("afile", "x"), "afile")
case("net-init-read-only", ["net", "init", "/sys/qkdseg-n", *NI], None, "/sys/qkdseg-n")
case("net-init-network-binary", ["net", "init", "n", "--network", "g.json", "--sae", "A=0", "--sae", "B=1"],
     w("g.json", GARBAGE), "g.json")
# across hosts (issue 36): the inventory, enrolment, bundles
case("net-init-inventory-missing", ["net", "init", "n", *KI, "--inventory", "hosts.toml"], None, "hosts.toml")
case("net-init-inventory-garbage", ["net", "init", "n", *KI, "--inventory", "hosts.toml"], w("hosts.toml", GARBAGE),
     "hosts.toml")
case("net-init-inventory-no-nodes", ["net", "init", "n", *KI, "--inventory", "hosts.toml"],
     w("hosts.toml", '[controller]\naddress = "10.9.0.1:8443"\n'), "[nodes]")
case("net-init-inventory-and-port", ["net", "init", "n", *NI, "--inventory", "hosts.toml"],
     w("hosts.toml", "[controller]\naddress = \"10.9.0.1:8443\"\n"), "--port 19801")
case("net-init-enroll-no-ca-key-out", ["net", "init", "n", *NI, "--enroll"], None, "--ca-key-out")
case("net-init-ca-key-out-a-directory", ["net", "init", "n", *NI, "--ca-key-out", "adir"], mkdir("adir"), "adir")
case("node-keygen-twice", ["node", "keygen", "net/nodes/0"], None, "node.key")
case("node-keygen-no-node", ["node", "keygen", "kms"], None, "not a node directory")
case("controller-keygen-twice", ["controller", "keygen", "net/controller"], None, "controller.key")
case("net-sign-no-csr", ["net", "sign", "net", "x.csr", "--ca-key", "net/pki/ca.key"], None, "x.csr")
case("net-sign-garbage-csr", ["net", "sign", "net", "x.csr", "--ca-key", "net/pki/ca.key"], w("x.csr", GARBAGE),
     "x.csr")
case("net-sae-cert-unknown", ["net", "sae", "cert", "net", "Z", "--ca-key", "net/pki/ca.key"], None, "'Z'")
case("net-sae-cert-garbage-csr", ["net", "sae", "cert", "net", "A", "--ca-key", "net/pki/ca.key", "--csr", "a.csr"],
     w("a.csr", GARBAGE), "a.csr")
case("net-bundle-no-node", ["net", "bundle", "net", "--node", "99", "-o", "b.tar.gz"], None, "--node 99")
case("net-bundle-neither", ["net", "bundle", "net", "-o", "b.tar.gz"], None, "--node")
case("net-bundle-a-kms-directory", ["net", "bundle", "kms", "--node", "0", "-o", "b.tar.gz"], None, "kms")

# -- net up, down, status, fault, chaos ----------------------------------------------------------------------------
case("net-up-missing", ["net", "up", "nosuch", "--detach"], None, "nosuch")
case("net-up-a-file", ["net", "up", "afile", "--detach"], w("afile", "x"), "afile")
case("net-up-empty-directory", ["net", "up", "adir", "--detach"], mkdir("adir"), "adir")
case("net-up-a-kms-directory", ["net", "up", "kms", "--detach"], None, "kms")
case("net-up-a-node", ["net", "up", "net/nodes/0", "--detach"], None, "nodes/0")
case("net-up-the-controller", ["net", "up", "net/controller", "--detach"], None, "controller")
case("net-up-controllers-0", ["net", "up", "net", "--detach", "--controllers", "0"], None, "--controllers")
case("net-up-controllers-10", ["net", "up", "net", "--detach", "--controllers", "10"], None, "--controllers")
case("net-up-dashboard-port-0", ["net", "up", "net", "--detach", "--dashboard-port", "0"], None, "--dashboard-port")
case("net-up-dashboard-port-huge", ["net", "up", "net", "--detach", "--dashboard-port", "70000"], None,
     "--dashboard-port")
case("net-up-metrics-base-neg", ["net", "up", "net", "--detach", "--metrics-port-base", "-1"], None,
     "--metrics-port-base")
case("net-up-metrics-base-overflow", ["net", "up", "net", "--detach", "--metrics-port-base", "65530"], None,
     "--metrics-port-base")
case("net-up-metrics-nodes-json-binary", ["net", "up", "net", "--detach", "--metrics-port-base", "30000"],
     w("net/nodes.json", GARBAGE), "nodes.json")
case("net-up-port-range-letters", ["net", "up", "net", "--detach", "--port-range", "a-b"], None, "--port-range")
case("net-up-port-range-reversed", ["net", "up", "net", "--detach", "--port-range", "60000-20000"], None,
     "--port-range")
case("net-up-port-range-huge", ["net", "up", "net", "--detach", "--port-range", "0-70000"], None, "--port-range")
case("net-up-port-range-empty", ["net", "up", "net", "--detach", "--port-range", ""], None, "--port-range")
case("net-up-log-level", ["net", "up", "net", "--detach", "--log-level", "loud"], None, "loud")
case("net-up-log-format", ["net", "up", "net", "--detach", "--log-format", "xml"], None, "xml")
case("net-up-timeout-nan", ["net", "up", "net", "--detach", "--timeout", "nan"], None, "--timeout")
case("net-up-timeout-inf", ["net", "up", "net", "--detach", "--timeout", "inf"], None, "--timeout")
case("net-up-etcd-0", ["net", "up", "net", "--detach", "--etcd", "0"], None, "--etcd")
case("net-up-cluster-a-list", ["net", "up", "net", "--detach"], w("net/cluster.json", "[]"), "cluster.json")
case("net-up-cluster-wrong-shape", ["net", "up", "net", "--detach"], w("net/cluster.json",
                                                                       '{"etcd": 5, "controllers": "x"}'),
     "cluster.json: net up's process layout is damaged: field 'etcd'")
case("net-up-cluster-port-huge", ["net", "up", "net", "--detach"], w("net/cluster.json", json.dumps(
    {"etcd": [], "controllers": [{"name": "controller", "dir": "controller", "address": "127.0.0.1:99999"}]})),
     "field 'controllers'")
case("net-up-run-a-file", ["net", "up", "net", "--detach"], w("net/run", "x"), "run: exists and is not a directory")
case("net-up-controller-toml-binary", ["net", "up", "net", "--detach"], w("net/controller/kms.toml", GARBAGE),
     "kms.toml")
case("net-up-net-json-address-number", ["net", "up", "net", "--detach"],
     jedit("net/controller/net.json", lambda v: v["nodes"][0].update(address=5)), "field 'nodes'")
case("net-up-net-json-no-nodes", ["net", "up", "net", "--detach"], jedit("net/controller/net.json",
                                                                        lambda v: v.pop("nodes") and None),
     "field 'nodes' is missing")
case("net-up-net-json-duplicate-key", ["net", "up", "net", "--detach"],
     lines_edit("net/controller/net.json", lambda t: t.replace('"network"', '"address": "x", "network"', 1)),
     "given twice")
case("net-down-missing", ["net", "down", "nosuch"], None, "nosuch")
case("net-down-a-file", ["net", "down", "afile"], w("afile", "x"), "afile")
case("net-down-a-kms-directory", ["net", "down", "kms"], None, "kms")
case("net-status-missing", ["net", "status", "nosuch"], None, "nosuch")
case("net-status-a-kms-directory", ["net", "status", "kms"], None, "kms")
case("net-status-format", ["net", "status", "net", "--format", "xml"], None, "xml")
case("net-status-cluster-binary", ["net", "status", "net"], w("net/cluster.json", GARBAGE), "cluster.json")
case("net-status-cluster-no-controllers", ["net", "status", "net"], w("net/cluster.json", '{"etcd": [], "controllers": []}'),
     "field 'controllers'")
case("net-status-ops-binary", ["net", "status", "net"], w("net/run/ops.json", GARBAGE), "ops.json")
case("net-fault-no-proxies", ["net", "fault", "net", "--link", "0-1", "--cut"], None, "--faults")
case("net-fault-delay-words", ["net", "fault", "net", "--link", "0-1", "--delay", "soon"], None, "soon")
case("net-fault-delay-neg", ["net", "fault", "net", "--link", "0-1", "--delay", "-5ms"], None, "-5ms")
case("net-fault-delay-nan", ["net", "fault", "net", "--link", "0-1", "--delay", "nan"], None, "nan")
case("net-fault-loss-150", ["net", "fault", "net", "--link", "0-1", "--loss", "150%"], None, "150%")
case("net-fault-loss-neg", ["net", "fault", "net", "--link", "0-1", "--loss", "-0.1"], None, "-0.1")
case("net-fault-loss-words", ["net", "fault", "net", "--link", "0-1", "--loss", "lots"], None, "lots")
case("net-fault-cut-and-heal", ["net", "fault", "net", "--link", "0-1", "--cut", "--heal"], None, "--heal")
case("net-fault-nothing-asked", ["net", "fault", "net", "--link", "0-1"], None, "--cut")
case("net-fault-missing", ["net", "fault", "nosuch", "--link", "0-1", "--cut"], None, "nosuch")
case("net-fault-cluster-binary", ["net", "fault", "net", "--link", "0-1", "--cut"], w("net/cluster.json", GARBAGE),
     "cluster.json")
case("net-fault-unknown-link", ["net", "fault", "net", "--link", "0-99", "--cut"], w("net/cluster.json", json.dumps(
    {"etcd": [], "controllers": [{"name": "controller", "dir": "controller", "address": "127.0.0.1:19801"}],
     "proxies": [{"link": "0-1", "ends": ["0", "1"], "listen": {"0>1": "127.0.0.3:30001", "1>0": "127.0.0.2:30002"},
                  "target": {"0>1": "127.0.0.3:19801", "1>0": "127.0.0.2:19801"}}]})), "0-99")
case("net-chaos-rate-nan", ["net", "chaos", "net", "--rate", "nan"], None, "--rate")
case("net-chaos-duration-nan", ["net", "chaos", "net", "--duration", "nan"], None, "--duration")
case("net-chaos-seed-neg", ["net", "chaos", "net", "--seed", "-1", "--duration", "1"], None, "--seed")
case("net-chaos-format", ["net", "chaos", "net", "--format", "xml"], None, "xml")
case("net-chaos-not-up", ["net", "chaos", "net", "--duration", "1"], None, "not up")
case("net-chaos-missing", ["net", "chaos", "nosuch", "--duration", "1"], None, "nosuch")

# -- node serve ----------------------------------------------------------------------------------------------------
case("node-missing", ["node", "serve", "nosuch"], None, "nosuch")
case("node-the-controller", ["node", "serve", "net/controller"], None, "controller")
case("node-the-network", ["node", "serve", "net"], None, "net")
case("node-a-kms-directory", ["node", "serve", "kms"], None, "kms")
case("node-metrics-port-neg", [*NS, "--metrics-port", "-1"], None, "--metrics-port")
case("node-metrics-port-in-use", [*NS, "--metrics-port", "PORT_IN_USE"], None, "PORT_IN_USE")
case("node-log-level", [*NS, "--log-level", "loud"], None, "loud")
case("node-exit-after-nan", [*NS, "--exit-after-unready", "nan"], None, "--exit-after-unready")
case("node-tap-not-allowed", [*NS, "--tap", "tap.jsonl"], None, "--tap")
case("node-json-address-no-port", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "address": "nohost"}),
     "field 'address'")
case("node-json-address-port-huge", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "address": "127.0.0.2:70000"}),
     "field 'address'")
case("node-json-address-unresolvable", NS, jedit("net/nodes/0/node.json",
                                                 lambda v: {**v, "address": "no-such-host.invalid:19801"}),
     "no-such-host.invalid")
case("node-json-address-not-here", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "address": "203.0.113.7:19801"}),
     "203.0.113.7")
case("node-json-controller-bad", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "controller": "x"}),
     "field 'controller'")
case("node-json-links-a-number", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "links": 5}), "field 'links'")
case("node-json-pool-neg", NS, jedit("net/nodes/0/node.json", lambda v: v["links"][0].update(pool_bits=-1)),
     "field 'links'")
case("node-json-pool-text", NS, jedit("net/nodes/0/node.json", lambda v: v["links"][0].update(pool_bits="x")),
     "field 'links'")
case("node-json-key-size-text", NS, jedit("net/nodes/0/node.json", lambda v: v["etsi"].update(key_size="x")),
     "etsi.key_size")
case("node-json-connections-0", NS, jedit("net/nodes/0/node.json", lambda v: v["etsi"].update(max_connections=0)),
     "etsi.max_connections")
case("node-json-no-etsi", NS, jedit("net/nodes/0/node.json", lambda v: v.pop("etsi") and None),
     "field 'etsi' is missing")
case("node-json-level-2", NS, jedit("net/nodes/0/node.json", lambda v: v["etsi"].update(security_level=2.0)),
     "etsi.security_level")
case("node-json-retention-neg", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "retention_s": -1}),
     "retention_s")
case("node-json-registry-a-list", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "registry": ["A"]}),
     "field 'registry'")
case("node-json-id-of-another-node", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "id": 5}), "field 'id'")
case("node-json-id-unknown", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "id": 99}), "field 'id'")
case("node-json-bom", NS, bom("net/nodes/0/node.json"), "node.json")
case("node-json-duplicate-key", NS, lines_edit("net/nodes/0/node.json",
                                               lambda t: t.replace('"id": 0,', '"id": 0, "id": "zero",', 1)),
     "'id' is given twice")
case("node-storage-key-short", NS, w("net/nodes/0/storage.key", b"short"), "storage.key")
case("node-audit-key-missing", NS, rm("net/nodes/0/audit.key"), "audit.key")
case("node-ca-missing", NS, rm("net/nodes/0/ca.crt"), "ca.crt")
case("node-cert-of-another-node", NS, copy("net/nodes/1/node.crt", "net/nodes/0/node.crt"), "node.key")
case("node-seeds-a-list", NS, w("net/nodes/0/links.sealed.json", "[]"), "links.sealed.json")
case("node-seeds-numbers", NS, jedit("net/nodes/0/links.sealed.json", lambda v: {k: 5 for k in v}),
     "links.sealed.json")
case("node-seeds-not-base64", NS, jedit("net/nodes/0/links.sealed.json", lambda v: {k: "!!not base64!!" for k in v}),
     "links.sealed.json")
case("node-seeds-of-another-node", NS, copy("net/nodes/1/links.sealed.json", "net/nodes/0/links.sealed.json"),
     "links.sealed.json")
case("node-sqlite-binary", ["node", "serve", "netserved/nodes/0"], w("netserved/nodes/0/kms.sqlite3", GARBAGE),
     "kms.sqlite3: the database is damaged")
case("node-relay-sqlite-binary", ["node", "serve", "netserved/nodes/0"],
     w("netserved/nodes/0/relay.sqlite3", GARBAGE), "relay.sqlite3: the database is damaged")
case("node-relay-table-dropped", ["node", "serve", "netserved/nodes/0"],
     sql("netserved/nodes/0/relay.sqlite3", "drop table offsets;"), "no table offsets")
case("node-relay-another-database", ["node", "serve", "netserved/nodes/0"],
     both(rm("netserved/nodes/0/relay.sqlite3"), sql("netserved/nodes/0/relay.sqlite3", "create table inbox(x);")),
     "relay.sqlite3")
case("node-audit-binary", ["node", "serve", "netserved/nodes/0"], w("netserved/nodes/0/audit.jsonl", GARBAGE),
     "audit.jsonl")

# -- controller serve ----------------------------------------------------------------------------------------------
case("controller-store-http", [*CS, "--store", "http://127.0.0.1:2379"], None, "--store")
case("controller-store-empty", [*CS, "--store", "etcd://"], None, "--store")
case("controller-store-bad-port", [*CS, "--store", "etcd://127.0.0.1:x"], None, "--store")
case("controller-address-no-port", [*CS, "--address", "nohost"], None, "--address")
case("controller-address-colon", [*CS, "--address", ":"], None, "--address")
case("controller-address-not-here", [*CS, "--address", "203.0.113.7:19801"], None, "203.0.113.7")
case("controller-address-unresolvable", [*CS, "--address", "no-such-host.invalid:19801"], None,
     "no-such-host.invalid")
case("controller-address-in-use", [*CS, "--address", "127.0.0.1:PORT_IN_USE"], None, "PORT_IN_USE")
case("controller-dashboard-port-neg", [*CS, "--dashboard-port", "-1"], None, "--dashboard-port")
case("controller-dashboard-public-host", [*CS, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0"], None,
     "--dashboard-public")
case("controller-capture-not-allowed", [*CS, "--capture", "cap.jsonl"], None, "--capture")
case("controller-log-format", [*CS, "--log-format", "xml"], None, "xml")
case("controller-a-node", ["controller", "serve", "net/nodes/0"], None, "nodes/0")
case("controller-a-kms-directory", ["controller", "serve", "kms"], None, "kms")
case("controller-the-network", ["controller", "serve", "net"], None, "net")
case("controller-toml-binary", CS, w("net/controller/kms.toml", GARBAGE), "kms.toml")
case("controller-toml-level-2", CS, tset("net/controller/kms.toml", "security_level", "2.0"), "security_level")
case("controller-net-json-nodes-a-number", CS, jedit("net/controller/net.json", lambda v: {**v, "nodes": 5}),
     "field 'nodes'")
case("controller-net-json-node-no-id", CS, jedit("net/controller/net.json", lambda v: [v["nodes"][0].pop("id"), None][1]),
     "field 'id' is missing")
case("controller-net-json-bom", CS, bom("net/controller/net.json"), "net.json")
case("controller-net-json-address-no-port", CS, jedit("net/controller/net.json", lambda v: {**v, "address": "x"}),
     "field 'address'")
case("controller-storage-key-missing", CS, rm("net/controller/storage.key"), "storage.key")
case("controller-cert-garbage", CS, w("net/controller/controller.crt", "garbage\n"), "controller.crt")
case("controller-token-missing", [*CS, "--dashboard-port", "0", "--dashboard-host", "0.0.0.0", "--dashboard-public"],
     rm("net/controller/dashboard.token"), "dashboard.token")

# -- more of the same kinds -----------------------------------------------------------------------------------------
case("kms-sae-add-registered", ["kms", "sae", "add", "kms", "A=1"], None, "registered already")
case("kms-sae-add-id-too-long", ["kms", "sae", "add", "kms", "S" * 65 + "=1"], None, "1-64 characters")
case("kms-status-control-characters", ["kms", "status", "bad\nname\x1b[2J"], None, "bad\\nname\\x1b[2J")
case("kms-serve-toml-storage-key-elsewhere", KS, tset("kms/kms.toml", "storage_key", '"/nonexistent/storage.key"'),
     "/nonexistent/storage.key")
case("controller-store-trailing-comma", [*CS, "--store", "etcd://127.0.0.1:1,"], None, "--store")
case("topology-show-topohub-empty", ["topology", "show", "topohub:"], None, "topohub:")
case("net-fault-delay-huge", ["net", "fault", "net", "--link", "0-1", "--delay", "1e9s"], w("net/cluster.json", json.dumps(
    {"etcd": [], "controllers": [{"name": "controller", "dir": "controller", "address": "127.0.0.1:19801"}],
     "proxies": [{"link": "0-1", "ends": ["0", "1"], "listen": {"0>1": "127.0.0.3:30001", "1>0": "127.0.0.2:30002"},
                  "target": {"0>1": "127.0.0.3:19801", "1>0": "127.0.0.2:19801"}}]})), "1e9s")
case("kms-init-network-topohub-bad", ["kms", "init", "k", "--network", "topohub:zoo/NoSuch", "--sae", "A=0", "--sae",
                                      "B=1"], None, "NoSuch")
case("route-net-a-huge-id", ["route", "h.json", "--src", "0", "--dst", "1"],
     w("h.json", '{"nodes":[{"id":0,"p":0.9},{"id":1' + "0" * 5000 + ',"p":0.9}],"links":[{"source":0,"target":1' + "0" * 5000 + "}]}"), "h.json")
case("net-up-timeout-zero", ["net", "up", "net", "--detach", "--timeout", "0"], None, "--timeout")
case("net-chaos-rate-huge", ["net", "chaos", "net", "--rate", "1e9"], None, "--rate")
case("device-toml-links-empty", DS, lines_edit("kmsdev/devices/device.toml", lambda t: t.split("[links")[0]), "links")
case("device-toml-sae-twice", DS, tsub("kmsdev/devices/device.toml", 'b_sae = "link0-b"', 'b_sae = "link0-a"'),
     "used twice")

# -- growing and shrinking a network (issue 37), clear-suspect and threshold sharing (issue 40) ------------------
# A change of membership checks its values, then the deployment's files, then asks the controller (not running
# here: "does not answer"), then writes: every refusal but the last leaves DIR as it was.
AL = ["net", "add-link", "net", "0", "7"]
AN = ["net", "add-node", "net", "--id", "10", "--address", "127.0.0.40:19801", "--link", "0"]
SA = ["net", "sae", "add", "net"]
case("net-add-link-not-up", AL, None, "the controller at 127.0.0.1:19801 does not answer")
case("net-add-link-a-kms-directory", ["net", "add-link", "kms", "0", "7"], None, "kms: not a network directory")
case("net-add-link-missing", ["net", "add-link", "nosuch", "0", "7"], None, "nosuch")
case("net-add-link-unknown-node", ["net", "add-link", "net", "0", "99"], None, "'99': not a node of the network")
case("net-add-link-to-itself", ["net", "add-link", "net", "3", "3"], None, "not linked to itself")
case("net-add-link-exists", ["net", "add-link", "net", "0", "1"], None, "(0, 1): exists already")
case("net-add-link-rate-0", [*AL, "--rate", "0"], None, "--rate 0")
case("net-add-link-rate-nan", [*AL, "--rate", "nan"], None, "--rate nan")
case("net-add-link-rate-inf", [*AL, "--rate", "inf"], None, "--rate inf")
case("net-add-link-rate-text", [*AL, "--rate", "fast"], None, "--rate")
case("net-add-link-format", [*AL, "--format", "xml"], None, "--format")
case("net-add-link-storage-key-missing", AL, rm("net/nodes/7/storage.key"), "nodes/7/storage.key")
case("net-add-link-admin-crt-garbage", AL, w("net/pki/admin.crt", "garbage\n"), "admin.crt")
case("net-add-link-admin-key-missing", AL, rm("net/pki/admin.key"), "admin.key: no such file")
case("net-add-link-admin-crt-of-a-node", AL, both(copy("net/nodes/1/node.crt", "net/pki/admin.crt"),
                                                  copy("net/nodes/1/node.key", "net/pki/admin.key")),
     "admin.crt: not the admin's certificate (its role: node 1)")
case("net-add-link-nodes-json-binary", AL, w("net/nodes.json", GARBAGE), "nodes.json")
case("net-add-link-nodes-json-a-number", AL, jedit("net/nodes.json", lambda v: {**v, "3": 5}), "field '3'")
case("net-add-link-nodes-json-a-node-missing", AL, jedit("net/nodes.json", lambda v: v.pop("7") and None),
     "nodes.json: the network's list of nodes is damaged: node 7")
case("net-add-link-node-json-binary", AL, w("net/nodes/0/node.json", GARBAGE), "nodes/0/node.json")
case("net-add-link-node-json-of-another-node", AL, copy("net/nodes/1/node.json", "net/nodes/0/node.json"),
     "nodes/0/node.json")
case("net-add-link-node-directory-missing", AL, rm("net/nodes/3"), "nodes/3")
case("net-add-link-sealed-seeds-binary", AL, w("net/nodes/0/links.sealed.json", GARBAGE), "nodes/0/links.sealed.json")
case("net-add-link-net-json-version-text", AL, jedit("net/controller/net.json", lambda v: {**v, "topology_version": "x"}),
     "field 'topology_version'")
case("net-add-link-kms-toml-binary", AL, w("net/controller/kms.toml", GARBAGE), "kms.toml")
case("net-add-link-kms-toml-network-number", AL, tset("net/controller/kms.toml", "network", "5"), "field 'network'")
case("net-add-link-network-json-binary", AL, both(tset("net/controller/kms.toml", "network", '"network.json"'),
                                                  w("net/controller/network.json", GARBAGE)), "network.json")
case("net-sae-remove-stock-pairs-text", ["net", "sae", "remove", "net", "A"],
     append("net/controller/kms.toml", '\n[stock]\npairs = "A:B"\n'), "field 'stock'")
case("net-remove-link-no-such-link", ["net", "remove-link", "net", "0", "7"], None, "(0, 7): no such link")
case("net-remove-link-unknown-node", ["net", "remove-link", "net", "0", "x"], None, "'x'")
case("net-remove-link-not-up", ["net", "remove-link", "net", "0", "1"], None, "does not answer")
case("net-remove-node-unknown", ["net", "remove-node", "net", "99"], None, "'99': not a node")
case("net-remove-node-twice", ["net", "remove-node", "net", "99"], jedit("net/controller/net.json", lambda v: {
    **v, "removed": {"99": "net remove-node, topology version 3"}}), "'99': was removed from the network")
case("net-remove-node-of-an-sae-leaving-one", ["net", "remove-node", "net", "0"], None, "would leave 1 SAE(s) (B)")
case("net-remove-node-not-up", ["net", "remove-node", "net", "5"], None, "does not answer")
case("net-add-node-not-up", AN, None, "does not answer")
case("net-add-node-p-0-is-fine", [*AN, "--p", "0"], None, "does not answer")
case("net-add-node-id-exists", [*AN[:4], "3", *AN[5:]], None, "--id 3: a node of that id")
case("net-add-node-id-empty", [*AN[:4], "", *AN[5:]], None, "--id ''")
case("net-add-node-id-space", [*AN[:4], "new node", *AN[5:]], None, "--id 'new node'")
case("net-add-node-id-text-in-numbered-network", [*AN[:4], "x", *AN[5:]], None, "node ids are whole numbers")
case("net-add-node-address-no-port", [*AN[:6], "127.0.0.40", *AN[7:]], None, "--address '127.0.0.40'")
case("net-add-node-address-port-0", [*AN[:6], "127.0.0.40:0", *AN[7:]], None, "--address '127.0.0.40:0'")
case("net-add-node-address-port-70000", [*AN[:6], "127.0.0.40:70000", *AN[7:]], None, "--address '127.0.0.40:70000'")
case("net-add-node-address-host-space", [*AN[:6], "my host:19801", *AN[7:]], None, "'my host'")
case("net-add-node-address-taken", [*AN[:6], "127.0.0.2:19801", *AN[7:]], None, "--address 127.0.0.2:19801: another")
case("net-add-node-no-link", AN[:7], None, "--link")
case("net-add-node-link-twice", [*AN, "--link", "0"], None, "--link 0: given twice")
case("net-add-node-link-unknown", [*AN[:8], "99"], None, "--link '99'")
case("net-add-node-p-1.5", [*AN, "--p", "1.5"], None, "--p 1.5")
case("net-add-node-p-nan", [*AN, "--p", "nan"], None, "--p nan")
case("net-add-node-trusted-with-p", [*AN, "--trusted", "--p", "0.5"], None, "--p 0.5 with --trusted")
case("net-add-node-rate-neg", [*AN, "--rate", "-1"], None, "--rate -1")
case("net-add-node-ca-key-garbage", [*AN, "--ca-key", "g.key"], w("g.key", "garbage\n"), "g.key")
case("net-add-node-ca-key-missing", [*AN, "--ca-key", "nosuch.key"], None, "nosuch.key")
case("net-add-node-ca-key-of-an-sae", [*AN, "--ca-key", "net/pki/A.key"], None, "A.key: not the private key of")
case("net-add-node-ca-key-kept-elsewhere", AN, rm("net/pki/ca.key"), "--ca-key")
case("net-add-node-ca-key-in-pki-garbage", AN, w("net/pki/ca.key", "garbage\n"), "net/pki/ca.key: not an unencrypted")
case("net-sae-add-ca-key-in-pki-garbage", [*SA, "C=3"], w("net/pki/ca.key", "garbage\n"), "net/pki/ca.key")
case("net-sae-add-no-equals", [*SA, "C"], None, "SAE_ID=NODE")
case("net-sae-add-empty", [*SA, ""], None, "SAE_ID=NODE")
case("net-sae-add-no-node", [*SA, "C="], None, "SAE_ID=NODE")
case("net-sae-add-unknown-node", [*SA, "C=99"], None, "'99': not a node")
case("net-sae-add-bad-id", [*SA, "C D=3"], None, "'C D'")
case("net-sae-add-unicode", [*SA, "Ç=3"], None, "Ç")
case("net-sae-add-registered", [*SA, "A=3"], None, "registered already")
case("net-sae-add-a-kme-id", [*SA, "KME_3=3"], None, "the KME id of node 3")
case("net-sae-add-ca-key-garbage", [*SA, "C=3", "--ca-key", "g.key"], w("g.key", "garbage\n"), "g.key")
case("net-sae-add-ca-crt-garbage", [*SA, "C=3"], w("net/pki/ca.crt", "garbage\n"), "ca.crt")
case("net-sae-add-not-up", [*SA, "C=3"], None, "does not answer")
case("net-sae-remove-unknown", ["net", "sae", "remove", "net", "Z"], None, "'Z' is not registered")
case("net-sae-remove-empty", ["net", "sae", "remove", "net", ""], None, "'' is not registered")
case("net-sae-remove-leaving-one", ["net", "sae", "remove", "net", "A"], None, "would leave 1 SAE(s) (B)")
case("net-sae-remove-stocked", ["net", "sae", "remove", "net", "C"], both(
    tsub("net/controller/kms.toml", '"B" = "7"', '"B" = "7"\n"C" = "3"'),
    append("net/controller/kms.toml", '\n[stock]\npairs = ["A:C"]\n')), "A:C keeps a key stock")
case("net-clear-suspect-a-kms-directory", ["net", "clear-suspect", "kms", "0"], None, "kms")
case("net-clear-suspect-unknown-node", ["net", "clear-suspect", "net", "99"], None, "NODE '99': not a node")
case("net-clear-suspect-not-up", ["net", "clear-suspect", "net", "1"], None, "does not answer")
case("net-clear-suspect-controller-key-garbage", ["net", "clear-suspect", "net", "1"],
     w("net/controller/controller.key", "garbage\n"), "controller.key")
case("net-status-net-json-address-space", ["net", "status", "net"],
     jedit("net/controller/net.json", lambda v: v["nodes"][0].update(address="my host:19801")), "field 'nodes'")
case("controller-net-json-version-negative", CS, jedit("net/controller/net.json", lambda v: {**v, "topology_version": -1}),
     "field 'topology_version'")
case("controller-net-json-removed-a-list", CS, jedit("net/controller/net.json", lambda v: {**v, "removed": ["1"]}),
     "field 'removed'")
case("node-json-topology-version-text", NS, jedit("net/nodes/0/node.json", lambda v: {**v, "topology_version": "x"}),
     "field 'topology_version'")
case("net-init-sharing-bogus", ["net", "init", "n", *NI, "--sharing", "shamir"], None, "--sharing 'shamir'")
case("net-init-tolerate-neg", ["net", "init", "n", *NI, "--tolerate", "-1"], None, "--tolerate -1")
case("net-init-tolerate-text", ["net", "init", "n", *NI, "--tolerate", "two"], None, "--tolerate")
case("net-init-tolerate-255", ["net", "init", "n", *NI, "--tolerate", "255"], None, "--tolerate 255")
case("net-init-tolerate-with-xor", ["net", "init", "n", *NI, "--sharing", "xor", "--tolerate", "1"], None,
     "--tolerate 1 needs --sharing threshold")
case("net-init-threshold-without-tolerate", ["net", "init", "n", *NI, "--sharing", "threshold"], None, "--tolerate")
case("net-init-tolerate-with-paper", ["net", "init", "n", *NI, "--tolerate", "1", "--reconstruction", "paper"], None,
     "--reconstruction paper")
case("net-init-tolerate-never-met", ["net", "init", "n", *NI, "--tolerate", "4"], None, "--tolerate 4: no segment")
case("net-init-tolerate-with-single", ["net", "init", "n", *NI, "--algorithm", "single", "--tolerate", "1"], None,
     "--algorithm single routes one path")
case("net-init-tolerate-above-max-paths", ["net", "init", "n", *NI, "--algorithm-option", "max_paths=2", "--tolerate",
                                           "2"], None, "max_paths=2")
case("kms-init-tolerate-never-met", ["kms", "init", "k", *KI, "--tolerate", "4"], None, "--tolerate 4: no segment")
case("kms-init-sharing-bogus", ["kms", "init", "k", *KI, "--sharing", "XOR"], None, "--sharing 'XOR'")
case("kms-init-threshold-tolerate-0", ["kms", "init", "k", *KI, "--sharing", "threshold", "--tolerate", "0"], None,
     "--tolerate")
case("simulate-relay-failure-1.5", [*SIM, "--relay-failure", "1.5"], None, "--relay-failure")
case("simulate-relay-failure-nan", [*SIM, "--relay-failure", "nan"], None, "--relay-failure")
case("simulate-relay-failure-neg", [*SIM, "--relay-failure", "-0.1"], None, "--relay-failure")
case("simulate-tolerate-without-sharing", [*SIM, "--tolerate", "1"], None, "--tolerate 1 needs --sharing")
case("simulate-sharing-bogus", [*SIM, "--sharing", "shamir"], None, "shamir")
case("simulate-threshold-without-tolerate", [*SIM, "--sharing", "threshold"], None, "tolerate")
case("simulate-tolerate-never-met", [*SIM, "--sharing", "threshold", "--tolerate", "4"], None, "--tolerate 4")
case("simulate-relay-failure-with-supply", [*SIM, "--supply", "on-demand", "--relay-failure", "0.1"], None,
     "--relay-failure")
STUDY_T = ["study", "--threshold", "--out", "o", "-q"]
case("study-threshold-replications-1", [*STUDY_T, "--replications", "1"], None, "--replications")
case("study-threshold-requests-1", [*STUDY_T, "--requests", "1"], None, "--requests")
case("study-threshold-workers-0", [*STUDY_T, "--workers", "0"], None, "--workers")
case("study-threshold-with-p", [*STUDY_T, "--p", "0.5"], None, "--p does not apply to study --threshold")
case("study-replications-without-threshold", ["study", "--replications", "3", "--out", "o", "-q"], None,
     "--replications needs --threshold")

if os.geteuid() != 0:  # root reads and writes through any mode
    case("kms-serve-toml-unreadable", KS, lambda d: os.chmod(d / "kms/kms.toml", 0), "kms.toml")
    case("node-json-unreadable", NS, lambda d: os.chmod(d / "net/nodes/0/node.json", 0), "permission denied")
    case("kms-init-read-only-folder", ["kms", "init", "ro/k", *KI], both(mkdir("ro"), lambda d: os.chmod(d / "ro", 0o500)),
         "ro/k")

#: Careless-looking inputs that are fine: (id, command line, damage, exit status, text in the output).
ACCEPTED = [
    ("route-net-extra-fields", ["route", "x.json", "--src", "0", "--dst", "1"],
     w("x.json", '{"colour":"red","nodes":[{"id":0,"p":0.9,"x":1},{"id":1,"p":0.9}],"links":[{"source":0,'
                 '"target":1,"w":"a"}]}'), 0, "security (exact)"),  # GraphML/JSON of real networks carry many
    ("route-net-no-links", ["route", "nl.json", "--src", "0", "--dst", "1"],
     w("nl.json", '{"nodes":[{"id":0,"p":0.9},{"id":1,"p":0.9}],"links":[]}'), 0, "BLOCKED"),
    ("route-net-bom", ["route", "bom.json", "--src", "0", "--dst", "1"], w("bom.json", "\ufeff" + NET_JSON), 0,
     "security (exact)"),
    ("kms-status-never-served", ["kms", "status", "kms"], None, 1, "no database yet"),
    ("kms-status-sqlite-binary", ["kms", "status", "kmsserved"], w("kmsserved/kms.sqlite3", GARBAGE), 1,
     "the database is damaged"),  # status reports, exit 1 (docs/kms.md)
    ("kms-audit-garbage-line", ["kms", "audit", "kmsserved"], append("kmsserved/audit.jsonl", b"{not json\n"), 1,
     "audit chain BROKEN"),
    ("kms-audit-key-missing", ["kms", "audit", "kmsserved"], rm("kmsserved/audit.key"), 0, "only the links"),
    ("kms-audit-kms-toml-binary", ["kms", "audit", "kmsserved"], w("kmsserved/kms.toml", GARBAGE), 0, "intact"),
    ("kms-status-served", ["kms", "status", "kmsserved"], None, 0, "ready"),
    ("kms-audit-a-node", ["kms", "audit", "netserved/nodes/0"], None, 0, "audit chain intact: 2 records"),
    ("kms-audit-torn-last-line", ["kms", "audit", "kmsserved"], append("kmsserved/audit.jsonl", b'{"seq": 3, "ev'), 1,
     "audit chain BROKEN"),  # audit only reads: the start cuts a torn line, audit reports it
    ("kms-init-force-keeps-a-damaged-pki", ["kms", "init", "kms", *KI, "--force"], w("kms/pki/ca.crt", "garbage\n"), 0,
     "wrote kms/kms.toml"),  # --force rewrites kms.toml only (docs/kms.md); serve then names ca.crt
    ("kms-audit-archive-the-directory", ["kms", "audit", "kmsserved", "--archive", "kmsserved"], None, 0, "intact"),
    ("net-init-two-saes-at-one-node", ["net", "init", "n", "--network", "example", "--sae", "A=0", "--sae", "B=0"], None,
     0, "2 SAEs"),  # keys between them are local: no relay
    ("generate-every-node-trusted", ["topology", "generate", "waxman", "--nodes", "3", "--trusted", "3", "-o", "g.json"],
     None, 0, "3 trusted"),
    ("net-down-never-up", ["net", "down", "net"], None, 0, "stopped 0 process(es)"),
    ("net-down-pids-of-others", ["net", "down", "net"], w("net/run/pids.json", '{"controller": 1, "node-0": -5}'), 0,
     "stopped 0 process(es)"),  # no signal to init, nor to a process group (test_net_down_never_signals_...)
    ("net-status-pids-a-list", ["net", "status", "net", "--format", "json"], w("net/run/pids.json", "[1, 2]"), 0,
     '"healthy": false'),
]


# -- the base directories, and the driver ------------------------------------------------------------------------
def _build_bases(root: Path) -> None:
    """``kms``, ``kmsdev``, ``net`` as their init commands make them; ``kmsserved`` and ``netserved`` with a store, a
    relay store and an audit chain of two records, as a served directory has them."""
    from qkdseg.cli.app import app
    from qkdseg.server.audit import load_audit_key
    from qkdseg.server.config import load_config
    from qkdseg.server.storagekey import load_storage_key
    from qkdseg.server.store import Batch, Store, open_store
    from typer.testing import CliRunner

    level = ["--security-level", "0.5"]
    for args in (["kms", "init", "kms", *KI, *level], ["kms", "init", "kmsdev", *KI, *level, "--link-source", "device"],
                 ["net", "init", "net", *NI, *level]):
        r = CliRunner().invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    shutil.copytree("kms", "kmsserved")
    shutil.copytree("net", "netserved")
    records = [{"time": 1.0, "event": "test", "outcome": "ok"}, {"time": 2.0, "event": "test", "outcome": "ok"}]
    store = open_store(load_config(Path("kmsserved")))
    try:
        store.commit(Batch(links={0: ("0", "1", 0, 100_000, 1.0)}, audit=records))
    finally:
        store.close()
    from qkdseg.net.relaystore import RelayDB

    node = Path("netserved/nodes/0")
    store = Store(node, load_storage_key(node / "storage.key"), load_audit_key(node / "audit.key"))
    try:
        store.commit(Batch(audit=records))
    finally:
        store.close()
    RelayDB(node / "relay.sqlite3").close()


class _Forbidden(BaseException):
    """What a guarded case did that a refusal never does (listen on a socket, start a process)."""


def _guard() -> None:
    import uvicorn

    def refuse(what):
        def forbidden(*args, **kwargs):
            raise _Forbidden(f"the command would {what}: it was not refused first")
        return forbidden

    uvicorn.Server.run = uvicorn.Server.serve = refuse("serve")
    subprocess.Popen.__init__ = refuse("start a process")
    os.fork = refuse("fork a process")


def _drive(root: str, ids: list[str], port_in_use: int) -> None:
    """Run the cases ``ids`` (their directories prepared under ``root``) through ``qkdseg.cli.main``; one JSON line
    per case on stdout (exit status, stdout, stderr, seconds)."""
    import contextlib
    import io
    import logging
    import signal
    import traceback

    from qkdseg.cli import main
    from qkdseg.server.logs import LOGGERS

    by_id = {c[0]: c for c in CASES + ACCEPTED}
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in LOGGERS}
    umask = os.umask(0o022)
    os.umask(umask)
    _guard()

    def timeout(*_):
        raise _Forbidden("the case ran past 60 s")

    signal.signal(signal.SIGALRM, timeout)
    report = sys.stdout
    for cid in ids:
        argv = [a.replace("PORT_IN_USE", str(port_in_use)) for a in by_id[cid][1]]
        os.chdir(Path(root) / cid)
        out, err = io.StringIO(), io.StringIO()
        code, t0 = 0, time.monotonic()
        signal.alarm(60)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = ["qkdseg", *argv]
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 -- what escapes main is the failure reported
                err.write(traceback.format_exc())
                code = 1
        signal.alarm(0)
        for name, (handlers, level, propagate) in saved.items():  # a server in-process configured the logs
            log = logging.getLogger(name)
            log.handlers[:], log.propagate = handlers, propagate
            log.setLevel(level)
        os.umask(umask)  # and made its files private
        print(json.dumps({"id": cid, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                          "seconds": round(time.monotonic() - t0, 3)}), file=report, flush=True)


def _prepare(root: Path, base: Path, cid: str, argv: list[str], damage) -> None:
    d = root / cid
    d.mkdir()
    for name in BASES:
        if any(a == name or a.startswith(name + "/") for a in argv):
            shutil.copytree(base / name, d / name, symlinks=True)
    if damage is not None:
        damage(d)


DRIVER = "import sys, json; import test_careless_sweep as t; t._drive(sys.argv[1], json.loads(sys.argv[2]), {port})"
BUILD = "import os, sys; import test_careless_sweep as t; os.chdir(sys.argv[1]); t._build_bases(__import__('pathlib').Path('.'))"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKDSEG_")}
    env["COLUMNS"] = "200"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("careless-base")
    r = subprocess.run([sys.executable, "-c", BUILD, str(d)], capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory) -> dict:
    """Every case, prepared here and run in two drivers (each takes every other case)."""
    import socket

    root = tmp_path_factory.mktemp("careless")
    for cid, argv, damage, *_ in CASES + ACCEPTED:
        _prepare(root, base, cid, argv, damage)
    ids = [c[0] for c in CASES + ACCEPTED]
    with socket.socket() as squatter:  # the port every PORT_IN_USE case finds taken (on every address)
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        def drive(shard: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", DRIVER.format(port=port), str(root), json.dumps(shard)],
                                  capture_output=True, text=True, timeout=600, env=_env())

        with ThreadPoolExecutor(2) as ex:
            runs = list(ex.map(drive, [ids[0::2], ids[1::2]]))
    out = {}
    for r in runs:
        for line in r.stdout.splitlines():
            one = json.loads(line)
            out[one.pop("id")] = one
        assert r.returncode == 0, r.stderr[-3000:]
    return {"port": port, **out}


def _named(text: str, port: int) -> str:
    return text.replace("PORT_IN_USE", str(port))


@pytest.mark.parametrize("cid, argv, damage, needle", CASES, ids=[c[0] for c in CASES])
def test_a_careless_input_is_one_line_and_exit_2(outcomes, cid, argv, damage, needle):
    r = outcomes[cid]
    lines = r["stderr"].splitlines()
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"][-3000:]
    assert r["code"] == 2, (r["code"], r["stderr"][-2000:], r["stdout"][-500:])
    assert len(lines) == 1 and lines[0].startswith("qkdseg: error: "), r["stderr"][-2000:]
    assert _named(needle, outcomes["port"]) in lines[0], lines[0]


@pytest.mark.parametrize("cid, argv, damage, code, says", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_a_careless_looking_input_that_is_fine(outcomes, cid, argv, damage, code, says):
    r = outcomes[cid]
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"][-3000:]
    assert r["code"] == code and says in r["stdout"] + r["stderr"], (r["code"], r["stdout"][-1500:], r["stderr"])


def test_the_sweep_is_wide(outcomes):
    """At least 150 inputs over every command group; none took long (a refusal comes first)."""
    assert len(CASES) + len(ACCEPTED) >= 150
    groups = {c[1][0] if c[1][0] not in ("kms", "net", "node", "controller", "device", "topology") else
              " ".join(c[1][:2]) for c in CASES}
    for command in ("route", "emulate", "demo", "reproduce", "plot", "study", "simulate", "place", "topology show",
                    "topology generate", "kms init", "kms serve", "kms status", "kms audit", "kms rotate-storage-key",
                    "kms sae", "kms demo", "device serve", "net init", "net up", "net down", "net status",
                    "net fault", "net chaos", "node serve", "controller serve", "net add-link", "net add-node",
                    "net remove-link", "net remove-node", "net sae", "net clear-suspect"):
        assert command in groups, command
    slow = {k: v["seconds"] for k, v in outcomes.items() if isinstance(v, dict) and v["seconds"] > 20}
    assert not slow, slow


def test_net_down_never_signals_a_process_that_is_not_the_network_s(base, tmp_path):
    """A stale pid file (the network stopped long ago, its pids reused): net down leaves those processes alone."""
    d = tmp_path / "net"
    shutil.copytree(base / "net", d, symlinks=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (d / "run").mkdir()
        (d / "run" / "pids.json").write_text(json.dumps({"controller": other.pid}))
        r = subprocess.run([sys.executable, "-m", "qkdseg", "net", "down", str(d)], capture_output=True, text=True,
                           timeout=120, env=_env())
        assert r.returncode == 0 and "stopped 0 process(es)" in r.stdout, r.stdout + r.stderr
        assert f"pid {other.pid} is not a process of this network" in r.stderr and "Traceback" not in r.stderr
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("variable, value, argv", [
    ("QKDSEG_RELAY_TIMEOUT_S", "abc", ["node", "serve", "net/nodes/0"]),
    ("QKDSEG_LEASE_TTL_S", "0", ["controller", "serve", "net/controller", "--store", "etcd://127.0.0.1:1"]),
])
def test_a_bad_tuning_variable_is_one_line(base, tmp_path, variable, value, argv):
    """The servers' tuning variables (docs/network.md) are read when their module is imported: one line naming it."""
    shutil.copytree(base / "net", tmp_path / "net", symlinks=True)
    r = subprocess.run([sys.executable, "-m", "qkdseg", *argv], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**_env(), variable: value})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr == f"qkdseg: error: environment variable {variable}={value!r}: must be a " \
                      f"{'whole ' if variable == 'QKDSEG_LEASE_TTL_S' else ''}number above 0\n", r.stderr


@pytest.mark.parametrize("cid", ["kms-serve-toml-ttl-inf", "node-relay-sqlite-binary", "net-up-cluster-wrong-shape",
                                 "net-sae-add-ca-key-garbage"])
def test_end_to_end(base, tmp_path, cid):
    """A few cases as their own ``python -m qkdseg`` process: the real exit path."""
    argv, damage, needle = next((c[1], c[2], c[3]) for c in CASES if c[0] == cid)
    _prepare(tmp_path, base, cid, argv, damage)
    r = subprocess.run([sys.executable, "-m", "qkdseg", *argv], cwd=tmp_path / cid, capture_output=True, text=True,
                       timeout=120, env=_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("qkdseg: error: ") and needle in r.stderr, r.stderr
