"""Does field mapping generalise to schemas it was not built with, and does teaching help there?

Two data sets of public schemas (provenance and licences in the files and docs/learning.md):
- `shipped` (bench/data/schema_matching.json): 10 source/target pairs. Two folds, even and odd
  pairs swapping roles: the training pairs are taught, the held-out pairs measured.
- `families` (bench/data/schema_families.json): families of one target schema and three source
  variants each, built apart from the matcher. One tenant teaches variant 0 of every family; the
  held-out variants 1 and 2 are measured.

Teaching is what a user does in the console: the matcher proposes, and every proposal that differs
from the ground truth is corrected through the real learning engine (LearningCore on SQLite): a
wrong or missing target is set, a field mapped that has no counterpart is taught to have none.

Peers, on the same pairs, in the same run: Valentine's Coma, Cupid and SimilarityFlooding
(bench/peers.py, installed by bench/setup_eval.sh; `--no-peers` leaves them out). They do not learn.

Prints one JSON line per set and matcher: `bench: "learning_eval"`, `set`, `matcher`, `precision`,
`recall`, `f1_alone` (held-out pairs, nothing taught), `f1_after` (raytenant only, after teaching),
`precision_after`, `recall_after`, `ms_per_pair`, `pairs`, `correspondences`.

    python -m bench.learning_eval [--no-peers]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.learning.core import LearningCore
from bench.common import emit
from crews.field_mapping import acceptance, correction, map_fields
from crews.field_matcher import Field
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.patterns import PatternStore

DATA = Path(__file__).parent / "data" / "schema_matching.json"
FAMILIES = Path(__file__).parent / "data" / "schema_families.json"


def load_pairs() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text())["pairs"]


def load_families() -> list[dict[str, Any]]:
    """Each family's variants as pairs of the shipped set's shape, with their family's name."""
    pairs = []
    for family in json.loads(FAMILIES.read_text())["families"]:
        for number, variant in enumerate(family["variants"]):
            pairs.append({"family": family["family"], "variant": number, "source": variant["source"],
                          "target": family["target"], "source_fields": variant["source_fields"],
                          "target_fields": family["target_fields"], "matches": variant["matches"]})
    return pairs


def schema(fields: list[list[str]]) -> list[dict[str, str]]:
    return [{"name": name, "type": kind} for name, kind in fields]


def score(predicted: dict[str, str], gold: dict[str, str]) -> dict[str, float]:
    tp = sum(1 for s, t in predicted.items() if gold.get(s) == t)
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "predicted": len(predicted), "gold": len(gold), "precision": precision, "recall": recall, "f1": f1}


def micro(scores: list[dict[str, float]]) -> dict[str, float]:
    tp, predicted, gold = (sum(s[k] for s in scores) for k in ("tp", "predicted", "gold"))
    precision, recall = tp / predicted if predicted else 0.0, tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


class Tenant:
    """One tenant's learning engine, reached the way the ingress reaches a shard."""

    def __init__(self, core: LearningCore, name: str) -> None:
        self.core, self.name = core, name

    async def call(self, method: str, tenant: str, *args: Any) -> Any:
        return await getattr(self.core, method)(tenant, *args)

    async def map(self, pair: dict[str, Any]) -> dict[str, str]:
        result = await map_fields(self.call, self.name, schema(pair["source_fields"]), schema(pair["target_fields"]),
                                  pair["source"]["name"])
        return {m["source_field"]: m["target_field"] for m in result["mappings"]}

    async def teach(self, pair: dict[str, Any]) -> int:
        """Review every proposal of this pair against the ground truth, as a user in the console
        would: a right one is accepted (a success), a wrong or missing target is set, and a field
        mapped that has no counterpart is unmapped (taught as "no counterpart")."""
        proposed = await self.map(pair)
        items = []
        for source, kind in pair["source_fields"]:
            was, right = proposed.get(source), pair["matches"].get(source)
            if was != right:
                items.append(correction(Field(source, kind), was, right, pair["source"]["name"]))
            elif right is not None:
                items.append(acceptance(Field(source, kind), right, pair["source"]["name"]))
        if items:
            await self.core.learn(self.name, items)
        return len(items)


async def evaluate(tenant: Tenant, pairs: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """Micro-averaged scores over the pairs, and the mean milliseconds per pair."""
    started = time.perf_counter()
    scores = [score(await tenant.map(p), p["matches"]) for p in pairs]
    return micro(scores), (time.perf_counter() - started) * 1000 / len(pairs)


def folds(name: str, pairs: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(taught, held out) splits of a set."""
    if name == "shipped":
        return [(pairs[0::2], pairs[1::2]), (pairs[1::2], pairs[0::2])]
    return [([p for p in pairs if p["variant"] == 0], [p for p in pairs if p["variant"] != 0])]


async def raytenant(url: str, name: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    engine = create_engine(url)
    alone, after, elapsed, held = [], [], [], []
    for number, (taught, held_out) in enumerate(folds(name, pairs)):
        tenant = Tenant(LearningCore(PatternStore(engine)), f"eval-{name}-{number}")
        scores, ms = await evaluate(tenant, held_out)
        alone.append(scores)
        elapsed.append(ms)
        for pair in taught:
            await tenant.teach(pair)
        after.append((await evaluate(tenant, held_out))[0])
        held += held_out
    await engine.dispose()
    mean = lambda rows, key: round(sum(r[key] for r in rows) / len(rows), 4)  # noqa: E731
    return {"precision": mean(alone, "precision"), "recall": mean(alone, "recall"), "f1_alone": mean(alone, "f1"),
            "f1_after": mean(after, "f1"), "precision_after": mean(after, "precision"),
            "recall_after": mean(after, "recall"), "ms_per_pair": round(sum(elapsed) / len(elapsed), 2),
            "pairs": len(held), "correspondences": sum(len(p["matches"]) for p in held)}


def peer(matcher: str, name: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """A peer on the held-out pairs of every fold (it learns nothing, so f1_after is null)."""
    from bench import peers

    held = [p for _, held_out in folds(name, pairs) for p in held_out]
    started = time.perf_counter()
    found = peers.match_many(matcher, [(p["source_fields"], p["target_fields"]) for p in held])
    ms = (time.perf_counter() - started) * 1000 / len(held)
    scores = micro([score(predicted, p["matches"]) for predicted, p in zip(found, held)])
    return {"precision": scores["precision"], "recall": scores["recall"], "f1_alone": scores["f1"], "f1_after": None,
            "ms_per_pair": round(ms, 2), "pairs": len(held), "correspondences": sum(len(p["matches"]) for p in held)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-peers", action="store_true", help="measure raytenant only")
    args = parser.parse_args()
    sets = {"shipped": load_pairs(), "families": load_families()}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/eval.db"
        upgrade(url)
        for name, pairs in sets.items():
            emit({"bench": "learning_eval", "set": name, "matcher": "raytenant", **asyncio.run(raytenant(url, name, pairs))})
            if args.no_peers:
                continue
            from bench.peers import PEERS

            for matcher in PEERS:
                emit({"bench": "learning_eval", "set": name, "matcher": matcher, **peer(matcher, name, pairs)})


if __name__ == "__main__":
    main()
