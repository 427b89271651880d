"""How alike two field names are: word by word, weighed by rarity, and by their characters.

`name_similarity` and `path_similarity` compare one pair. `similarity_table` compares every source
field with every taught name at once (a mapping carries lessons over by similarity to up to
ALIASES_PER_TARGET taught names per target): the word-pair similarities are looked up once per
distinct pair of words, and the per-pair sums run as array operations in the same order as
`name_similarity`'s, so every entry is the same float it computes.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

import numpy as np

from crews.field_words import dice, leaf_of, trigrams, word_similarity, words_of


def name_similarity(a: tuple[str, ...], b: tuple[str, ...], weight: dict[str, float] | None = None) -> float:
    """Two names' words compared: a soft Dice over words, each word matched to its most similar
    word on the other side (`word_similarity`) and weighed by how rare it is among the schemas'
    fields (`weight`), so a shared generic word (`name`, `id`) counts for less than a specific
    one; blended with the character 3-grams of the run-together words."""
    if not a or not b:  # a name with no words (`...`) resembles nothing
        return 0.0
    if a == b or set(a) == set(b):
        return 1.0
    weight = weight or {}
    wa = [weight.get(w, RARE_WEIGHT) for w in a]
    wb = [weight.get(w, RARE_WEIGHT) for w in b]
    matched = sum(w * max(word_similarity(x, y) for y in b) for x, w in zip(a, wa))
    matched += sum(w * max(word_similarity(x, y) for x in a) for y, w in zip(b, wb))
    soft = matched / (sum(wa) + sum(wb))
    chars = dice(trigrams("".join(a)), trigrams("".join(b)))
    return 0.8 * soft + 0.2 * chars


LEAF_SHARE = 0.85  # of a nested field's name similarity, the part its last segment decides


def path_similarity(a: str, b: str, synonyms: dict[str, str] | None = None,
                    weight: dict[str, float] | None = None) -> float:
    """Names compared whole, and, when either is a path (`volumeInfo.title`), mostly by their
    last segments: the objects a field is nested in say less about it than its own name."""
    whole = name_similarity(words_of(a, synonyms), words_of(b, synonyms), weight)
    leaf_a, leaf_b = leaf_of(a), leaf_of(b)
    if leaf_a == a and leaf_b == b:
        return whole
    leaves = name_similarity(words_of(leaf_a, synonyms), words_of(leaf_b, synonyms), weight)
    return max(whole, LEAF_SHARE * leaves + (1 - LEAF_SHARE) * whole)


RARE_WEIGHT = 4.0  # weight of a word no field of the schemas has (1 + ln of a typical field count)


def rarity(names: Iterable[tuple[str, ...]]) -> dict[str, float]:
    """Each word's weight, 1 + ln(fields / fields holding it): an inverse document frequency over
    the fields of both schemas."""
    names = list(names)
    df = Counter(w for words in names for w in set(words))
    return {w: 1.0 + math.log(len(names) / n) for w, n in df.items()}


def similarity_table(names: list[str], others: list[str], synonyms: dict[str, str] | None,
                     weight: dict[str, float] | None, floor: float) -> list[list[float]]:
    """`path_similarity(names[i], others[j], synonyms, weight)` for every pair, exactly, where it
    reaches `floor`; a pair certain to stay below `floor` may be given as 0.0 without computing it."""
    if not names or not others:
        return [[0.0] * len(others) for _ in names]
    weight = weight or {}
    words_a = [words_of(n, synonyms) for n in names]
    words_b = [words_of(n, synonyms) for n in others]
    soft = _soft_table(words_a, words_b, weight)
    bound = 0.8 * soft + 0.2  # the character part is at most 1
    sets_a, sets_b = [frozenset(w) for w in words_a], [frozenset(w) for w in words_b]
    paths_a = [leaf_of(n) != n for n in names]
    paths_b = [leaf_of(n) != n for n in others]
    table = [[0.0] * len(others) for _ in names]
    for i, (a, set_a) in enumerate(zip(words_a, sets_a)):
        row, soft_row, bound_row = table[i], soft[i].tolist(), bound[i].tolist()
        for j, (b, set_b) in enumerate(zip(words_b, sets_b)):
            if paths_a[i] or paths_b[j]:  # nested names: their leaves decide most (rare; pair by pair)
                row[j] = path_similarity(names[i], others[j], synonyms, weight)
            elif not a or not b:
                continue
            elif set_a == set_b:
                row[j] = 1.0
            elif bound_row[j] >= floor - 1e-9:
                row[j] = 0.8 * soft_row[j] + 0.2 * dice(trigrams("".join(a)), trigrams("".join(b)))
    return table


def _soft_table(words_a: list[tuple[str, ...]], words_b: list[tuple[str, ...]], weight: dict[str, float]) -> np.ndarray:
    """name_similarity's weighed soft Dice for every pair (0 where either name has no words)."""
    vocab_a = {w: k for k, w in enumerate(dict.fromkeys(w for words in words_a for w in words))}
    vocab_b = {w: k for k, w in enumerate(dict.fromkeys(w for words in words_b for w in words))}
    soft = np.zeros((len(words_a), len(words_b)))
    if not vocab_a or not vocab_b:
        return soft
    pair = np.array([[word_similarity(x, y) for y in vocab_b] for x in vocab_a])
    full_a = [k for k, words in enumerate(words_a) if words]
    full_b = [k for k, words in enumerate(words_b) if words]
    # best[x, j]: word x against name j's best word; best_of[i, y]: word y against name i's best word
    cols = [vocab_b[w] for k in full_b for w in words_b[k]]
    starts = np.cumsum([0] + [len(words_b[k]) for k in full_b[:-1]])
    best = np.maximum.reduceat(pair[:, cols], starts, axis=1)
    rows = [vocab_a[w] for k in full_a for w in words_a[k]]
    starts = np.cumsum([0] + [len(words_a[k]) for k in full_a[:-1]])
    best_of = np.maximum.reduceat(pair[rows, :], starts, axis=0)
    # Sums in name_similarity's order: each name's words in turn, added to a running total.
    first = np.zeros((len(full_a), len(full_b)))
    for i, k in enumerate(full_a):
        for w in words_a[k]:
            first[i] += weight.get(w, RARE_WEIGHT) * best[vocab_a[w]]
    longest = max(len(words_b[k]) for k in full_b)
    index = np.zeros((len(full_b), longest), dtype=np.intp)
    weights = np.zeros((len(full_b), longest))  # 0 past a name's end: adds 0.0, which changes no sum
    for j, k in enumerate(full_b):
        for position, w in enumerate(words_b[k]):
            index[j, position], weights[j, position] = vocab_b[w], weight.get(w, RARE_WEIGHT)
    second = np.zeros((len(full_a), len(full_b)))
    for position in range(longest):
        second += weights[:, position] * best_of[:, index[:, position]]
    total_a = np.array([sum(weight.get(w, RARE_WEIGHT) for w in words_a[k]) for k in full_a])
    total_b = np.array([sum(weight.get(w, RARE_WEIGHT) for w in words_b[k]) for k in full_b])
    soft[np.ix_(full_a, full_b)] = (first + second) / (total_a[:, None] + total_b[None, :])
    return soft
