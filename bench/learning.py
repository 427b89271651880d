"""Learning engine benchmark: recommendation latency and learning throughput at 1k, 10k and 100k
patterns for one tenant, against the original algorithm in the same run.

- learning: patterns learned per second through LearningCore in batches of --batch (durable: each
  batch is committed to the database before it is acknowledged), until the tenant holds N patterns;
- recommendation: p50/p99 latency of --queries recommendation calls (similar contexts, threshold
  0.7, top 5) at N patterns;
- baseline: the original's query (fit a TfidfVectorizer over the context and the latest 100
  patterns, cosine similarity) on the same queries; it never looks beyond 100 patterns;
- mapping: a field mapping of 10 source to 10 target fields of the data (crews.field_mapping, as
  POST /v1/mappings runs it) given only the lessons that decide these fields (the shard's
  `mapping_lessons`), against one given the tenant's 5,000 most trusted corrections from a scan of
  all its patterns (an earlier path), in the same run; each path's mapping is compared with the
  mapping every one of the tenant's corrections gives (`*_exact`).

One JSON line per size, then the summary.

    python -m bench.learning                  # 1k, 10k, 100k (a few minutes)
    python -m bench.learning --sizes 1000,10000
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from actors.learning.core import LearningCore, LearningOptions, context_text
from bench.common import bench_database, emit, percentile
from crews.field_mapping import map_fields
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.patterns import PatternStore

WORDS = [f"{a}{b}" for a in ("cust", "acct", "ord", "inv", "prod", "emp", "addr", "ship", "pay", "txn")
         for b in ("id", "nm", "no", "dt", "amt", "cd", "ty", "st", "ref", "qty", "ln1", "ln2", "ctry", "zip")]
ENTITIES = [f"entity{i}" for i in range(400)]
SYSTEMS = [f"system{i}" for i in range(40)]


def make_item(rng: random.Random, i: int) -> dict[str, Any]:
    source = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i % 997}"
    context = {"source_field": source, "entity": rng.choice(ENTITIES), "system": rng.choice(SYSTEMS),
               "source_type": rng.choice(["string", "integer", "date", "decimal"])}
    return {"type": "correction", "original": {"source_field": source, "target_field": rng.choice(WORDS)},
            "corrected": {"source_field": source, "target_field": rng.choice(WORDS) + "_x"}, "context": context}


def original_query(context: dict[str, Any], latest: list[str]) -> list[tuple[int, float]]:
    """The original algorithm, verbatim in effect: refit over the query and the latest 100 patterns."""
    vectorizer = TfidfVectorizer(max_features=1000, stop_words="english")
    vectors = vectorizer.fit_transform([context_text(context)] + latest)
    similarities = cosine_similarity(vectors[0], vectors[1:])[0]
    found = [(i, s) for i, s in enumerate(similarities) if s >= 0.7]
    return sorted(found, key=lambda x: -x[1])[:5]


async def mapping_costs(core: LearningCore, tenant: str, rng: random.Random, items: list[dict[str, Any]],
                        rounds: int) -> dict[str, Any]:
    picked = rng.sample(items, 20)
    sources = {item["corrected"]["source_field"]: "string" for item in picked[:10]}
    targets = {item["corrected"]["target_field"]: "string" for item in picked[10:]}

    def learning(most_trusted: int | None = None):
        """A mapping's learning calls, in this process; with `most_trusted`, its lessons are that
        many of the tenant's most trusted corrections instead of the ones `mapping_lessons` selects."""
        async def call(method: str, who: str, *args: Any) -> Any:
            if method == "mapping_lessons" and most_trusted is not None:
                return await core.corrections(who, most_trusted)
            return await getattr(core, method)(who, *args)
        return call

    indexed, scanned = learning(), learning(5_000)
    truth = await map_fields(learning(len(items)), tenant, sources, targets)  # every correction

    times: dict[str, list[float]] = {"indexed": [], "scanned": []}
    answers: dict[str, Any] = {}
    for _ in range(rounds):
        for name, via in (("indexed", indexed), ("scanned", scanned)):
            began = time.perf_counter()
            answers[name] = await map_fields(via, tenant, sources, targets)
            times[name].append((time.perf_counter() - began) * 1000)
    p50 = {name: percentile(found, 0.5) for name, found in times.items()}
    return {"mapping_p50_ms": round(p50["indexed"], 2), "mapping_scan_p50_ms": round(p50["scanned"], 2),
            "mapping_speedup_vs_scan": round(p50["scanned"] / p50["indexed"], 2),
            "mapping_exact": answers["indexed"] == truth, "mapping_scan_exact": answers["scanned"] == truth}


async def run(args, database: str) -> None:
    engine = create_engine(database)
    core = LearningCore(PatternStore(engine), LearningOptions())
    tenant = f"bench-learning-{int(time.time())}"
    rng = random.Random(11)
    items: list[dict[str, Any]] = []
    results = []
    for size in sorted(int(s) for s in args.sizes.split(",")):
        fresh = [make_item(rng, len(items) + i) for i in range(size - len(items))]
        started = time.perf_counter()
        for start in range(0, len(fresh), args.batch):
            await core.learn(tenant, fresh[start : start + args.batch])
        learn_s = time.perf_counter() - started
        learned_per_s = len(fresh) / learn_s if fresh else 0.0
        items += fresh
        queries = [dict(rng.choice(items)["context"]) for _ in range(args.queries)]
        for q in queries[: args.queries // 2]:
            q["system"] = rng.choice(SYSTEMS)  # half are near, not exact, matches
        mine, hits = [], 0
        for q in queries:
            began = time.perf_counter()
            hits += bool(await core.recommendations(tenant, q))
            mine.append((time.perf_counter() - began) * 1000)
        latest = [core.tenants.peek(tenant).by_row[i].text for i in range(max(0, size - 100), size)]
        base = []
        for q in queries[: args.baseline_queries]:
            began = time.perf_counter()
            original_query(q, latest)
            base.append((time.perf_counter() - began) * 1000)
        row = {
            "bench": "learning", "patterns": size, "batch": args.batch,
            "learned_per_s": round(learned_per_s, 1),
            "recommend_p50_ms": round(percentile(mine, 0.5), 3), "recommend_p99_ms": round(percentile(mine, 0.99), 3),
            "queries_with_recommendations": hits, "queries": len(queries),
            "original_p50_ms": round(percentile(base, 0.5), 3), "original_p99_ms": round(percentile(base, 0.99), 3),
            "original_patterns_considered": min(size, 100),
            "p99_ratio_vs_original": round(percentile(mine, 0.99) / percentile(base, 0.99), 3),
            "index_refits": core.tenants.peek(tenant).index.refits,
            **await mapping_costs(core, tenant, rng, items, args.mapping_rounds),
        }
        emit(row)
        results.append(row)
    reload_started = time.perf_counter()
    restarted = LearningCore(PatternStore(engine), LearningOptions())
    await restarted.recommendations(tenant, dict(items[0]["context"]))
    largest = results[-1]
    emit({
        "bench": "learning_summary", "largest": largest["patterns"],
        "recommend_p99_ms": largest["recommend_p99_ms"], "target_p99_ms": 10.0,
        "learned_per_s_min": min(r["learned_per_s"] for r in results), "target_learned_per_s": 1000,
        "restart_rebuild_s": round(time.perf_counter() - reload_started, 2),
        "database": database.split("://", 1)[0],
    })
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--baseline-queries", type=int, default=200)
    parser.add_argument("--mapping-rounds", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    database = bench_database(args.database_url)
    upgrade(database)
    asyncio.run(run(args, database))


if __name__ == "__main__":
    main()
