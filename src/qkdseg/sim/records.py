"""What a :class:`~qkdseg.sim.Simulation` records, and the tables it gives (docs/model.md section 9).

Per request: its outcome code, end time, securities, consumption and tries,
and why it was not served; per time-series sample: the queue's length, every
link's level and the count of pools in each state. :class:`Records` turns
them into the DataFrames of ``requests.parquet``, ``timeseries.parquet`` and
``levels.parquet``, and the pools table.
"""

from __future__ import annotations

import numpy as np

from ..keys.levels import STATES

#: Outcome codes of :attr:`Simulation.outcome`.
PENDING, WAITING, BLOCKED, SERVED = -2, -1, 0, 1
OUTCOMES = {PENDING: "pending", WAITING: "waiting", BLOCKED: "blocked", SERVED: "served"}
#: Why a request was not served (its last try): ``few_paths`` a route with a segment of ``m <= T`` paths under
#: threshold sharing; ``failed`` a run that lost a relay it could not do without (``relay_failure``; its bits spent).
REASONS = ("", "no_route", "epsilon", "short", "few_paths", "failed")
NO_ROUTE, EPSILON, SHORT, FEW_PATHS, FAILED = 1, 2, 3, 4, 5


def _binned(sample_times: np.ndarray, k: int, times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Count (or sum ``weights`` of) ``times`` per time-series interval, over the first ``k`` intervals."""
    b = np.searchsorted(sample_times, times, side="right")
    b = np.minimum(b, len(sample_times) - 1)
    keep = b < k
    return np.bincount(b[keep], weights=None if weights is None else weights[keep], minlength=k)[:k]


class Records:
    """The per-request records and per-sample snapshots of a run, and their tables (a mixin of ``Simulation``)."""

    def _start_records(self, n: int) -> None:
        """Empty records for ``n`` requests, no snapshot yet."""
        self.outcome = np.full(n, PENDING, dtype=np.int8)
        self.end_time = np.full(n, np.nan)
        self.security = np.full(n, np.nan)
        self.route_security = np.full(n, np.nan)
        self.consumed = np.zeros(n, dtype=np.int64)
        self.keys = np.zeros(n, dtype=np.int32)
        self.segments = np.zeros(n, dtype=np.int32)
        self.paths = np.zeros(n, dtype=np.int32)
        self.hops = np.zeros(n, dtype=np.int32)
        self.tries = np.zeros(n, dtype=np.int32)
        self.reason = np.zeros(n, dtype=np.int8)
        self.snap_queued: list[int] = []
        self.snap_level: list[np.ndarray] = []
        self.snap_states: list[np.ndarray] = []

    def _node_ids(self, idx: np.ndarray):
        ids = self.arrays.node_ids
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
            return np.asarray(ids, dtype=np.int64)[idx]
        return np.asarray([str(v) for v in ids], dtype=object)[idx]

    def requests_frame(self):
        """One row per request that has arrived (docs/model.md section 9: the columns of ``requests.parquet``)."""
        import pandas as pd

        req = self.requests
        n = self._next
        sl = slice(0, n)
        served = self.outcome[sl] == SERVED
        end = self.end_time[sl]
        return pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * n, dtype=object),
            "request": np.arange(n, dtype=np.int64),
            "arrival": req.t[sl],
            "source": self._node_ids(req.src[sl]),
            "destination": self._node_ids(req.dst[sl]),
            "key_bits": req.key_bits[sl],
            "epsilon": req.epsilon[sl],
            "seed": req.seed[sl],
            "outcome": pd.Series([OUTCOMES[int(o)] for o in self.outcome[sl]], dtype=object),
            "served": served,
            "service_time": np.where(served, end, np.nan),
            "end_time": end,
            "wait": np.where(served, end - req.t[sl], np.nan),
            "security": self.security[sl],
            "route_security": self.route_security[sl],
            "consumed_bits": self.consumed[sl],
            "keys": self.keys[sl],
            "segments": self.segments[sl],
            "paths": self.paths[sl],
            "hops": self.hops[sl],
            "tries": self.tries[sl],
            "reason": pd.Series([REASONS[int(r)] if o != SERVED else "" for r, o in zip(self.reason[sl], self.outcome[sl])],
                                dtype=object),
        })

    def timeseries_frame(self):
        """One row per finished interval (docs/model.md section 9: the columns of ``timeseries.parquet``)."""
        import pandas as pd

        k = self._k
        ends = self.sample_times[:k]
        starts = np.concatenate([[0.0], self.sample_times[: max(k - 1, 0)]])[:k]
        req = self.requests
        n = self._next
        out = self.outcome[:n]
        end = self.end_time[:n]
        served = out == SERVED
        blocked = out == BLOCKED
        levels = np.array(self.snap_level[:k], dtype=np.float64).reshape(k, -1)
        states = np.array(self.snap_states[:k], dtype=np.int64).reshape(k, len(STATES))
        m = max(self.arrays.n_links, 1)
        st = self.sample_times
        served_bits = _binned(st, k, end[served], req.key_bits[:n][served].astype(np.float64)).astype(np.int64)
        df = pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * k, dtype=object),
            "interval": np.arange(k, dtype=np.int64),
            "t_start": starts,
            "t_end": ends,
            "offered": _binned(st, k, req.t[:n]).astype(np.int64),
            "served": _binned(st, k, end[served]).astype(np.int64),
            "blocked": _binned(st, k, end[blocked]).astype(np.int64),
            "queued": np.array(self.snap_queued[:k], dtype=np.int64),
            "served_key_bits": served_bits,
            "served_key_bps": served_bits / np.maximum(ends - starts, 1e-300),
            "mean_level_bits": levels.mean(axis=1) if levels.size else np.zeros(k),
        })
        for i, name in enumerate(STATES):
            df[f"share_{name.lower()}"] = states[:, i] / m
        return df

    def levels_frame(self):
        """Every link's level at every sample (long form: ``algorithm, t, link, level_bits``), for the heat map."""
        import pandas as pd

        k = self._k
        m = self.arrays.n_links
        lv = np.array(self.snap_level[:k], dtype=np.int64).reshape(k, m)
        return pd.DataFrame({
            "algorithm": pd.Series([self.algorithm] * (k * m), dtype=object),
            "t": np.repeat(self.sample_times[:k], m),
            "link": np.tile(np.arange(m, dtype=np.int64), k),
            "level_bits": lv.reshape(-1),
        })

    def pools(self):
        """The pools now: ``link, u, v, level_bits, capacity_bits, rate_bps, consumed_bits, state``."""
        import pandas as pd

        self._settle_states()
        a = self.arrays
        return pd.DataFrame({
            "link": np.arange(a.n_links, dtype=np.int64),
            "u": self._node_ids(a.edge_u),
            "v": self._node_ids(a.edge_v),
            "level_bits": self.levels.level.copy(),
            "capacity_bits": self.levels.capacity.copy(),
            "rate_bps": self.rate.copy(),
            "consumed_bits": self.levels.consumed.copy(),
            "state": pd.Series([STATES[s] for s in self.state], dtype=object),
        })
