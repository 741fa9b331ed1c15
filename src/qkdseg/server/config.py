"""``kms.toml``: the key service's configuration (docs/kms.md).

One file in the service directory ``DIR`` names the network, the SAE
registry (SAE id -> node), the defaults of a key request and the TLS
material. :func:`write_config` writes it (``qkdseg kms init``);
:func:`load_config` reads and checks it, naming the field at fault.

Relative paths in the file are relative to ``DIR``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> cfg = KmsConfig(network="example", saes={"SAE_A": "0", "SAE_B": "7"})
>>> write_config(d, cfg).name
'kms.toml'
>>> load_config(d).saes
{'SAE_A': '0', 'SAE_B': '7'}
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest

SAE_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")
CONFIG_NAME = "kms.toml"


def check_sae_id(sae: str, where: str = "SAE id") -> str:
    """``sae`` if it is 1-64 characters of ``[A-Za-z0-9._~-]``, else :class:`InvalidRequest`.

    No known ETSI 014 client URL-encodes SAE ids, so only URL-safe
    characters are allowed.
    """
    if not isinstance(sae, str) or not SAE_ID_RE.fullmatch(sae):
        raise InvalidRequest(f"{where} {sae!r} must be 1-64 characters of [A-Za-z0-9._~-]")
    return sae


#: The largest value of an integer field of ``kms.toml`` where it is less than 2**53: a limit past these is no limit
#: (a body of any size, any number of connections) or a key no request could be served.
INT_CAPS = {"key_size": 1 << 20, "min_key_size": 1 << 20, "max_key_size": 1 << 20, "max_key_per_request": 1 << 16,
            "max_body_bytes": 1 << 30, "max_connections": 1 << 20}


@dataclass
class KmsConfig:
    """The contents of ``kms.toml``.

    Attributes
    ----------
    network : str
        A network spec as ``qkdseg route`` takes it (file relative to DIR,
        ``example`` or ``topohub:...``).
    saes : dict
        SAE id -> node id (as text; resolved against the network).
    kme_id : str
        This key management entity's id (``source_KME_ID`` and ``target_KME_ID``).
    security_level : float
        Default security level of a key request, a probability in [0, 1].
    key_size : int
        Default key size, bits (a multiple of 8).
    min_key_size, max_key_size : int
        Accepted key sizes, bits.
    max_key_per_request : int
        Most keys one ``enc_keys`` call may ask for.
    max_key_count : int
        Most keys issued to masters and not yet fetched by their slaves, over all SAE pairs (:mod:`.quota`).
    sae_max_waiting : int
        Most such keys of one master-slave pair (0: no limit of its own).
    sae_rate : float
        Most ETSI 014 requests per second of one SAE, a token bucket (0: no limit).
    algorithm : str
        Routing algorithm (a name from ``qkdseg.ALGORITHMS``).
    algorithm_options : dict
        The algorithm's options (table ``[algorithm_options]``; ``qkdseg
        algorithms`` lists them), e.g. ``shared_relays = true`` for ``msp``.
        ``seed`` and ``epsilon`` are the service's: a fresh seed per request,
        the request's level.
    reconstruction : str
        Reconstruction scheme (``paper``, ``optimal`` or ``xor-all``).
    sharing, tolerate : str, int
        How a segment's pieces make its key: ``xor`` (all needed; ``tolerate``
        0) or ``threshold`` (shared k-of-m over the ``m`` paths, ``k = m -
        tolerate``; reconstruction ``xor-all``; docs/kms.md).
    key_ttl_s : float
        Seconds an issued key waits for its slave before it expires.
    default_rate_bps : int
        Key generation rate (bits/s) of a link whose network file gives no
        ``rate_bps``. (A link without ``pool_bits`` holds 100,000 bits, the
        network model's default.)
    audit_max_mb : float
        ``audit.jsonl`` is rotated into ``audit-<first seq>.jsonl`` when it
        passes this size (MB, fractions allowed; 0: never).
    retention_s : float
        Seconds a finished row is kept before it is pruned (the device keys
        used up, ``link_source = "device"``).
    durability : str
        ``full`` (SQLite ``synchronous=FULL``: an answered request survives
        power loss) or ``normal`` (survives a crash of the process only).
    ca, cert, key : str
        TLS: the CA that signs SAE certificates, and the server's certificate
        and private key (PEM files, relative to DIR).
    storage_key : str
        The AES-256-GCM key file that encrypts key material at rest.
    audit_key : str
        The HMAC-SHA256 key file that keys the audit chain.
    dashboard_token : str
        The operator dashboard's access token file (needed when the dashboard
        listens on a non-loopback address).
    max_body_bytes : int
        Largest request body accepted (bytes); a larger one gets 413.
    header_timeout_s : float
        Seconds a connection may take from its TLS handshake (or the end of
        its previous response) to the end of a request's headers.
    body_timeout_s : float
        Seconds a request's body may take to arrive after its headers.
    keep_alive_s : float
        Seconds an idle keep-alive connection is kept after a response.
    max_connections : int
        Most open (handshaken) connections; more are closed at once.
    link_source : str
        Where link keys come from: ``emulated`` (generated at each link's
        ``rate_bps``) or ``device`` (QKD devices over ETSI 014, one
        ``[device_links."U|V"]`` table per link; docs/kms.md, "Link keys
        from devices").
    device_poll_s, device_timeout_s, device_backoff_max_s : float
        With ``device``: seconds between status polls of a link's device,
        the time limit of one device call, and the longest wait between
        retries after a device error (the wait doubles from
        ``device_poll_s``).
    device_links : dict
        ``"U|V"`` -> the link's device endpoints (:class:`.devicesource.DeviceLink`).
    stock : dict
        The ``[stock]`` table: the SAE pairs that keep a key stock, its watermarks, level and key size
        (:mod:`.stockconfig`; empty: no stock).
    """

    network: str
    saes: dict[str, str]
    kme_id: str = "KME_qkdseg"
    security_level: float = 0.9
    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 4096
    max_key_per_request: int = 128
    max_key_count: int = 100_000
    sae_max_waiting: int = 0
    sae_rate: float = 0.0
    algorithm: str = "smr"
    reconstruction: str = "paper"
    sharing: str = "xor"
    tolerate: int = 0
    key_ttl_s: float = 3600.0
    default_rate_bps: int = 100_000
    durability: str = "full"
    audit_max_mb: float = 64.0
    retention_s: float = 3600.0
    ca: str = "pki/ca.crt"
    cert: str = "pki/server.crt"
    key: str = "pki/server.key"
    storage_key: str = "storage.key"
    audit_key: str = "audit.key"
    dashboard_token: str = "dashboard.token"
    max_body_bytes: int = 1 << 20
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: float = 30.0
    max_connections: int = 1024
    algorithm_options: dict = field(default_factory=dict)
    link_source: str = "emulated"
    device_poll_s: float = 0.2
    device_timeout_s: float = 5.0
    device_backoff_max_s: float = 5.0
    device_links: dict[str, dict] = field(default_factory=dict)
    stock: dict = field(default_factory=dict)
    _dir: Path = field(default=Path("."), repr=False, compare=False)

    def path(self, name: str) -> Path:
        """A path of the file, made absolute against the service directory."""
        p = Path(name)
        return p if p.is_absolute() else self._dir / p

    def check(self, flags: dict[str, str] | None = None) -> "KmsConfig":
        """Validate every field; :class:`InvalidRequest` names the field and value.

        ``flags`` (field -> command-line flag) names the flag instead of the
        field, for values that come from the command line (``kms init``).
        """
        where = f"{self._dir / CONFIG_NAME}"

        def bad(name: str, why: str) -> InvalidRequest:
            if flags and name in flags:
                value = getattr(self, name)
                shown = " ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else repr(value)
                return InvalidRequest(f"{flags[name]} {shown} {why} (kms.toml field '{name}')")
            return InvalidRequest(f"{where}: field '{name}'={getattr(self, name)!r} {why}")

        if not isinstance(self.network, str) or not self.network:
            raise bad("network", "must be a network spec")
        if not isinstance(self.saes, dict) or len(self.saes) < 2:
            raise bad("saes", "must name at least two SAEs (SAE id = node)")
        for sae, node in self.saes.items():
            check_sae_id(sae, f"{where}: SAE id")
            if not isinstance(node, (str, int)) or isinstance(node, bool):
                raise InvalidRequest(f"{where}: SAE {sae!r}: node {node!r} must be a node id")
        try:
            check_sae_id(self.kme_id)
        except InvalidRequest:
            raise bad("kme_id", "must be 1-64 characters of [A-Za-z0-9._~-]") from None
        if self.kme_id in self.saes:
            raise bad("kme_id", "is also an SAE id (the KME and the SAEs need distinct ids)")
        lvl = self.security_level
        if isinstance(lvl, bool) or not isinstance(lvl, (int, float)) or not 0.0 <= lvl <= 1.0 or math.isnan(lvl):
            raise bad("security_level", "must be a probability in [0, 1]")
        for name in ("key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_key_count",
                     "default_rate_bps", "max_body_bytes", "max_connections"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < (0 if name.startswith("default") else 1):
                raise bad(name, "must be a positive integer")
            if val > INT_CAPS.get(name, 2**53):
                raise bad(name, f"must be at most {INT_CAPS.get(name, 2**53)}")
        waiting, rate = self.sae_max_waiting, self.sae_rate
        if isinstance(waiting, bool) or not isinstance(waiting, int) or not 0 <= waiting <= 2**53:
            raise bad("sae_max_waiting", "must be a whole number >= 0 (0: no limit)")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1e6 or math.isnan(rate):
            raise bad("sae_rate", "must be a number of requests per second in [0, 1e6] (0: no limit)")
        for name in ("key_size", "min_key_size", "max_key_size"):
            if getattr(self, name) % 8:
                raise bad(name, "must be a multiple of 8 bits")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise bad("key_size", f"must lie in [min_key_size, max_key_size] = [{self.min_key_size}, {self.max_key_size}]")
        if self.reconstruction not in ("paper", "optimal", "xor-all"):
            raise bad("reconstruction", "must be paper, optimal or xor-all (reuse keys are only computationally secure)")
        self._check_sharing(bad)
        ttl = self.key_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 1e9:
            raise bad("key_ttl_s", "must be a positive number of seconds, at most 1e9")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 86400:
                raise bad(name, "must be a number of seconds in (0, 86400]")
        for name in ("ca", "cert", "key", "storage_key", "audit_key", "dashboard_token"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "must be a file path (text, relative to the service directory)")
        if self.link_source not in ("emulated", "device"):
            raise bad("link_source", "must be 'emulated' or 'device'")
        for name in ("device_poll_s", "device_timeout_s", "device_backoff_max_s"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 3600:
                raise bad(name, "must be a number of seconds in (0, 3600]")
        if not isinstance(self.device_links, dict):
            raise bad("device_links", "must be a table of \"U|V\" = link tables")
        if self.link_source == "device":
            if not self.device_links:
                raise bad("link_source", "is 'device' but no [device_links.\"U|V\"] table is given")
            for name, table in self.device_links.items():
                DeviceLink.from_table(name, table, where)
        if self.durability not in ("full", "normal"):
            raise bad("durability", "must be 'full' or 'normal'")
        for name, low in (("audit_max_mb", 0.0), ("retention_s", 1.0)):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not low <= val <= 1e9 or math.isnan(val):
                raise bad(name, f"must be a number in [{low:g}, 1e9]")
        from ..routing.registry import ALGORITHMS

        if self.algorithm not in ALGORITHMS:
            raise bad("algorithm", f"is not a routing algorithm (known: {', '.join(sorted(ALGORITHMS))})")
        if not isinstance(self.algorithm_options, dict):
            raise bad("algorithm_options", "must be a table of option = value")
        known = set(ALGORITHMS[self.algorithm].options) - {"seed", "epsilon"}
        for name, val in self.algorithm_options.items():
            at = f"{flags['algorithm_options']} {name}={val}:" if flags and "algorithm_options" in flags else \
                f"{where}: [algorithm_options] {name!r}"
            if name not in known:
                raise InvalidRequest(f"{at} is not an option of {self.algorithm!r} that the service takes "
                                     f"(known: {', '.join(sorted(known)) or 'none'})")
            if not isinstance(val, (bool, int, float, str)):
                raise InvalidRequest(f"{at} {val!r} must be a boolean, number or text")
            kind = _option_kind(ALGORITHMS[self.algorithm].func, name)  # as its default is: a request would fail
            if kind is not None and not (isinstance(val, kind) and (kind is bool or not isinstance(val, bool))):
                raise InvalidRequest(f"{at} {val!r} must be {_KIND_WORDS.get(kind, 'a number')}")
        self.stock_config(flags=bool(flags and "stock" in flags))
        return self

    def _check_sharing(self, bad) -> None:
        """``sharing`` and ``tolerate`` (docs/kms.md, issue 40): ``xor`` with 0, or ``threshold`` with ``T >= 1``
        and reconstruction ``xor-all``."""
        t = self.tolerate
        if self.sharing not in ("xor", "threshold"):
            raise bad("sharing", "must be 'xor' or 'threshold'")
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 254:
            raise bad("tolerate", "must be a whole number of lost paths in 0..254")
        if self.sharing == "xor" and t:
            raise bad("tolerate", "needs sharing = 'threshold' (XOR needs every piece: it tolerates none)")
        if self.sharing == "threshold":
            if t < 1:
                raise bad("tolerate", "must be at least 1 with sharing = 'threshold' (0 is XOR)")
            if self.reconstruction != "xor-all":
                raise bad("reconstruction", "must be xor-all with sharing = 'threshold' (one part of all a "
                                            "segment's paths, shared k-of-m)")

    def stock_config(self, flags: bool = False):
        """The checked ``[stock]`` table (:class:`.stockconfig.StockConfig`), or None when no pair is stocked."""
        if not self.stock:
            return None
        from .stockconfig import parse_stock

        return parse_stock(self.stock, saes=self.saes, min_size=self.min_key_size, max_size=self.max_key_size,
                           where=str(self._dir / CONFIG_NAME), flags=flags)


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _option_kind(func, name: str):
    """The type a routing algorithm's option takes (that of its default; ints are numbers too where the default is
    a float), or ``None`` when its default tells none."""
    import inspect

    param = inspect.signature(func).parameters.get(name)
    kind = type(param.default) if param is not None else None
    return (int, float) if kind is float else kind if kind in _KIND_WORDS else None


DEVICE_FIELDS = ("a_sae", "b_sae", "a_url", "b_url", "ca", "a_cert", "a_key", "b_cert", "b_key", "key_size")


@dataclass(frozen=True)
class DeviceLink:
    """The ETSI 014 endpoints of one link's QKD devices (a ``[device_links."U|V"]`` table of ``kms.toml``).

    End *a* is the link's node ``U`` (it calls ``enc_keys``), end *b* is ``V``
    (it calls ``dec_keys``). Paths are relative to the service directory.
    """

    a_sae: str
    b_sae: str
    a_url: str
    b_url: str
    ca: str
    a_cert: str
    a_key: str
    b_cert: str
    b_key: str
    key_size: int = 256

    @classmethod
    def from_table(cls, name: str, table, where: str) -> "DeviceLink":
        if not isinstance(table, dict):
            raise InvalidRequest(f"{where}: [device_links.{name!r}] must be a table")
        unknown = sorted(set(table) - set(DEVICE_FIELDS))
        if unknown:
            raise InvalidRequest(f"{where}: [device_links.{name!r}]: unknown field(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(DEVICE_FIELDS)})")
        missing = [f for f in DEVICE_FIELDS[:-1] if f not in table]
        if missing:
            raise InvalidRequest(f"{where}: [device_links.{name!r}]: missing field(s) {', '.join(missing)}")
        for f in DEVICE_FIELDS[:-1]:
            if not isinstance(table[f], str) or not table[f]:
                raise InvalidRequest(f"{where}: [device_links.{name!r}]: {f} must be text")
        for f in ("a_url", "b_url"):
            if not table[f].startswith("https://"):
                raise InvalidRequest(f"{where}: [device_links.{name!r}]: {f}={table[f]!r} must be an https:// URL "
                                     "(the KME's base, without /api/v1/keys)")
        size = table.get("key_size", 256)
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
            raise InvalidRequest(f"{where}: [device_links.{name!r}]: key_size={size!r} must be a positive multiple of 8")
        return cls(**{**table, "key_size": size})


_TABLES = ("saes", "device_links", "algorithm_options", "stock")
_TOP = [f.name for f in fields(KmsConfig) if f.name not in ("_dir", *_TABLES)]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_config(directory: str | Path, cfg: KmsConfig) -> Path:
    """Write ``cfg`` to ``DIR/kms.toml``; returns the path."""
    d = Path(directory)
    lines = ["# qkdseg key service (docs/kms.md). Relative paths are relative to this directory.", ""]
    lines += [f"{name} = {_toml_value(getattr(cfg, name))}" for name in _TOP]
    lines += ["", "# SAE id = node id of the QKD node the SAE is attached to", "[saes]"]
    lines += [f"{json.dumps(sae)} = {json.dumps(str(node))}" for sae, node in cfg.saes.items()]
    if cfg.algorithm_options:
        lines += ["", "# options of the routing algorithm ('qkdseg algorithms' lists them)", "[algorithm_options]"]
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in cfg.algorithm_options.items()]
    if cfg.stock:
        lines += ["", "# key stocks: SAE pairs (MASTER:SLAVE) whose keys are relayed ahead of demand (docs/kms.md)",
                  "[stock]"]
        lines += [f"{k} = {json.dumps(v) if isinstance(v, list) else _toml_value(v)}" for k, v in cfg.stock.items()]
    if cfg.device_links:
        lines += ["", "# each link's QKD devices (ETSI 014): end a = the link's node U calls enc_keys, "
                  "end b = V calls dec_keys"]
        for name, table in cfg.device_links.items():
            lines += ["", f"[device_links.{json.dumps(name)}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path = d / CONFIG_NAME
    tmp = d / f".{CONFIG_NAME}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # whole or not at all
    return path


def load_config(directory: str | Path) -> KmsConfig:
    """Read and check ``DIR/kms.toml``.

    Raises
    ------
    InvalidRequest
        Naming the file and the field at fault: a missing file, bad TOML,
        an unknown or missing field, a value out of range.
    """
    d = Path(directory)
    path = d / CONFIG_NAME
    if not d.is_dir():
        raise InvalidRequest(f"{d}: not a key service directory (run 'qkdseg kms init {d} ...' first)")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if (d / "node.json").exists():
            raise InvalidRequest(f"{d}: a node's directory of a network of nodes (node.json), not a kms serve "
                                 "directory: 'qkdseg net status NETDIR' shows the network's processes") from None
        if (d / "nodes.json").exists():
            raise InvalidRequest(f"{d}: a network of nodes (nodes.json), not a kms serve directory: "
                                 f"'qkdseg net status {d}' shows its processes") from None
        raise InvalidRequest(f"{path}: no such file (run 'qkdseg kms init {d} ...' first)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequest(f"{path}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidRequest(f"{path}: not valid TOML: {err}") from None
    known = set(_TOP) | set(_TABLES)
    for name in raw:
        if name not in known:
            raise InvalidRequest(f"{path}: unknown field {name!r} (known: {', '.join(sorted(known))})")
    for name in ("network", "saes"):
        if name not in raw:
            raise InvalidRequest(f"{path}: missing field {name!r}")
    if not isinstance(raw["saes"], dict):
        raise InvalidRequest(f"{path}: field 'saes' must be a table of SAE id = node id")
    cfg = KmsConfig(**{**raw, "saes": {str(k): v for k, v in raw["saes"].items()}}, _dir=d)
    return cfg.check()
