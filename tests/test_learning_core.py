"""The learning engine's state logic and vector index on the real databases, without Ray."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity
from sqlalchemy import select

from actors.learning.core import LearningCore, LearningError, LearningOptions, context_text, flatten, pattern_text
from actors.learning.pattern_index import PatternIndex
from storage.engine import create_engine
from storage.models import PatternRow
from storage.patterns import PatternStore

CONTEXT = {"source_field": "cust_id", "table": "customers", "system": "crm"}


@pytest.fixture
async def engine(db_url):
    found = create_engine(db_url)
    yield found
    await found.dispose()


def core_on(engine, **options) -> LearningCore:
    return LearningCore(PatternStore(engine), LearningOptions(**options))


async def test_original_case_correction_is_recommended_for_a_similar_context(engine, tenant):
    core = core_on(engine)
    learned = await core.learn_from_correction(
        tenant, {"field_mapping": "cust_id -> customer_name"}, {"field_mapping": "cust_id -> customer_id"}, CONTEXT)
    assert learned["confidence"] == 0.95 and learned["merged"] is False and learned["type"] == "correction"
    await core.learn_from_success(tenant, {"mapped": 12, "status": "ok"}, {"table": "orders", "system": "erp"})
    [rec] = await core.recommendations(tenant, dict(CONTEXT))
    assert rec["type"] == "correction_recommendation" and rec["confidence"] > 0.5
    assert rec["recommendation"] == {"field_mapping": "cust_id -> customer_id"}
    assert rec["pattern_id"] == learned["pattern_id"] and "similarity" in rec["reasoning"]
    assert rec["confidence"] == pytest.approx(rec["similarity"] * 0.95, abs=1e-6)
    [success] = await core.recommendations(tenant, {"table": "orders", "system": "erp"}, 0.5)
    assert success["type"] == "success_recommendation" and success["recommendation"]["mapped"] == 12
    assert success["confidence"] == pytest.approx(success["similarity"] * 0.8, abs=1e-6)
    assert await core.recommendations(tenant, {"weather": "sunny"}) == []
    # A lower threshold admits weaker matches; limit caps the answer.
    assert len(await core.recommendations(tenant, {"table": "customers"}, 0.1, 1)) == 1


async def test_identical_corrections_merge_and_feedback_moves_confidence(engine, tenant):
    core = core_on(engine)
    first = await core.learn_from_correction(tenant, {"a": 1}, {"a": 2}, CONTEXT)
    again = await asyncio.gather(*(core.learn_from_correction(tenant, {"a": 1}, {"a": 2}, CONTEXT) for _ in range(3)))
    assert {r["pattern_id"] for r in again} == {first["pattern_id"]} and all(r["merged"] for r in again)
    assert again[-1]["support"] == 4 or max(r["support"] for r in again) == 4
    # Support counts as evidence: (0.95 * 4 + 3) / (4 + 3)
    view = await core.feedback(tenant, first["pattern_id"], True)
    assert view["accepted"] == 1 and view["confidence"] == pytest.approx((0.95 * 4 + 4) / 8)
    stats = await core.stats_for(tenant)
    assert stats["patterns"] == 1 and stats["corrections"] == 1
    other = await core.learn_from_correction(tenant, {"b": 1}, {"b": 2}, {"source_field": "zip", "table": "addr"})
    for _ in range(2):
        view = await core.feedback(tenant, other["pattern_id"], False)
    assert view["rejected"] == 2 and view["confidence"] == pytest.approx(0.95 * 4 / 6)
    # Below min_confidence (0.7) a pattern is no longer recommended.
    assert await core.recommendations(tenant, {"source_field": "zip", "table": "addr"}) == []
    with pytest.raises(LearningError) as missing:
        await core.feedback(tenant, "nope", True)
    assert missing.value.status == 404 and missing.value.code == "pattern_not_found"


async def test_state_is_rebuilt_from_storage_and_tenants_are_isolated(engine, tenant):
    core = core_on(engine)
    other = tenant + "-other"
    mine = await core.learn_from_correction(tenant, {"x": 1}, {"x": 2}, CONTEXT)
    await core.feedback(tenant, mine["pattern_id"], True)
    assert await core.recommendations(other, dict(CONTEXT)) == []
    with pytest.raises(LearningError):
        await core.feedback(other, mine["pattern_id"], False)
    restarted = core_on(engine)
    [rec] = await restarted.recommendations(tenant, dict(CONTEXT))
    assert rec["pattern_id"] == mine["pattern_id"]
    merged = await restarted.learn_from_correction(tenant, {"x": 1}, {"x": 2}, CONTEXT)
    assert merged["merged"] and merged["support"] == 2 and merged["accepted"] == 1
    async with engine.connect() as conn:
        rows = (await conn.execute(select(PatternRow).where(PatternRow.tenant == tenant))).mappings().all()
    assert len(rows) == 1 and rows[0]["support"] == 2 and rows[0]["confidence"] == merged["confidence"]


async def test_failed_commit_learns_nothing(engine, tenant):
    core = core_on(engine)

    async def broken(rows):
        raise ConnectionError("database went away")

    real, core.store.write = core.store.write, broken
    with pytest.raises(LearningError) as refused:
        await core.learn_from_correction(tenant, {"a": 1}, {"a": 2}, CONTEXT)
    assert refused.value.status == 503
    assert await core.recommendations(tenant, dict(CONTEXT)) == []
    assert (await core.stats_for(tenant))["patterns"] == 0
    core.store.write = real
    assert (await core.learn_from_correction(tenant, {"a": 1}, {"a": 2}, CONTEXT))["merged"] is False


async def test_batched_learning_every_pattern_counts(engine, tenant):
    core = core_on(engine)
    items = [{"type": "correction", "original": {"t": f"v{i}"}, "corrected": {"t": f"w{i}"},
              "context": {"source_field": f"field_{i}", "entity": f"entity_{i % 50}"}} for i in range(1500)]
    results = await core.learn(tenant, items)
    assert len({r["pattern_id"] for r in results}) == 1500
    # The very first pattern is still found (the original only looked at the latest 100).
    [rec] = await core.recommendations(tenant, {"source_field": "field_0", "entity": "entity_0"}, 0.3, 1)
    assert rec["recommendation"] == {"t": "w0"}


def test_flatten_is_the_original_pattern_text():
    assert flatten({"a": 1, "b": {"c": "x", "d": [1, {"e": 2.5}]}, "f": None, "g": True}) == [
        "a: 1", "b_c: x", "1", "b_d_1_e: 2.5", "g: True"]
    assert pattern_text({"type": "success", "result": {"n": 3}, "context": {"k": "v"}}) == \
        "type: success result_n: 3 context_k: v"
    assert context_text({"k": "v"}) == "context_k: v"


def test_index_matches_exact_tfidf_after_refit():
    """Incremental weights equal sklearn's TF-IDF cosine (same tokens, smooth IDF) once re-weighted."""
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    index = PatternIndex(refit_growth=1.25)
    for start in range(0, 400, 37):
        index.add(texts[start : start + 37])
    index.refit()
    query = " ".join(words[:6])
    vectorizer = TfidfVectorizer(stop_words="english")
    matrix = vectorizer.fit_transform(texts)
    expected = cosine_similarity(vectorizer.transform([query]), matrix)[0]
    got = {m.row: m.similarity for m in index.query(query, 0.05, 400)}
    best = np.argsort(-expected)[:10]
    for row in best:
        if expected[row] >= 0.05:
            assert got[int(row)] == pytest.approx(expected[row], abs=1e-4)
    assert index.refits >= 2 and len(index) == 400
    assert index.query("", 0.1, 5) == [] and PatternIndex().query("w1", 0.1, 5) == []
    # Many queries in one pass answer each exactly as alone (a text with no terms finds nothing).
    batch = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(12)] + ["", "the and"]
    assert index.query_many(batch, 0.05, 7) == [index.query_many([text], 0.05, 7)[0] for text in batch]
    assert index.query_many([], 0.1, 5) == [] and PatternIndex().query_many(["w1"], 0.1, 5) == [[]]


def mapping_correction(source: str, target: str | None, proposed: str | None = None) -> dict:
    return {"type": "correction", "original": {"source_field": source, "target_field": proposed},
            "corrected": {"source_field": source, "target_field": target}, "context": {"source_field": source}}


def every_lesson(core: LearningCore, tenant: str) -> list[dict]:
    """Every field-mapping lesson of the tenant, most trusted first, as mapping_lessons gives them:
    what the matcher would apply were nothing selected."""
    state = core.tenants.peek(tenant)
    prior = core.options.prior_weight
    lessons = [p for p in state.patterns.values()
               if p.confidence(prior) >= core.options.min_confidence
               and isinstance(p.data.get("corrected" if p.type == "correction" else "result"), dict)
               and "source_field" in p.data.get("corrected" if p.type == "correction" else "result")]
    lessons.sort(key=lambda p: (p.confidence(prior), p.support, p.updated_at, p.created_at, p.id), reverse=True)
    return [core._lesson(p, p.confidence(prior)) for p in lessons]


async def test_mapping_lessons_decide_the_mapping_as_all_of_them_do(engine, tenant):
    """`mapping_lessons` returns only the lessons that decide these schemas: the matcher maps
    exactly as with every lesson of the tenant."""
    from crews.field_matcher import FieldMatcher, Learned

    core = core_on(engine)
    rng = random.Random(5)
    taught = [mapping_correction("cust_nm", "customer_name"), mapping_correction("xref_code", "legacy_reference"),
              mapping_correction("CUSTOMER-NAME", "client_label"),  # the same normalised words, taught later
              mapping_correction("zzq_amt", "invoice_total"), mapping_correction("shipTo", "delivery_address")]
    noise = [mapping_correction(f"{rng.choice(['abc', 'qrs', 'uvw'])}{i}_{rng.choice(['kk', 'pp'])}", f"t{i}")
             for i in range(300)]
    await core.learn(tenant, taught[:2] + noise[:150])
    await core.learn(tenant, taught[2:] + noise[150:])
    await core.learn(tenant, [{"type": "success", "result": {"ok": 1}, "context": {"source_field": "cust_nm"}}])
    source = {"customer_nm": "text", "xref_id": "text", "zzq_amt": "decimal", "ship_to": "text", "other": "text"}
    target = {"customer_name": "text", "client_label": "text", "legacy_reference": "text", "invoice_total": "numeric",
              "delivery_address": "text", "notes": "text"}
    every = every_lesson(core, tenant)
    relevant = await core.mapping_lessons(tenant, list(source), list(target))
    assert len(every) == 305
    # CUSTOMER-NAME (the later of two lessons of the same words) decides customer_nm and names an
    # alias of client_label; zzq_amt decides zzq_amt; xref_code teaches xref = legacy and shipTo
    # ship = delivery address, words of xref_id and ship_to. No noise, and not the overruled cust_nm.
    assert [c["corrected"]["source_field"] for c in relevant] == ["shipTo", "zzq_amt", "CUSTOMER-NAME", "xref_code"]
    matcher = FieldMatcher()
    assert matcher.match(source, target, learned=Learned.from_corrections(relevant)) == \
        matcher.match(source, target, learned=Learned.from_corrections(every))
    # The index is rebuilt from storage after a restart, in the same order.
    again = core_on(engine)
    assert await again.mapping_lessons(tenant, list(source), list(target)) == relevant
    assert await core.mapping_lessons(tenant, [], []) == [] and await core.mapping_lessons(tenant, ["..."], ["nothing"]) == []
    # What is learned after the index was built joins it.
    await core.learn(tenant, [mapping_correction("customer_nm", "customer_name")])
    assert "customer_nm" in {c["corrected"]["source_field"] for c in await core.mapping_lessons(tenant, list(source), list(target))}


async def test_mapping_lessons_follow_trust_as_it_moves(engine, tenant):
    """Random lessons over a small vocabulary (source fields taught several ways, aliases, "no
    counterpart", accepted mappings), then feedback and repeats that reorder them: after every
    change the selected lessons map random schemas exactly as every lesson does."""
    from crews.field_matcher import FieldMatcher, Learned

    rng = random.Random(23)
    words = ["cust", "acct", "qzx", "blorp", "amt", "zzv", "ship", "dt", "wex", "kk", "total", "name"]
    targets = [f"{a}_{b}" for a in ("customer", "invoice", "legacy", "delivery") for b in ("name", "total", "ref", "date")]

    def name() -> str:
        return "_".join(rng.sample(words, rng.choice((1, 2, 2, 3))))

    def lesson() -> dict:
        source = name()
        if rng.random() < 0.15:
            return {"type": "success", "result": {"source_field": source, "target_field": rng.choice(targets)},
                    "context": {"source_field": source}}
        return mapping_correction(source, None if rng.random() < 0.1 else rng.choice(targets))

    core = core_on(engine)
    await core.learn(tenant, [lesson() for _ in range(400)])
    matcher = FieldMatcher()
    checked = 0
    for round_ in range(12):
        for _ in range(3):
            sources = sorted({name() for _ in range(rng.randint(1, 6))})
            wanted = sorted(set(rng.sample(targets, rng.randint(1, 6))))
            selected = Learned.from_corrections(await core.mapping_lessons(tenant, sources, wanted))
            assert matcher.match(sources, wanted, learned=selected) == \
                matcher.match(sources, wanted, learned=Learned.from_corrections(every_lesson(core, tenant))), round_
            checked += 1
        state = core.tenants.peek(tenant)
        for pattern in rng.sample(list(state.patterns.values()), 40):  # trust moves both ways
            await core.feedback(tenant, pattern.id, rng.random() < 0.5)
        repeated = [p.data for p in rng.sample(list(state.patterns.values()), 20)]
        await core.learn(tenant, [dict(d) for d in repeated if d["type"] == "correction"] + [lesson() for _ in range(20)])
    assert checked == 36


async def test_accepted_mappings_and_no_counterparts_are_found_by_target(engine, tenant):
    """An accepted mapping is found through the key of its target (it names that target for
    similar fields later), a field taught to have no counterpart through `none`; unrelated
    successes and other targets are not."""
    from crews.field_matcher import Learned

    core = core_on(engine)
    await core.learn(tenant, [
        {"type": "success", "result": {"source_field": "volumeInfo.title", "target_field": "name"},
         "context": {"source_field": "volumeInfo.title"}},
        {"type": "success", "result": {"source_field": "isbn", "target_field": "isbn"}, "context": {"source_field": "isbn"}},
        {"type": "success", "result": {"source_field": "x", "target_field": None}, "context": {"source_field": "x"}},
        mapping_correction("etag", None, "identifier"),
    ])
    found = await core.mapping_lessons(tenant, ["title"], ["name"])
    assert sorted((c["type"], c["corrected"]["source_field"], c["corrected"]["target_field"]) for c in found) == [
        ("correction", "etag", None), ("success", "volumeInfo.title", "name")]
    learned = Learned.from_corrections(found)
    assert learned.exact["etag"] == (None, pytest.approx(found[[c["type"] for c in found].index("correction")]["confidence"]))
    assert learned.synonyms == {}  # an acceptance teaches no word synonym
    from crews.field_matcher import FieldMatcher

    mapped = FieldMatcher().match(["book.title", "etag"], ["name", "identifier"], learned=learned)
    assert [(m["source_field"], m["target_field"], m["method"]) for m in mapped["mappings"]] == [
        ("book.title", "name", "learned_similar")]
    assert mapped["no_counterpart"] == ["etag"]


async def test_a_correction_overrules_its_success_and_decide_generalises_it(engine, tenant):
    """A correction of what was learned as a success for the same context counts against that
    success (it is no longer recommended); `decide` fits the tenant's corrections of a decision
    against its successes and answers for unseen items (actors/learning/decision_model.py)."""
    core = core_on(engine)

    def context(column: str, kind: str = "type_string") -> dict:
        return {"agent": "data_validation", "decision": "personal_data", "column": column, "type": kind}

    columns = ["badge id", "host name", "os", "owner email", "cpu cores", "monthly cost", "staff badge", "region"]
    await core.learn(tenant, [{"type": "success", "result": {"personal_data": False}, "context": context(c)}
                              for c in columns])
    learned = await core.learn(tenant, [{"type": "correction", "original": {"personal_data": False},
                                         "corrected": {"personal_data": True}, "context": context(c)}
                                        for c in ("badge id", "staff badge")])
    [by_text] = await core.recommendations_many(tenant, [context("badge id")], 0.3, 5)
    assert by_text[0]["type"] == "correction_recommendation"  # its own success, overruled, ranks no more
    [by_context] = await core.recommendations_many(tenant, [context("badge id")], 0.3, 2, "context")
    assert by_context[0]["similarity"] == pytest.approx(1.0) and by_context[0]["recommendation"] == {"personal_data": True}
    found = await core.decide(tenant, [context("badge id"), context("badge number"), context("region"),
                                       {**context("badge id"), "decision": "issue_accepted"}])
    assert found[0]["recommendation"] == {"personal_data": True} and found[0]["pattern_id"] == learned[0]["pattern_id"]
    assert found[1]["recommendation"] == {"personal_data": True}  # an unseen badge column
    assert found[2] is None and found[3] is None  # another column keeps the rules; another decision knows nothing
    with pytest.raises(Exception) as refused:
        await core.recommendations_many(tenant, [context("os")], 0.3, 2, "nope")
    assert refused.value.code == "invalid_by"


async def test_the_later_of_two_equal_lessons_wins_and_keeps_winning_after_a_restart(engine, tenant):
    """Lessons of one batch have equal confidence; their learning times are strictly increasing,
    so the later of two contrary lessons is the more trusted, in memory and after a reload (not
    whichever random id sorts first). The clock stands still, as it may between two items."""
    core = LearningCore(PatternStore(engine), LearningOptions(), clock=lambda: 1_790_000_000.0)
    items = []
    for i in range(20):
        for target in (f"first_{i}", f"second_{i}"):
            items.append({"type": "correction", "original": {"source_field": f"field_{i}", "target_field": None},
                          "corrected": {"source_field": f"field_{i}", "target_field": target},
                          "context": {"source_field": f"field_{i}"}})
    await core.learn(tenant, items)

    async def winners(found: LearningCore) -> dict[str, str]:
        first: dict[str, str] = {}
        for lesson in await found.corrections(tenant, 1000):
            first.setdefault(lesson["corrected"]["source_field"], lesson["corrected"]["target_field"])
        return first

    expected = {f"field_{i}": f"second_{i}" for i in range(20)}
    assert await winners(core) == expected
    assert await winners(core_on(engine)) == expected  # reloaded from storage
