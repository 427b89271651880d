"""Incremental TF-IDF over hashed features: one tenant's pattern vectors, kept without refitting.

The original fitted a TfidfVectorizer over the query and the latest 100 patterns on every query.
Here every pattern counts and nothing is re-vectorised per query:

- Text becomes term counts with sklearn's HashingVectorizer (same tokens as TfidfVectorizer:
  lower-cased words of 2+ characters, English stop words removed), so there is no vocabulary to
  refit: a new pattern is vectorised alone.
- Document frequencies are maintained as patterns arrive; a row is weighted with the IDF
  (`ln((1+n)/(1+df)) + 1`, sklearn's smooth IDF) of the moment it is added and L2-normalised.
- When the pattern count has grown by `refit_growth` since the last weighting, all rows are
  re-weighted from their stored counts in one sparse operation (amortised O(1) per pattern), so
  the weights never drift far from exact TF-IDF.
- Rows live in column-major blocks: a query touches only the columns of its own terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

N_FEATURES = 2**20
_VECTORIZER = HashingVectorizer(
    n_features=N_FEATURES, alternate_sign=False, norm=None, stop_words="english", dtype=np.float32
)
MERGE_BLOCKS = 8  # more small blocks than this are merged into one


def term_counts(texts: list[str]) -> sp.csr_matrix:
    return _VECTORIZER.transform(texts).tocsr()


@dataclass
class Match:
    row: int
    similarity: float


class PatternIndex:
    def __init__(self, refit_growth: float = 1.25) -> None:
        self.refit_growth = refit_growth
        self.rows = 0
        self._df: dict[int, int] = {}
        self._counts: list[sp.csr_matrix] = []  # per added batch, kept for re-weighting
        self._blocks: list[sp.csc_matrix] = []  # weighted, normalised rows, in row order
        self._weighted_at = 0  # pattern count at the last full re-weighting
        self.refits = 0

    def __len__(self) -> int:
        return self.rows

    def _idf(self, columns: np.ndarray) -> np.ndarray:
        df = np.fromiter((self._df.get(int(c), 0) for c in columns), dtype=np.float64, count=len(columns))
        return (np.log((1.0 + self.rows) / (1.0 + df)) + 1.0).astype(np.float32)

    @staticmethod
    def _normalise(matrix: sp.csr_matrix) -> sp.csr_matrix:
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ matrix, dtype=np.float32)

    def _weigh(self, counts: sp.csr_matrix) -> sp.csc_matrix:
        weighted = counts.copy()
        weighted.data = weighted.data * self._idf(weighted.indices)
        return self._normalise(weighted).tocsc()

    def add(self, texts: list[str]) -> range:
        """Index new patterns; returns their row numbers."""
        if not texts:
            return range(self.rows, self.rows)
        counts = term_counts(texts)
        for start, end in zip(counts.indptr[:-1], counts.indptr[1:]):
            for column in counts.indices[start:end]:
                key = int(column)
                self._df[key] = self._df.get(key, 0) + 1
        first = self.rows
        self.rows += counts.shape[0]
        self._counts.append(counts)
        if self.rows >= max(self._weighted_at * self.refit_growth, self._weighted_at + 32):
            self.refit()
        else:
            self._blocks.append(self._weigh(counts))
            if len(self._blocks) > MERGE_BLOCKS:
                self._blocks = [self._blocks[0], sp.vstack(self._blocks[1:], format="csc")]
        return range(first, self.rows)

    def refit(self) -> None:
        """Re-weight every row with the current IDF (one sparse pass over all stored counts)."""
        counts = sp.vstack(self._counts, format="csr") if len(self._counts) > 1 else self._counts[0]
        self._counts = [counts]
        self._blocks = [self._weigh(counts)]
        self._weighted_at = self.rows
        self.refits += 1

    def query(self, text: str, threshold: float, limit: int) -> list[Match]:
        """Rows whose cosine similarity to `text` is at least `threshold`, best first."""
        return self.query_many([text], threshold, limit)[0]

    def query_many(self, texts: list[str], threshold: float, limit: int) -> list[list[Match]]:
        """`query` for each text, with one vectorisation and one pass over the index's columns
        for them all (a field mapping asks for every source field at once). Each query's scores
        are the same floats as alone: the columns are summed in the same order, and a column only
        another query has adds 0 to them."""
        if not self.rows or not texts:
            return [[] for _ in texts]
        q = term_counts(texts)
        q.sort_indices()
        columns = np.unique(q.indices)
        if not len(columns):
            return [[] for _ in texts]
        weights = np.zeros((len(columns), len(texts)), dtype=np.float32)
        for k, (start, end) in enumerate(zip(q.indptr[:-1], q.indptr[1:])):
            own = q.indices[start:end]
            if not len(own):
                continue
            w = q.data[start:end] * self._idf(own)
            w /= np.linalg.norm(w) or 1.0
            weights[np.searchsorted(columns, own), k] = w
        scores = np.empty((self.rows, len(texts)), dtype=np.float32)
        offset = 0
        for block in self._blocks:
            scores[offset : offset + block.shape[0]] = block[:, columns] @ weights
            offset += block.shape[0]
        return [self._best(scores[:, k], threshold, limit) if q.indptr[k] < q.indptr[k + 1] else []
                for k in range(len(texts))]

    @staticmethod
    def _best(scores: np.ndarray, threshold: float, limit: int) -> list[Match]:
        found = np.flatnonzero(scores >= threshold - 1e-6)
        if len(found) > limit:
            found = found[np.argpartition(-scores[found], limit - 1)[:limit]]
        found = found[np.argsort(-scores[found], kind="stable")]
        return [Match(int(r), float(min(1.0, scores[r]))) for r in found]
