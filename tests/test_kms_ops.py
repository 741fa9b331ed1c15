"""Operating the key service (issue 24): /metrics against the audit log, /healthz and /readyz, JSON logs.

One ``qkdseg kms serve`` for the module, with the dashboard, a metrics port, JSON logs at debug level; the
tests drive it with their own ETSI 014 requests and read its answers with prometheus_client's text parser.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kms_helpers import QKDSEG, Server, consumed_offsets, kms_init
from timing import scaled

LEVEL = 0.5  # met on the example network between nodes 0 and 7 (2 keys per relay)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    d = kms_init(tmp_path_factory.mktemp("ops") / "svc", "example", ("A=0", "B=7", "C=4"),
                 "--security-level", str(LEVEL))
    server = Server(d, ("--dashboard-port", "0", "--metrics-port", "0", "--log-format", "json",
                        "--log-level", "debug")).start()
    try:
        deadline = time.monotonic() + scaled(30)
        while "metrics on http" not in server.log_tail(100000) and time.monotonic() < deadline:
            time.sleep(0.05)
        m = re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", server.log_tail(100000))
        assert m, server.log_tail()
        server.metrics_url = m.group(1)
        server.traffic = _traffic(server)
        yield server
    finally:
        server.stop()


def _traffic(kms) -> dict:
    """Deliveries, fetches and refusals of several kinds; what was done, counted by the test itself."""
    a, b, c = kms.client("A"), kms.client("B"), kms.client("C")
    done = Counter()
    keys, rids = [], []

    def note(r, endpoint):
        done[f"requests_{endpoint}"] += 1
        rids.append((r.headers.get("x-request-id"), r.status_code, endpoint))
        return r

    for number, size in ((1, 256), (3, 128), (2, 512)):
        r = note(a.post("B/enc_keys", {"number": number, "size": size}), "enc_keys")
        assert r.status_code == 200, r.text
        got = r.json()["keys"]
        done["deliveries"] += 1
        done["keys_issued"] += number
        done["bits_issued"] += number * size
        keys += [k["key"] for k in got]
        ids = [{"key_ID": k["key_ID"]} for k in got]
        r = note(b.post("A/dec_keys", {"key_IDs": ids}), "dec_keys")
        assert r.status_code == 200, r.text
        done["fetches"] += 1
        done["keys_fetched"] += number
        done["bits_fetched"] += number * size
        keys += [k["key"] for k in r.json()["keys"]]
    r = note(a.get("B/status"), "status")
    assert r.status_code == 200
    refusals = [
        (lambda: b.post("A/dec_keys", {"key_IDs": [{"key_ID": "00000000-0000-4000-8000-000000000000"}]}),
         "dec_keys", "key_not_found"),
        (lambda: a.post("B/enc_keys", {"number": 1, "size": 100}), "enc_keys", "bad_request"),
        (lambda: a.post("Z/enc_keys", {"number": 1}), "enc_keys", "bad_request"),
        (lambda: a.post("B/enc_keys", {"number": 1, "extension_mandatory": [{"qkdseg_security_level": 0.99}]}),
         "enc_keys", "level_unmet"),
        (lambda: a.get("B/nothing"), "other", "not_found"),
    ]
    for call, endpoint, reason in refusals:
        r = note(call(), endpoint)
        assert r.status_code in (400, 404, 503), r.text
        done[f"refusal_{reason}"] += 1
    return {"done": done, "keys": keys, "rids": rids}


def _scrape(url: str) -> dict:
    r = requests.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _audit(kms) -> list[dict]:
    return [json.loads(line) for line in (kms.directory / "audit.jsonl").read_text().splitlines() if line]


def test_metrics_counters_equal_the_audit_log_and_the_traffic(kms):
    done = kms.traffic["done"]
    m = _scrape(kms.metrics_url)
    recs = _audit(kms)
    issue = [r for r in recs if r["event"] == "issue"]
    deliver = [r for r in recs if r["event"] == "deliver"]
    deny = [r for r in recs if r["event"] == "deny"]
    expire = [r for r in recs if r["event"] == "expire"]

    def v(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert v("qkdseg_deliveries_total") == len(issue) == done["deliveries"]
    assert v("qkdseg_keys_issued_total") == sum(len(r["key_ids"]) for r in issue) == done["keys_issued"]
    assert v("qkdseg_key_bits_issued_total") == sum(len(r["key_ids"]) * r["size"] for r in issue) == done["bits_issued"]
    assert v("qkdseg_fetches_total") == len(deliver) == done["fetches"]
    assert v("qkdseg_keys_fetched_total") == sum(len(r["key_ids"]) for r in deliver) == done["keys_fetched"]
    assert v("qkdseg_key_bits_fetched_total") == sum(len(r["key_ids"]) * r["size"] for r in deliver) == done["bits_fetched"]
    by_reason = Counter(r["reason"] for r in deny)
    for reason, n in by_reason.items():
        assert v("qkdseg_refusals_total", reason=reason) == n, reason
    assert sum(val for (name, _), val in m.items() if name == "qkdseg_refusals_total") == len(deny)
    assert {k[len("refusal_"):]: n for k, n in done.items() if k.startswith("refusal_")} == dict(by_reason)
    assert v("qkdseg_expiries_total") == len(expire)
    assert v("qkdseg_audit_records_total") == len(recs) == v("qkdseg_audit_head_seq")
    for endpoint in ("enc_keys", "dec_keys", "status", "other"):
        assert v("qkdseg_request_duration_seconds_count", endpoint=endpoint) == done[f"requests_{endpoint}"], endpoint
    assert v("qkdseg_store_commit_batch_size_sum") == len(recs)  # every commit here carried one audited request
    assert 0 < v("qkdseg_store_commit_duration_seconds_count") <= len(recs)
    assert v("qkdseg_store_database_bytes") > 0
    assert v("qkdseg_keys_waiting") == 0  # every issued key was fetched
    assert v("qkdseg_build_info", service="kms", version=__import__("qkdseg").__version__) == 1


def test_link_metrics_match_the_store_and_carry_no_key_ids_or_bytes(kms):
    m = _scrape(kms.metrics_url)
    offsets = consumed_offsets(kms.directory)
    import sqlite3

    db = sqlite3.connect(f"file:{kms.directory / 'kms.sqlite3'}?mode=ro", uri=True)
    ends = {k: f"{u}-{v}" for k, u, v in db.execute("SELECT k, u, v FROM links")}
    db.close()
    consumed = {dict(lab)["link"]: val for (name, lab), val in m.items() if name == "qkdseg_link_consumed_bits_total"}
    assert len(consumed) == 12
    for k, bits in offsets.items():
        assert consumed[ends[k]] == bits > 0
    assert sum(consumed.values()) == sum(offsets.values())
    levels = {dict(lab)["link"]: val for (name, lab), val in m.items() if name == "qkdseg_link_level_bits"}
    caps = {dict(lab)["link"]: val for (name, lab), val in m.items() if name == "qkdseg_link_capacity_bits"}
    assert set(levels) == set(caps) == set(consumed) and all(0 <= levels[x] <= caps[x] for x in levels)
    states = Counter(dict(lab)["link"] for (name, lab), val in m.items() if name == "qkdseg_link_state" and val == 1)
    assert set(states) == set(levels) and set(states.values()) == {1}
    text = requests.get(f"{kms.metrics_url}/metrics", timeout=30).text
    assert not UUID.search(text)
    for key in kms.traffic["keys"]:
        raw = base64.b64decode(key)
        assert key not in text and raw.hex() not in text


def test_healthz_and_readyz_on_both_ports_and_kms_status(kms):
    dash = kms.dashboard_url.rsplit("/dashboard/", 1)[0]
    for base in (kms.metrics_url, dash):
        h = requests.get(f"{base}/healthz", timeout=30)
        assert h.status_code == 200 and h.json()["alive"] is True and h.json()["service"] == "kms"
        r = requests.get(f"{base}/readyz", timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["ready"] is True, body
        assert set(body["checks"]) == {"store", "audit_chain", "key_material"}
        assert all(c["ok"] is True and isinstance(c["detail"], str) for c in body["checks"].values())
        assert requests.get(f"{base}/metrics", timeout=30).status_code == 200
    out = subprocess.run([QKDSEG, "kms", "status", str(kms.directory), "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["ready"] is True and st["serving"] is True and set(st["checks"]) == set(body["checks"])
    assert st["checks"]["key_material"]["detail"] == body["checks"]["key_material"]["detail"]


def test_json_logs_carry_the_request_ids_of_the_audit_and_no_key_bytes(kms):
    lines = kms.log_path.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line the server wrote is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in recs)
    logged = {r["http_request_id"]: r for r in recs if r.get("logger") == "qkdseg.kms.request"}
    audited = {r["http_request_id"]: r for r in _audit(kms) if "http_request_id" in r}
    for rid, status, endpoint in kms.traffic["rids"]:
        assert re.fullmatch(r"[0-9a-f]{16}", rid)
        assert logged[rid]["status"] == status and logged[rid]["endpoint"] == endpoint
        if endpoint != "status":  # a status answer writes no audit record; every other request here wrote one
            assert rid in audited, (rid, status)
            assert audited[rid]["event"] == ("deny" if status != 200 else
                                             {"enc_keys": "issue", "dec_keys": "deliver"}[endpoint])
    text = kms.log_path.read_text()
    for key in kms.traffic["keys"]:
        raw = base64.b64decode(key)
        assert key not in text and raw.hex() not in text and key.rstrip("=") not in text


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A service directory that no server serves (for in-process tests)."""
    return kms_init(tmp_path_factory.mktemp("offline") / "svc", "example", ("A=0", "B=7"), "--security-level",
                    str(LEVEL))


def test_dashboard_token_guards_metrics_and_readyz_not_healthz(offline):
    import asyncio

    import httpx

    from qkdseg.server.dashboard import create_dashboard
    from qkdseg.server.metrics import ops_routes
    from qkdseg.server.monitor import Monitor
    from qkdseg.server.health import kms_health, kms_ready, service_metrics
    from qkdseg.kms.server import open_service

    svc = open_service(offline)
    try:
        metrics = service_metrics(svc)
        token = "t" * 40
        app = create_dashboard(Monitor(svc), token=token, run_monitor=False, open_paths=("/healthz",),
                               routes=ops_routes(metrics, lambda: kms_health(svc, metrics), lambda: kms_ready(svc)))

        async def ask() -> list[int]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                out = [(await client.get("/healthz")).status_code]
                for path in ("/metrics", "/readyz"):
                    out.append((await client.get(path)).status_code)
                    out.append((await client.get(path, headers={"authorization": f"Bearer {token}"})).status_code)
                return out

        assert asyncio.run(ask()) == [200, 401, 200, 401, 200]
    finally:
        svc.close()


def test_a_store_of_another_schema_version_is_refused_clearly(offline):
    import sqlite3

    from qkdseg.errors import InvalidRequest
    from qkdseg.kms.server import open_service

    d = offline
    open_service(d).close()
    db = sqlite3.connect(d / "kms.sqlite3")
    db.execute("UPDATE meta SET value='1' WHERE name='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(InvalidRequest, match=r"schema version 1, this qkdseg reads 2"):
        open_service(d)
    out = subprocess.run([QKDSEG, "kms", "status", str(d)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "NOT READY (not served now)" in out.stdout
    assert "store: FAILED: schema version 1, this qkdseg reads 2" in out.stdout and "audit_chain: ok" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--log-format", "xml"), "--log-format 'xml' must be text or json"),
    (("--log-level", "loud"), "--log-level 'loud' must be"),
    (("--metrics-port", "70000"), "--metrics-port 70000 must be in 0..65535"),
])
def test_bad_log_and_metrics_options_are_one_line_errors(tmp_path, args, message):
    out = subprocess.run([QKDSEG, "kms", "serve", str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("qkdseg: error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _sample_names(families) -> set[str]:
    """The sample names a scrape can hold for these metric families (counter: _total; histogram: _bucket ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    out = set()
    for fam in families:
        out.add(fam.name)
        out.update(fam.name + s for s in suffixes.get(fam.type, ()))
    return out


def test_every_metric_the_grafana_dashboard_names_is_exported(kms):
    from pathlib import Path

    from qkdseg.server.metrics import Metrics

    dash = json.loads((Path(__file__).parents[1] / "docs" / "grafana" / "qkdseg.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    named = set(re.findall(r"\bqkdseg_[a-z_]+\b", " ".join(exprs)))
    assert len(named) >= 20 and len(exprs) >= 25
    text = requests.get(f"{kms.metrics_url}/metrics", timeout=30).text
    exported = {"kms": _sample_names(text_string_to_metric_families(text))}
    for kind in ("node", "controller"):  # what a node's and the controller's /metrics hold (test_net.py scrapes them)
        from qkdseg.net.ops import metrics_for

        exported[kind] = _sample_names(metrics_for(kind).registry.collect())
    missing = named - set().union(*exported.values())
    assert not missing, missing
    # the network's panels name what the network's servers export
    for expr in exprs:
        if "relay_messages" in expr:
            assert set(re.findall(r"\bqkdseg_[a-z_]+\b", expr)) <= exported["node"]


def test_systemd_units_verify(tmp_path):
    import shutil
    from pathlib import Path

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here: the unit files are not verified")
    src = Path(__file__).parents[1] / "deploy" / "systemd"
    units = sorted(src.glob("*.service"))
    assert {u.name for u in units} == {"qkdseg-kms.service", "qkdseg-node@.service", "qkdseg-controller.service",
                                       "qkdseg-controller-etcd@.service", "qkdseg-etcd@.service"}
    paths = []
    for unit in units:
        text = unit.read_text()
        etcd = unit.name == "qkdseg-etcd@.service"
        for need in ("Restart=on-failure", "User=qkdseg", "StateDirectory=", "ProtectSystem=strict",
                     "NoNewPrivileges=yes", "UMask=0077",
                     "ExecStart=/usr/bin/etcd" if etcd else "ExecStart=/usr/local/bin/qkdseg "):
            assert need in text, (unit.name, need)
        if "qkdseg kms serve" in text or "qkdseg controller serve" in text:  # numba caches its kernels there
            assert "CacheDirectory=qkdseg" in text and "Environment=NUMBA_CACHE_DIR=%C/qkdseg" in text, unit.name
        # verify checks that ExecStart's program exists: point it at this environment's qkdseg (and etcd)
        name = unit.name.replace("@.service", "@n0.service")
        (tmp_path / name).write_text(text.replace("/usr/local/bin/qkdseg", QKDSEG)
                                     .replace("/usr/bin/etcd", shutil.which("etcd") or "/bin/true"))
        paths.append(str(tmp_path / name))
    out = subprocess.run([tool, "verify", *paths], capture_output=True, text=True, timeout=120)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "qkdseg" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_online_backup_in_the_documented_order_restores_and_starts(kms, tmp_path):
    """docs/deploy.md, "Backup and restore": SQLite's online backup first, then audit.jsonl cut at the head."""
    import shutil
    import sqlite3

    from qkdseg.kms.server import open_service

    src, dst = kms.directory, tmp_path / "restored"
    dst.mkdir()
    for name in ("kms.toml", "storage.key", "audit.key", "dashboard.token"):
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "pki", dst / "pki")
    live = sqlite3.connect(f"file:{src / 'kms.sqlite3'}?mode=ro", uri=True)
    copy = sqlite3.connect(dst / "kms.sqlite3")
    live.backup(copy)
    live.close()
    head = int(copy.execute("SELECT value FROM meta WHERE name='audit_head'").fetchone()[0].split(":")[0])
    copy.close()
    assert kms.client("A").post("B/enc_keys", {"number": 1, "size": 100}).status_code == 400  # one more record
    lines = (src / "audit.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["seq"] > head
    (dst / "audit.jsonl").write_text("".join(line + "\n" for line in lines))  # not cut: refused
    out = subprocess.run([QKDSEG, "kms", "status", str(dst), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["checks"]["audit_chain"]["ok"] is False
    kept = [line for line in lines if json.loads(line)["seq"] <= head]
    (dst / "audit.jsonl").write_text("".join(line + "\n" for line in kept))
    out = subprocess.run([QKDSEG, "kms", "status", str(dst), "--json"], capture_output=True, text=True, timeout=60)
    st = json.loads(out.stdout)
    assert out.returncode == 0 and st["ready"] and st["serving"] is False, out.stdout + out.stderr
    svc = open_service(dst)
    try:
        assert {int(k): int(c) for k, c in enumerate(svc.levels.consumed) if c} == consumed_offsets(src)
    finally:
        svc.close()
