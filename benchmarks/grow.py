"""How long each change of membership takes on a running network, and what it touches (issue 37).

    python benchmarks/grow.py --network example --port 18443
    python benchmarks/grow.py --network waxman30 --port 18443

``waxman30``: ``qkdseg topology generate waxman -n 30 --seed 1`` (a 30-node Waxman network). The script runs
``net init`` and ``net up --detach`` in a temporary directory, then each command once, in the order an operator
would (``sae add``, ``add-link``, ``add-node`` with two links, ``net up`` of the new node, ``sae add`` at it,
``remove-link``, ``remove-node``, ``sae remove``), timing the whole command (a new Python process
each, as an operator runs it) and the part spent telling the processes; it counts the files each changes in
``DIR`` and the processes that applied it, and checks that no other process's pid changed. ``net down`` at the end.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QKDSEG = str(Path(sys.executable).with_name("qkdseg"))


def run(*args, check=True) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([QKDSEG, *args], capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stdout}{r.stderr}")
    return dt, r


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()
            and not p.name.startswith(("audit", "kms.sqlite3", "relay.sqlite3")) and "logs" not in p.parts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--network", default="example")
    ap.add_argument("--port", type=int, default=18443)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d = tmp / "d"
        if a.network == "waxman30":
            spec = str(tmp / "w30.json")
            run("topology", "generate", "waxman", "-n", "30", "--seed", "1", "-o", spec)
            nodes = json.loads(Path(spec).read_text())["nodes"]
            ids = [n["id"] for n in nodes]
        else:
            spec, ids = "example", list(range(10))
        first, last = ids[0], ids[-1]
        run("net", "init", str(d), "--network", spec, "--sae", f"A={first}", "--sae", f"B={last}",
            "--security-level", "0.5", "--port", str(a.port))
        names = json.loads((d / "nodes.json").read_text())
        nbs = {lk["neighbour"] for lk in json.loads((d / "nodes" / names[str(first)] / "node.json").read_text())["links"]}
        other = next(x for x in reversed(ids) if x != first and x not in nbs)  # a link to add: not there yet
        up_s, _ = run("net", "up", str(d), "--detach")
        new = max(int(x) for x in ids) + 1
        host = f"127.0.0.{2 + len(ids)}"
        out: dict = {"network": a.network, "nodes": len(ids), "net_up_s": round(up_s, 2), "commands": []}
        try:
            pids0 = json.loads((d / "run" / "pids.json").read_text())
            mid = ids[len(ids) // 2]
            steps = [
                ("sae", "add", str(d), f"C={mid}"),
                ("add-link", str(d), str(first), str(other)),
                ("add-node", str(d), "--id", str(new), "--address", f"{host}:{a.port}", "--link", str(first),
                 "--link", str(last)),
                ("up", str(d), "--detach"),
                ("sae", "add", str(d), f"F={new}"),
                ("remove-link", str(d), str(first), str(other)),
                ("remove-node", str(d), str(new)),
                ("sae", "remove", str(d), "C"),
            ]
            for step in steps:
                before = snapshot(d)
                args = ("net", *step) + (("--format", "json") if step[0] != "up" else ())
                dt, r = run(*args)
                after = snapshot(d)
                changed = sorted(k for k in after if before.get(k) != after[k])
                row = {"command": "qkdseg net " + " ".join(s if not s.startswith("/") else "DIR" for s in step),
                       "wall_s": round(dt, 3), "files_changed": len(changed),
                       "files": changed if len(changed) <= 8 else changed[:8] + ["..."]}
                if step[0] != "up":
                    res = json.loads(r.stdout)
                    row.update(processes_told=len(res["applied"]), not_applied=res["not_applied"],
                               tell_s=res["processes_s"], in_process_s=res["seconds"])
                out["commands"].append(row)
            pids = json.loads((d / "run" / "pids.json").read_text())
            out["other_pids_unchanged"] = all(pids.get(k) == v for k, v in pids0.items())
            st = json.loads(run("net", "status", str(d), "--format", "json")[1].stdout)
            out["topology_versions"] = sorted({r.get("topology_version") for r in st})
            out["load_avg"] = os.getloadavg()
        finally:
            run("net", "down", str(d), check=False)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
