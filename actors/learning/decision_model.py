"""What a tenant's corrections of one decision teach about items it has not seen: a small classifier
over the words of the items' contexts (crews/decisions.py), fitted on the tenant's patterns of that
decision when an agent asks.

Nearest neighbours over whole profiles confuse a policy with its noise: "fewer than 5 users: retire"
depends on one word of the profile (`users_lt5`) among a dozen, so the nearest patterns are often
those that share a name or a stack. A logistic regression on the words, with the user's corrections
as the classes they chose and the successes (what the rules decided and nobody corrected) as "keep
the rules", finds the word that separates them, from a handful of corrections. Classes are weighted
by their size, so three corrections among a hundred successes still count.

A correction of the very item (its own context) is applied whatever the model says: a user who
corrected this application wants it so the next time too. Pure (numpy, scikit-learn), no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

KEEP = "__keep__"
MIN_PROBABILITY = 0.5  # of the winning corrected value, to apply it
MIN_CORRECTIONS = 1


@dataclass(frozen=True)
class Example:
    text: str  # the context's words
    label: str  # repr of the corrected value, or KEEP for a success
    value: Any
    pattern_id: str
    confidence: float


def decide(examples: list[Example], queries: list[str]) -> list[tuple[Any, float, str] | None]:
    """Per query: (value to apply, probability, the correction pattern it rests on) or None (keep
    the rules)."""
    corrections = [e for e in examples if e.label != KEEP]
    if len(corrections) < MIN_CORRECTIONS or not queries:
        return [None] * len(queries)
    exact = {e.text: e for e in corrections}  # the latest correction of a context wins
    labels = sorted({e.label for e in examples})
    found: list[tuple[Any, float, str] | None] = []
    model = vectorizer = None
    if len(labels) > 1:
        vectorizer = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b")
        features = vectorizer.fit_transform([e.text for e in examples])
        model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=1000)
        model.fit(features, [e.label for e in examples])
    probabilities = model.predict_proba(vectorizer.transform(queries)) if model is not None else None
    by_label = {e.label: e for e in sorted(corrections, key=lambda e: -e.confidence)}
    for i, query in enumerate(queries):
        if query in exact:
            e = exact[query]
            found.append((e.value, 1.0, e.pattern_id))
            continue
        if probabilities is None:  # one class only: nothing to tell items apart by, beyond the exact ones
            found.append(None)
            continue
        row = probabilities[i]
        best = int(np.argmax(row))
        label = model.classes_[best]
        if label == KEEP or row[best] < MIN_PROBABILITY:
            found.append(None)
        else:
            e = by_label[label]
            found.append((e.value, round(float(row[best]), 4), e.pattern_id))
    return found
