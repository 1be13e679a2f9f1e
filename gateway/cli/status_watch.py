"""``mragw status --watch``: a live view of each partner's catch-up, refreshed until Ctrl-C.

For each partner: entries stored and verified (signature-checked, usable in answers) against
the partner's newest checkpoint size we have seen, the verification rate over the last
refreshes, and the time left at that rate. Read from the running gateway's admin API when one
runs (``--target`` or the runtime file), else from the database, exactly as ``mragw status``.

On a terminal the view redraws in place (Rich Live). Elsewhere each refresh prints one plain
line per partner, so ``mragw status --watch > catchup.log`` keeps a readable record. ``--json``
is refused with ``--watch``: a ``--json`` command prints exactly one document.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.cli.conventions import emit_text
from gateway.node import Node

#: Refreshes the rate is averaged over (a sliding window: the rate follows bursts and stalls).
RATE_WINDOW = 10

#: Where a refresh's report comes from: the running gateway, else the database.
StatusFetch = Callable[[Node], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class PartnerProgress:
    admin: str
    state: str
    stored: int
    verified: int
    target: int
    rate: float | None  # entries verified per second, None until two samples
    eta_s: float | None  # None: unknown (no rate yet) or nothing left

    @property
    def fraction(self) -> float:
        return 1.0 if self.target == 0 else min(1.0, self.verified / self.target)


def partner_state(p: Mapping[str, Any]) -> str:
    if p["quarantined"]:
        return "quarantined"
    if p["suspended"]:
        return "suspended"
    return "connected" if p["connected"] else "not connected"


class CatchUp:
    """Per-partner samples of (time, verified entries), turned into a rate and an ETA."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self._window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def update(self, report: Mapping[str, Any], now: float) -> list[PartnerProgress]:
        out = []
        for p in report["partners"]:
            stored = int(p["entries"])
            verified = max(0, stored - int(p.get("unverified") or 0))
            # The partner's newest checkpoint we saw; what we store can be ahead of a stale one.
            target = max(int(p["tree_size"]), stored)
            samples = self._samples.setdefault(p["admin"], deque(maxlen=self._window))
            if samples and verified < samples[-1][1]:
                samples.clear()  # the replica was reset (partner removed and re-pinned)
            samples.append((now, verified))
            rate = _rate(samples)
            left = target - verified
            eta = left / rate if rate and left > 0 else None
            out.append(
                PartnerProgress(p["admin"], partner_state(p), stored, verified, target, rate, eta)
            )
        return out


def _rate(samples: deque[tuple[float, int]]) -> float | None:
    if len(samples) < 2:
        return None
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    return (v1 - v0) / (t1 - t0) if t1 > t0 else None


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}/s"


def plain_lines(admin: str, log_size: int, rows: list[PartnerProgress], at: float) -> list[str]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    lines = [f"{stamp} {admin}: log size {log_size}"]
    lines.extend(
        f"{stamp}   {r.admin}: {r.state}, verified {r.verified}/{r.target} "
        f"({r.fraction:.1%}), stored {r.stored}, rate {format_rate(r.rate)}, "
        f"eta {format_eta(r.eta_s)}"
        for r in rows
    )
    return lines


def live_table(admin: str, log_size: int, rows: list[PartnerProgress]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(
        title=f"{admin}: log size {log_size} (Ctrl-C to stop)", title_justify="left", expand=False
    )
    for name in ("partner", "state", "verified", "stored", "partner size", "", "rate", "ETA"):
        table.add_column(name, justify="left" if name in ("partner", "state", "") else "right")
    for r in rows:
        table.add_row(
            r.admin,
            r.state,
            f"{r.verified:,}",
            f"{r.stored:,}",
            f"{r.target:,}",
            ProgressBar(total=100, completed=r.fraction * 100, width=24),
            format_rate(r.rate),
            format_eta(r.eta_s),
        )
    if not rows:
        table.add_row("(no partners)", "", "", "", "", "", "", "")
    return table


async def watch_status(node: Node, fetch: StatusFetch, interval: float, *, live: bool) -> None:
    """Refresh every ``interval`` seconds until cancelled (Ctrl-C)."""
    catch_up = CatchUp()
    if not live:
        while True:
            report = await fetch(node)
            now = time.time()
            rows = catch_up.update(report, now)
            emit_text("\n".join(plain_lines(report["admin"], report["log_size"], rows, now)))
            await asyncio.sleep(interval)
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(), auto_refresh=False, transient=False) as view:
        while True:
            report = await fetch(node)
            rows = catch_up.update(report, time.time())
            view.update(live_table(report["admin"], report["log_size"], rows), refresh=True)
            await asyncio.sleep(interval)
