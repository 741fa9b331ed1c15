"""``qkdseg emulate``: relay real key material over a route against a sampled adversary."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest
from .common import NET_HELP, Fmt, Scheme, Sharing, _console, _dump, _load, _txt
from .errors import user_errors


@user_errors
def emulate(
    net: Annotated[str, typer.Argument(help=NET_HELP, show_default=False)],
    src: Annotated[str, typer.Option("--src", help="Source node id.")],
    dst: Annotated[str, typer.Option("--dst", help="Destination node id.")],
    algorithm: Annotated[str, typer.Option("--algorithm", "-a", help="Routing algorithm (see `qkdseg algorithms`).")] = "smr",
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", "-e", help="Also execute the reconstruction at this level; per-key secrecy.")] = None,
    reconstruction: Annotated[Optional[Scheme], typer.Option("--reconstruction", "-r", help="Reconstruction scheme (needs --epsilon; default paper).")] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Runs, each from full pools with a fresh compromised set.")] = 1000,
    block_bits: Annotated[int, typer.Option("--block-bits", help="Key piece size B in bits (a multiple of 8).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the compromised-set draws.")] = 0,
    max_paths: Annotated[Optional[int], typer.Option("--max-paths", help="Paths per segment (default: unlimited).")] = None,
    sharing: Annotated[Sharing, typer.Option("--sharing", help="xor, or threshold: segment keys shared k-of-m, k = m - T.")] = Sharing.xor,
    tolerate: Annotated[int, typer.Option("--tolerate", help="threshold: lost paths a segment key survives (T >= 1).")] = 0,
    lose: Annotated[int, typer.Option("--lose", help="threshold: pieces deleted per segment and trial (random paths).")] = 0,
    alter: Annotated[int, typer.Option("--alter", help="threshold: pieces altered per segment and trial (random paths).")] = 0,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.text,
    default_p: Annotated[Optional[float], typer.Option("--default-p", help="p for untrusted nodes the file gives none.")] = None,
) -> None:
    """Relay real key material over a route, many times, against a sampled adversary (docs/keys.md)."""
    from ..keys import emulate as do_emulate

    network = _load(net, default_p)
    s, d = network.resolve(src), network.resolve(dst)
    if reconstruction is not None and epsilon is None:
        raise InvalidRequest("--reconstruction needs --epsilon (the security level every global key must meet)")
    if sharing is Sharing.threshold or tolerate or lose or alter:
        return _emulate_shared(network, s, d, algorithm, sharing, tolerate, lose, alter, epsilon, trials, block_bits,
                               seed, max_paths, fmt)
    out = do_emulate(
        network,
        s,
        d,
        algorithm,
        trials=trials,
        block_bits=block_bits,
        seed=seed,
        epsilon=epsilon,
        reconstruction=reconstruction.value if reconstruction is not None else None,
        record_compromised=fmt is Fmt.json,
        options={"max_paths": max_paths} if max_paths is not None else None,
    )
    if fmt is Fmt.json:
        _dump(out)
        return
    con = _console()
    con.print(f"emulate {_txt(algorithm)}: {_txt(s)} \u2192 {_txt(d)} on {_txt(network.name)}, {trials} trials, B={out['block_bits']} bits, seed {seed}")
    if out["blocked"]:
        con.print("[bold red]BLOCKED[/] (no usable path): nothing relayed")
        return
    lo, hi = out["ci95"]
    arrow = " \u2192 "
    con.print(f"segment nodes        {arrow.join(map(_txt, out['route']['segment_nodes']))}")
    con.print(f"keys identical       {out['keys_identical']} / {trials} trials (both ends, byte for byte)")
    con.print(f"empirical secrecy    {out['empirical_secrecy']:.4f}  (95% CI {lo:.4f} .. {hi:.4f}; xor-all key)")
    con.print(f"exact security       {out['exact_security']:.4f}  (standard error {out['standard_error']:.4f})")
    con.print(f"bits consumed        {out['bits_consumed']}  ({out['consumed_bits_per_trial']} per trial)")
    if "global_keys" in out:
        kind = "computational keys" if out["reconstruction"] == "reuse" else "global keys"
        table = Table(
            title=f"reconstruction {out['reconstruction']} at epsilon={out['epsilon']:g}: {len(out['global_keys'])} {kind}",
            title_justify="left",
        )
        for col in ("key", "exact", "empirical", "95% CI", "identical"):
            table.add_column(col, justify="right")
        for k in out["global_keys"]:
            table.add_row(
                str(k["key"] + 1),
                f"{k['exact_security']:.4f}",
                f"{k['empirical_secrecy']:.4f}",
                f"{k['ci95'][0]:.4f} .. {k['ci95'][1]:.4f}",
                str(k["keys_identical"]),
            )
        con.print(table)


def _emulate_shared(network, s, d, algorithm, sharing, tolerate, lose, alter, epsilon, trials, block_bits, seed,
                    max_paths, fmt) -> None:
    """``emulate --sharing threshold``: segment keys shared k-of-m, pieces deleted and altered (docs/model.md 4a)."""
    from ..keys.shares import emulate_shared

    if sharing is not Sharing.threshold:
        raise InvalidRequest("--tolerate, --lose and --alter need --sharing threshold")
    if epsilon is not None:
        raise InvalidRequest("--epsilon with --sharing threshold: not yet (emulate runs the xor-all key shared k-of-m)")
    out = emulate_shared(network, s, d, algorithm, tolerate=tolerate, trials=trials, block_bits=block_bits, seed=seed,
                         lose=lose, alter=alter, options={"max_paths": max_paths} if max_paths is not None else None)
    if fmt is Fmt.json:
        _dump(out)
        return
    con = _console()
    con.print(f"emulate {_txt(algorithm)}: {_txt(s)} \u2192 {_txt(d)} on {_txt(network.name)}, {trials} trials, "
              f"B={out['block_bits']} bits, seed {seed}; threshold sharing, tolerate {tolerate}, "
              f"{lose} lost and {alter} altered piece(s) per segment")
    lo, hi = out["ci95"]
    con.print(f"keys identical       {out['keys_identical']} / {trials} trials (both ends, byte for byte)")
    con.print(f"altered named        {out['altered_named']} / {trials} trials (every altered path, no other)")
    con.print(f"empirical secrecy    {out['empirical_secrecy']:.4f}  (95% CI {lo:.4f} .. {hi:.4f})")
    con.print(f"exact security       {out['exact_security']:.4f}  (standard error {out['standard_error']:.4f})")
