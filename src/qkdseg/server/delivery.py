"""``dec_keys`` at a KME: the keys a slave SAE names, once, all or nothing (ETSI GS QKD 014 section 5.4).

Both deployments deliver through :func:`take_keys`: ``kms serve``
(:class:`qkdseg.kms.service.KeyService`) and a network node (the node's ETSI
014 service, :mod:`qkdseg.net`). Each checks first that the caller and the
master are SAEs it knows (their registries differ), then lets
:func:`take_keys` check the ids, the keys' owners and their state, and
commits the batch it is given before it answers with :func:`keys_body`.
"""

from __future__ import annotations

from .etsi import MSG_NOT_FOUND, Caller, KmsError, _b64
from .store import Batch, KeyRow
from .storehealth import CommitFailed


def take_keys(keys: dict[str, KeyRow], pending: set[str], store, caller: Caller, master: str, key_ids: list[str],
              now: float) -> tuple[list[tuple[KeyRow, bytes]], Batch]:
    """The keys ``key_ids`` that ``master`` issued to ``caller`` (unsealed), taken out of ``keys``, and the batch
    that deletes their rows (the caller adds its audit record and commits it before answering).

    Refused with :class:`.etsi.KmsError` and nothing taken: 400 for no id or an id named twice, 401 if the caller
    is not the slave of a key it names, 400 ``key_not_found`` for an id that is unknown, expired, issued but not
    committed yet (in ``pending``), or of another master than the path names: the caller, its slave, gets
    exactly the answer of an unknown key, so that the path's master cannot be tried until one fits (issue 33).
    """
    if not key_ids:
        raise KmsError(400, "key_IDs must name at least one key")
    if len(set(key_ids)) != len(key_ids):
        raise KmsError(400, "key_IDs names a key twice")
    rows = []
    missing = False
    for kid in key_ids:
        row = keys.get(kid)
        if row is None or kid in pending or row.expires_at <= now:
            missing = True
            continue
        rows.append(row)
    # section 5.4: 401 if the caller was not the slave of a key it names
    if any(row.slave != caller.sae for row in rows):
        raise KmsError(401, "the caller is not the slave SAE of one or more keys requested")
    if missing or any(row.master != master for row in rows):  # another master: as if unknown (same 400)
        raise KmsError(400, MSG_NOT_FOUND, reason="key_not_found")
    out = [(row, store.open(row)) for row in rows]
    for row in rows:
        del keys[row.key_id]
    return out, Batch(delete_keys=[row.key_id for row in rows])


async def commit_delivery(keys: dict[str, KeyRow], out: list[tuple[KeyRow, bytes]], batch: Batch, commit) -> None:
    """``await commit(batch)`` of the keys ``out`` that :func:`take_keys` took; when that fails
    (:class:`.storehealth.CommitFailed`: nothing stored) they are put back in ``keys``, fetchable again as they
    were, and the error is raised (a JSON 503)."""
    try:
        await commit(batch)
    except CommitFailed:
        for row, _ in out:
            keys[row.key_id] = row
        raise


def keys_body(keys: list[tuple[KeyRow, bytes]]) -> dict:
    """The standard's Key container of ``(row, key bytes)`` pairs, each key's exact security in its extension."""
    return {"keys": [{"key_ID": row.key_id, "key": _b64(m), "key_extension": {"qkdseg_security": row.security}}
                     for row, m in keys]}
