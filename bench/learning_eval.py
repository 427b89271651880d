"""Does learning from corrections improve field mapping on schemas it has not seen?

Data: bench/data/schema_matching.json, 10 source/target pairs built from public schemas (their
provenance and licences are in the file and in docs/learning.md), 131 ground-truth correspondences.

Protocol (2 folds: even and odd pairs swap roles):
1. Held-out pairs are mapped by the FieldMatcher with nothing learned: precision, recall and F1
   of the top-1 mappings against the ground truth.
2. Training pairs are taught one at a time, as a user would in the console: the matcher proposes
   mappings with what it has learned so far, and every proposal that differs from the ground truth
   is corrected through the real learning engine (LearningCore on a SQLite database).
3. After each training pair, the held-out pairs are mapped again. The curve is printed as one JSON
   line per point; the last line is the summary. The held-out pairs are never taught.

    python -m bench.learning_eval
"""
from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from actors.learning import LearningCore
from bench.common import emit
from crews.field_mapping import correction, map_fields
from crews.field_matcher import Field
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.patterns import PatternStore

DATA = Path(__file__).parent / "data" / "schema_matching.json"


def load_pairs() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text())["pairs"]


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
        """Correct every proposal of this pair that differs from the ground truth."""
        proposed = await self.map(pair)
        types = dict((name, kind) for name, kind in pair["source_fields"])
        items = [correction(Field(source, types[source]), proposed.get(source), target, pair["source"]["name"])
                 for source, target in pair["matches"].items() if proposed.get(source) != target]
        if items:
            await self.core.learn(self.name, items)
        return len(items)


async def evaluate(tenant: Tenant, pairs: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, float]]]:
    scores = [score(await tenant.map(p), p["matches"]) for p in pairs]
    return micro(scores), scores


async def run(url: str) -> None:
    pairs = load_pairs()
    folds = [(pairs[0::2], pairs[1::2]), (pairs[1::2], pairs[0::2])]
    engine = create_engine(url)
    curves: list[list[dict[str, Any]]] = []
    for number, (train, test) in enumerate(folds):
        tenant = Tenant(LearningCore(PatternStore(engine)), f"eval-fold-{number}")
        curve = []
        taught = 0
        for k in range(len(train) + 1):
            if k:
                taught += await tenant.teach(train[k - 1])
            held_out, _ = await evaluate(tenant, test)
            point = {"bench": "learning_eval", "fold": number, "training_pairs_taught": k,
                     "corrections_taught": taught, "held_out_pairs": len(test), **held_out}
            emit(point)
            curve.append(point)
        curves.append(curve)
    await engine.dispose()
    before = [c[0]["f1"] for c in curves]
    after = [c[-1]["f1"] for c in curves]
    emit({
        "bench": "learning_eval_summary",
        "pairs": len(pairs),
        "correspondences": sum(len(p["matches"]) for p in pairs),
        "curve_mean_f1": [round(statistics.mean(c[k]["f1"] for c in curves), 4) for k in range(len(curves[0]))],
        "held_out_f1_matcher_alone": round(statistics.mean(before), 4),
        "held_out_f1_after_learning": round(statistics.mean(after), 4),
        "f1_gain": round(statistics.mean(after) - statistics.mean(before), 4),
        "per_fold": [{"fold": i, "before": b, "after": a} for i, (b, a) in enumerate(zip(before, after))],
    })


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/eval.db"
        upgrade(url)
        asyncio.run(run(url))


if __name__ == "__main__":
    main()
