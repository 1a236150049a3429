"""Route decisions per second of the trie router at 10, 1,000 and 10,000 rules on random topics.

Usage: python bench/route_bench.py [--seconds 1.0] [--seed 7]

Prints a table, then one JSON line. "uncached" is the honest figure: random topics over a large
topic space almost never repeat, so a live gateway's cache mostly helps its hot topics, which the
"cached, hot 1k" column shows.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Callable, Sequence

from meshgate.config import RouteRule
from meshgate.router import Router

REGIONS = ("us-west", "us-east", "eu-central", "eu-west", "ap-south", "ap-northeast", "sa-east", "af-south")
RULE_COUNTS = (10, 1_000, 10_000)
TOPIC_COUNT = 200_000


def _vocabulary(rnd: random.Random, size: int) -> list[str]:
    return [f"{rnd.choice(('svc', 'ev', 'dom', 'obj'))}-{i}" for i in range(size)]


def make_rules(rnd: random.Random, n: int, vocab: Sequence[str]) -> list[RouteRule]:
    rules = []
    for i in range(n):
        depth = rnd.randint(1, 6)
        levels = []
        for d in range(depth):
            roll = rnd.random()
            if 0 < d == depth - 1 and roll < 0.08:
                levels.append(">")
            elif roll < 0.05:
                levels.append("*")
            else:
                levels.append(rnd.choice(vocab))
        regions = tuple(rnd.sample(REGIONS, rnd.randint(1, 3)))
        rules.append(RouteRule(index=i, topic="/".join(levels), regions=regions))
    return rules


def make_topics(rnd: random.Random, n: int, vocab: Sequence[str]) -> list[str]:
    return ["/".join(rnd.choice(vocab) for _ in range(rnd.randint(1, 6))) for _ in range(n)]


def rate(route: Callable[[str, str], tuple[str, ...]], topics: Sequence[str], seconds: float) -> float:
    """Decisions per second over whole passes of ``topics`` (at least one), for about ``seconds``."""
    origins = REGIONS
    done = 0
    start = time.perf_counter()
    elapsed = 0.0
    chunk = 10_000
    i = 0
    while elapsed < seconds:
        batch = topics[i : i + chunk]
        if not batch:
            i = 0
            continue
        origin = origins[(i // chunk) % len(origins)]
        for topic in batch:
            route(topic, origin)
        done += len(batch)
        i += chunk
        elapsed = time.perf_counter() - start
    return done / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each measurement (default 1.0)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rnd = random.Random(args.seed)
    vocab = _vocabulary(rnd, 300)
    topics = make_topics(rnd, TOPIC_COUNT, vocab)
    hot = topics[:1_000] * (TOPIC_COUNT // 1_000)
    results = []
    print(f"{'rules':>7} {'matches/topic':>14} {'uncached/s':>12} {'cached random/s':>16} {'cached hot 1k/s':>16}")
    for n in RULE_COUNTS:
        rules = make_rules(rnd, n, vocab)
        uncached = Router(regions=REGIONS, rules=rules, cache_size=0)
        sample = topics[:2_000]
        matches = sum(len(uncached.matching_rules(t)) for t in sample) / len(sample)
        row = {
            "rules": n,
            "matching_rules_per_topic": round(matches, 2),
            "uncached": round(rate(uncached.route, topics, args.seconds)),
            "cached_random": round(rate(Router(regions=REGIONS, rules=rules).route, topics, args.seconds)),
            "cached_hot_1k": round(rate(Router(regions=REGIONS, rules=rules).route, hot, args.seconds)),
        }
        results.append(row)
        print(
            f"{n:>7,} {row['matching_rules_per_topic']:>14} {row['uncached']:>12,}"
            f" {row['cached_random']:>16,} {row['cached_hot_1k']:>16,}"
        )
    print(
        json.dumps(
            {
                "bench": "route",
                "unit": "decisions/s",
                "python": platform.python_version(),
                "seconds_per_run": args.seconds,
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
