"""Benchmark of Recogniser.check: answers per second on one core.

    .venv/bin/python bench/bench_registry.py [--questions N] [--seed S] [--markdown]

Runs random (valid) questions over the real dataset and over a synthetic world of 200
administrations, 5 unions and 2,000 arrangements generated deterministically from the seed,
next to a raw baseline (a dict lookup and a function call per question) measured in the same
run. Goal: >= 100,000 answers/s, and the synthetic world no more than 2x slower than the real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from registry.dataset import default_dataset, parse_dataset
from registry.iso3166 import OFFICIALLY_ASSIGNED
from registry.model import MODES
from registry.resolver import Recogniser

Question = tuple[str, str, str, date, str | None, bool]


def synthetic_world(seed: int, administrations: int = 200, unions: int = 5,
                    arrangements: int = 2000) -> dict[str, Any]:
    rng = random.Random(seed)
    codes = sorted(rng.sample(sorted(OFFICIALLY_ASSIGNED), administrations))
    union_codes = [f"UN{chr(ord('A') + n)}" for n in range(unions)]
    members = rng.sample(codes, unions * 10)
    union_docs = []
    for n, code in enumerate(union_codes):
        group = members[n * 10:(n + 1) * 10]
        union_docs.append({
            "code": code, "name": f"union {code}",
            "programme": {"id": f"{code}-AEO", "types": ["AEOC", "AEOS", "AEOF"],
                          "since": f"{rng.randint(2000, 2015)}-01-01"},
            "members": [{"code": m, "from": f"{rng.randint(1990, 2020)}-0{rng.randint(1, 9)}",
                         "until": None if rng.random() < 0.8 else
                         f"{rng.randint(2021, 2030)}-01-01"} for m in group],
        })
    programmes = [{"administration": c, "id": f"{c}-P", "types": ["GOLD", "SILVER"]}
                  for c in rng.sample([c for c in codes if c not in members], 40)]
    typed = {p["administration"]: p["types"] for p in programmes}
    parties_pool = [*codes, *union_codes]

    def day() -> str:
        d = date(2000, 1, 1) + timedelta(days=rng.randint(0, 30 * 365))
        return d.isoformat() if rng.random() < 0.8 else d.isoformat()[:7]

    docs: list[dict[str, Any]] = []
    for n in range(arrangements):
        roll = rng.random()
        if roll < 0.9:
            parties = rng.sample(parties_pool, 2)
            doc: dict[str, Any] = {"id": f"S{n}", "kind": "bilateral", "parties": parties}
        elif roll < 0.97:
            parties = rng.sample(codes, rng.randint(3, 8))
            doc = {"id": f"S{n}", "kind": "plurilateral", "parties": parties}
        else:
            parties = rng.sample(codes, 6)
            doc = {"id": f"S{n}", "kind": "bloc_to_bloc", "parties": parties,
                   "sides": [parties[:3], parties[3:]]}
        doc["signed"] = day() if rng.random() < 0.9 else None
        doc["effective"] = day() if rng.random() < 0.6 else None
        if rng.random() < 0.1:
            doc["terminated"] = day()
        if doc["kind"] == "bilateral" and rng.random() < 0.1:
            a, b = parties
            doc["directions"] = {f"{a}<-{b}": day(), f"{b}<-{a}": day()}
        if rng.random() < 0.1:
            doc["modes"] = {m: day() for m in rng.sample(MODES, rng.randint(1, 4))}
        if rng.random() < 0.05:
            doc["suspensions"] = [{"from": "2020-01-01", "until": "2021-01-01"}]
        scoped = [p for p in parties if p in typed]
        if scoped and rng.random() < 0.5:
            doc["recognised_types"] = {scoped[0]: ["GOLD"]}
        docs.append(doc)
    return {"programmes": programmes, "unions": union_docs, "arrangements": docs}


def questions(recogniser: Recogniser, count: int, seed: int) -> list[Question]:
    rng = random.Random(seed)
    dataset = recogniser.dataset
    codes = sorted({p for a in dataset.arrangements for p in a.parties}
                   | {m.code for u in dataset.unions for m in u.members})
    result: list[Question] = []
    for _ in range(count):
        issuer = rng.choice(codes)
        day = date(2000, 1, 1) + timedelta(days=rng.randint(0, 30 * 365))
        _, types = recogniser.programme_types(issuer, day)
        mode = rng.choice((None, None, *MODES))
        result.append((rng.choice(codes), issuer, rng.choice(types), day, mode,
                       rng.random() < 0.1))
    return result


def rate(fn: Callable[[list[Question]], None], qs: list[Question], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(qs)
        best = min(best, time.perf_counter() - start)
    return len(qs) / best


def run_checks(recogniser: Recogniser) -> Callable[[list[Question]], None]:
    check = recogniser.check

    def loop(qs: list[Question]) -> None:
        for r, i, t, d, m, s in qs:
            check(r, i, t, d, mode=m, strict=s)

    return loop


def run_baseline(qs: list[Question]) -> None:
    table = {(r, i): len(r) for r, i, *_ in qs}

    def answer(r: str, i: str, t: str, d: date, *, m: str | None, s: bool) -> int:
        return table.get((r, i), 0)

    for r, i, t, d, m, s in qs:
        answer(r, i, t, d, m=m, s=s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    started = time.perf_counter()
    real = Recogniser(default_dataset())
    real_build = time.perf_counter() - started
    world = synthetic_world(args.seed)
    data = json.dumps(world).encode()
    started = time.perf_counter()
    synthetic = Recogniser(parse_dataset(data, "synthetic"))
    synthetic_build = time.perf_counter() - started

    real_qs = questions(real, args.questions, args.seed)
    synthetic_qs = questions(synthetic, args.questions, args.seed)
    recognised_real = sum(real.check(*q[:4], mode=q[4], strict=q[5]).recognised
                          for q in real_qs[:20_000])
    recognised_syn = sum(synthetic.check(*q[:4], mode=q[4], strict=q[5]).recognised
                         for q in synthetic_qs[:20_000])

    baseline = rate(run_baseline, real_qs)
    real_rate = rate(run_checks(real), real_qs)
    synthetic_rate = rate(run_checks(synthetic), synthetic_qs)
    rows = [
        ("raw baseline (dict lookup + call)", baseline, ""),
        (f"real dataset ({len(real.dataset.arrangements)} arrangements)", real_rate,
         f"{recognised_real / 200:.1f}% recognised"),
        (f"synthetic (200 admins, 5 unions, {len(synthetic.dataset.arrangements)} arr.)",
         synthetic_rate, f"{recognised_syn / 200:.1f}% recognised"),
    ]
    lines = [
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{platform.processor() or 'cpu'}; {os.cpu_count()} cpus, pinned to one; "
        f"{args.questions:,} random questions per world, best of 5 runs; seed {args.seed}",
        f"index build: real {real_build * 1000:.1f} ms, synthetic {synthetic_build * 1000:.1f} ms",
        "",
        "| run | answers/s | µs/answer | note |",
        "|---|---:|---:|---|",
    ]
    lines.extend(f"| {name} | {r:,.0f} | {1e6 / r:.2f} | {note} |" for name, r, note in rows)
    slowdown = real_rate / synthetic_rate
    lines += [
        "",
        f"synthetic/real slowdown: {slowdown:.2f}x (goal <= 2x); "
        f"check cost vs baseline: {baseline / real_rate:.1f}x (real), "
        f"{baseline / synthetic_rate:.1f}x (synthetic)",
        f"goal >= 100,000 answers/s: real {'met' if real_rate >= 100_000 else 'NOT met'}, "
        f"synthetic {'met' if synthetic_rate >= 100_000 else 'NOT met'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
