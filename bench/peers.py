"""Valentine's schema matchers as benchmark peers: Coma, Cupid and SimilarityFlooding.

The field-mapping benchmark calls this module from the project's own venv::

    from bench.peers import PEERS, match, match_many
    match("cupid", [("CustomerID", "int"), ...], [("customer_id", "integer"), ...])
    # -> {"CustomerID": "customer_id", ...}

valentine 1.1.0 needs Python >= 3.12 and python-dateutil < 3, which the project's venv
(Python 3.11, dateutil 4) cannot give, so the matchers run in a separate venv,
``.venv-eval``, made by ``bench/setup_eval.sh``. This file plays both parts: imported in
the project's venv it only uses the standard library and starts one worker per call of
:func:`match_many` (``.venv-eval/bin/python -I bench/peers.py --worker``: JSON on stdin,
JSON on stdout); run as that worker it imports valentine and does the matching. One
worker handles all pairs of a call, so its start-up (imports, WordNet load for Cupid) is
paid once per call, not once per pair.

Matching is schema-only: each schema becomes a pandas DataFrame with no rows whose
columns are the field names. Declared field types are passed on as Valentine's own
column types (``int``/``float``/``date``/``varchar``, the types it would infer from
data), because Cupid and SimilarityFlooding use column types; ``use_types=False`` makes
every column ``varchar`` (names only). Coma runs with ``use_schema=True,
use_instances=False``: 1.1.0's pure-Python Coma, whose schema-only mode is the old
``COMA_OPT`` strategy (``COMA_OPT_INST`` is ``use_instances=True``). The ranked
matches go through Valentine's one-to-one filter, ``MatcherResults.one_to_one_hungarian()``
by default (the one its metrics use; with no threshold it keeps pairs scoring at least
the median distinct score), and a last pass keeps at most one target per source and one
source per target (Valentine's filter returns every match unchanged when they all share
one score).

No network and no ``nltk.download``: the worker points NLTK at ``.eval/nltk_data`` only
(laid out by setup_eval.sh from Debian's WordNet and registry packages), replaces
``nltk.download`` and Valentine's ``ensure_nltk_data`` with functions that raise, and
refuses outgoing IPv4/IPv6 connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

PEERS = ("coma", "cupid", "similarity_flooding")

Field = tuple[str, str]
Pair = tuple[Sequence[Field], Sequence[Field]]

ROOT = Path(__file__).resolve().parent.parent
EVAL_VENV = Path(os.environ.get("EVAL_VENV", ROOT / ".venv-eval"))
EVAL_DATA = Path(os.environ.get("EVAL_DATA", ROOT / ".eval"))
EVAL_PYTHON = EVAL_VENV / "bin" / "python"
NLTK_DATA_DIR = EVAL_DATA / "nltk_data"

ONE_TO_ONE_METHODS = ("hungarian", "greedy", "mutual_top")
# The tables' names: Valentine's own defaults for two frames, chosen to share no
# trigram, prefix or suffix, so that the table names do not sway schema matchers.
_SOURCE_TABLE, _TARGET_TABLE = "aaa", "bbb"


class PeerError(RuntimeError):
    """The eval venv is missing, the worker failed, or a pair could not be matched."""


# ----------------------------------------------------------------------------------------
# Caller side (any Python >= 3.10, standard library only)
# ----------------------------------------------------------------------------------------


def match(
    peer: str,
    source_fields: list[tuple[str, str]],
    target_fields: list[tuple[str, str]],
    **options: Any,
) -> dict[str, str]:
    """Top-1 one-to-one mapping of source field names to target field names.

    ``source_fields`` and ``target_fields`` are ``(name, type)`` pairs. A source field
    that the peer leaves unmatched is absent from the result. ``options`` are those of
    :func:`match_many`.
    """
    return match_many(peer, [(source_fields, target_fields)], **options)[0]


def match_many(peer: str, pairs: Iterable[Pair], **options: Any) -> list[dict[str, str]]:
    """:func:`match` for many ``(source_fields, target_fields)`` pairs in one worker."""
    return [r["mapping"] for r in match_many_detailed(peer, pairs, **options)["results"]]


def match_many_detailed(
    peer: str,
    pairs: Iterable[Pair],
    *,
    use_types: bool = True,
    one_to_one: str = "hungarian",
    threshold: float | None = None,
    matcher_options: dict[str, Any] | None = None,
    on_error: str = "raise",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Match every pair in one worker and report scores and timings.

    Returns ``{"results": [...], "meta": {...}}``, one result per pair, in order::

        {"mapping": {src: tgt}, "scores": {src: score}, "seconds": float,
         "raw_matches": int, "error": str | None}

    ``seconds`` is the wall time of that pair's matching (frames, matcher, one-to-one
    filter) inside the worker, start-up excluded. ``meta`` has ``startup_seconds``
    (worker imports, and for Cupid the WordNet and stopword load), ``total_seconds`` (as
    seen by the caller, process start to exit), and the versions used.

    Options:
      use_types        pass declared types on as Valentine column types (default True);
                       False: every column is ``varchar``.
      one_to_one       "hungarian" (default), "greedy" or "mutual_top" (Valentine's
                       ``MatcherResults.one_to_one_*``).
      threshold        minimum score for hungarian/greedy; None (default) = Valentine's
                       default, the median distinct score.
      matcher_options  keyword arguments for the Valentine matcher's constructor,
                       e.g. ``{"th_accept": 0.6}`` for Cupid (Coma's ``use_instances``
                       is forced to False).
      on_error         "raise" (default): a pair that fails raises PeerError after the
                       batch; "empty": that pair's mapping is {} and "error" says why.
      timeout          seconds for the whole batch (None: no limit).
    """
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")
    if one_to_one not in ONE_TO_ONE_METHODS:
        raise ValueError(f"one_to_one must be one of {ONE_TO_ONE_METHODS}, got {one_to_one!r}")
    if on_error not in ("raise", "empty"):
        raise ValueError(f"on_error must be 'raise' or 'empty', got {on_error!r}")
    payload_pairs = [
        {"source": _fields(src, "source"), "target": _fields(tgt, "target")} for src, tgt in pairs
    ]
    if not payload_pairs:
        return {"results": [], "meta": {}}
    if not EVAL_PYTHON.exists() or not (NLTK_DATA_DIR / "corpora" / "wordnet" / "lexnames").exists():
        raise PeerError(
            f"eval environment missing ({EVAL_PYTHON} or {NLTK_DATA_DIR}): run bash bench/setup_eval.sh"
        )
    request = {
        "peer": peer,
        "pairs": payload_pairs,
        "options": {
            "use_types": bool(use_types),
            "one_to_one": one_to_one,
            "threshold": threshold,
            "matcher_options": dict(matcher_options or {}),
        },
        "nltk_data": str(NLTK_DATA_DIR),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["NLTK_DATA"] = str(NLTK_DATA_DIR)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(EVAL_PYTHON), "-I", str(Path(__file__).resolve()), "--worker"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            cwd=str(EVAL_DATA),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{peer}: worker timed out after {timeout}s") from exc
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise PeerError(f"{peer}: worker exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise PeerError(f"{peer}: worker sent no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}") from exc
    answer["meta"]["total_seconds"] = total
    errors = [(i, r["error"]) for i, r in enumerate(answer["results"]) if r.get("error")]
    if errors and on_error == "raise":
        shown = "\n".join(f"  pair {i}: {e}" for i, e in errors[:5])
        raise PeerError(f"{peer}: {len(errors)} of {len(answer['results'])} pairs failed:\n{shown}")
    return answer


def _fields(fields: Sequence[Field], side: str) -> list[list[str]]:
    out = []
    for item in fields:
        if isinstance(item, str):
            name, ftype = item, ""
        else:
            name, ftype = item[0], (item[1] if len(item) > 1 else "")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{side} field name must be a non-empty str, got {name!r}")
        out.append([name, "" if ftype is None else str(ftype)])
    return out


# ----------------------------------------------------------------------------------------
# Worker side (runs in .venv-eval, Python >= 3.12, with valentine 1.1.0)
# ----------------------------------------------------------------------------------------

# Declared type -> the column type Valentine infers from data (DataframeTable.get_data_type).
_INT_TYPES = {"int", "integer", "bigint", "smallint", "tinyint", "mediumint", "long", "short",
              "serial", "bigserial", "smallserial", "uint"}
_FLOAT_TYPES = {"float", "double", "decimal", "numeric", "real", "number", "money"}
_DATE_TYPES = {"date", "datetime", "time", "timestamp", "timestamptz", "interval"}


# Prefixes catch parameterised and sized names: int4, float8, timestamptz, datetime2, "double
# precision", "timestamp with time zone" (but not MySQL longtext).
_PREFIXES = (
    ("date", ("date", "time")),
    ("int", ("int", "bigint", "smallint", "tinyint", "mediumint", "uint")),
    ("float", ("float", "double", "decimal", "numeric")),
)


def _valentine_type(declared: str) -> str:
    t = declared.strip().lower().split("(")[0].strip()
    for family, names in (("date", _DATE_TYPES), ("int", _INT_TYPES), ("float", _FLOAT_TYPES)):
        if t in names:
            return family
    for family, prefixes in _PREFIXES:
        if t.startswith(prefixes):
            return family
    return "varchar"


# Empty columns carry their type as a pandas dtype; _TypedTable maps it back.
_DTYPE_OF = {"int": "int64", "float": "float64", "date": "datetime64[ns]", "varchar": "object"}
_TYPE_OF_DTYPE = {v: k for k, v in _DTYPE_OF.items()}


def _guard_worker(nltk_data: str) -> None:
    """No network, no NLTK downloads, NLTK data from nltk_data only."""
    import socket

    def _refuse(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"bench/peers.py worker: network access refused ({address!r})")
        return _orig_connect(self, address, *a, **k)

    def _refuse_ex(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"bench/peers.py worker: network access refused ({address!r})")
        return _orig_connect_ex(self, address, *a, **k)

    _orig_connect, _orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse_ex

    import nltk
    import nltk.downloader

    def _no_download(*a, **k):
        raise RuntimeError(
            "bench/peers.py worker: nltk.download is disabled; NLTK data must be in "
            f"{nltk_data} (bash bench/setup_eval.sh)"
        )

    nltk.download = _no_download
    nltk.downloader.download = _no_download
    nltk.downloader.Downloader.download = _no_download
    nltk.data.path[:] = [nltk_data]

    import valentine.utils.utils as vutils

    def _no_ensure():
        raise LookupError(
            f"NLTK data missing from {nltk_data}; run bash bench/setup_eval.sh "
            "(downloads are disabled)"
        )

    vutils.ensure_nltk_data = _no_ensure
    import valentine.algorithms.coma.similarity.tfidf as coma_tfidf
    import valentine.algorithms.cupid.linguistic_matching as cupid_lm

    coma_tfidf.ensure_nltk_data = _no_ensure
    cupid_lm._ensure_nltk_data = _no_ensure


def _worker_main() -> int:
    t_start = time.perf_counter()
    request = json.load(sys.stdin)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the JSON answer

    _guard_worker(request["nltk_data"])
    import math

    import pandas as pd
    from valentine.algorithms import Coma, Cupid, SimilarityFlooding
    from valentine.algorithms.matcher_results import MatcherResults
    from valentine.data_sources import DataframeTable

    class _TypedTable(DataframeTable):
        """DataframeTable whose empty columns get Valentine's type from their dtype."""

        @staticmethod
        def get_data_type(data: list, d_type: str) -> str:
            if len(data) == 0 and d_type in _TYPE_OF_DTYPE:
                return _TYPE_OF_DTYPE[d_type]
            return DataframeTable.get_data_type(data, d_type)

    peer = request["peer"]
    opts = request["options"]
    mopts = dict(opts.get("matcher_options") or {})

    def make_matcher():
        if peer == "coma":
            mopts.update(use_schema=True, use_instances=False)
            return Coma(**mopts)
        if peer == "cupid":
            return Cupid(**mopts)
        if peer == "similarity_flooding":
            return SimilarityFlooding(**mopts)
        raise ValueError(f"unknown peer {peer!r}")

    def frame(fields: list[list[str]]) -> Any:
        """A DataFrame with no rows whose columns are the field names."""
        cols: dict[str, Any] = {}
        for name, ftype in fields:
            if name in cols:
                continue  # a repeated name: keep the first (a DataFrame needs unique columns)
            vtype = _valentine_type(ftype) if opts["use_types"] else "varchar"
            cols[name] = pd.Series([], dtype=_DTYPE_OF[vtype])
        return pd.DataFrame(cols)

    def match_pair(pair: dict) -> dict:
        src_df = frame(pair["source"])
        tgt_df = frame(pair["target"])
        if src_df.shape[1] == 0 or tgt_df.shape[1] == 0:
            return {"mapping": {}, "scores": {}, "raw_matches": 0}
        tables = [_TypedTable(src_df, name=_SOURCE_TABLE), _TypedTable(tgt_df, name=_TARGET_TABLE)]
        matcher = make_matcher()  # fresh per pair: Cupid keeps schemata between calls
        raw = matcher.get_matches_batch(tables)  # what valentine.valentine_match does
        results = MatcherResults(raw, details=matcher.match_details)
        if opts["one_to_one"] == "hungarian":
            selected = results.one_to_one_hungarian(opts["threshold"])
        elif opts["one_to_one"] == "greedy":
            selected = results.one_to_one_greedy(opts["threshold"])
        else:
            selected = results.one_to_one_mutual_top(1)
        mapping: dict[str, str] = {}
        scores: dict[str, float] = {}
        used_targets: set[str] = set()
        for cp, score in sorted(selected.items(), key=lambda kv: -kv[1]):
            if cp.source_table == _SOURCE_TABLE and cp.target_table == _TARGET_TABLE:
                s, t = cp.source_column, cp.target_column
            elif cp.source_table == _TARGET_TABLE and cp.target_table == _SOURCE_TABLE:
                s, t = cp.target_column, cp.source_column
            else:
                continue
            if s in mapping or t in used_targets:
                continue
            mapping[s] = t
            used_targets.add(t)
            scores[s] = float(score) if math.isfinite(float(score)) else 0.0
        return {"mapping": mapping, "scores": scores, "raw_matches": len(raw)}

    startup = time.perf_counter() - t_start
    # Cupid loads WordNet and the stopwords lazily on its first pair; load them here so
    # that cost counts as start-up, not as the first pair's time.
    if peer == "cupid":
        t0 = time.perf_counter()
        from valentine.algorithms.cupid import linguistic_matching as lm

        lm._wordnet_lemma_names()
        lm._english_stopwords()
        lm.normalization("warm up")
        startup += time.perf_counter() - t0

    results = []
    for pair in request["pairs"]:
        t0 = time.perf_counter()
        try:
            r = match_pair(pair)
            r["error"] = None
        except Exception as exc:  # reported per pair; the caller decides
            r = {"mapping": {}, "scores": {}, "raw_matches": 0, "error": f"{type(exc).__name__}: {exc}"}
        r["seconds"] = time.perf_counter() - t0
        results.append(r)

    import importlib.metadata as md
    import nltk

    meta = {
        "peer": peer,
        "startup_seconds": startup,
        "python": sys.version.split()[0],
        "valentine": md.version("valentine"),
        "nltk": nltk.__version__,
        "pandas": pd.__version__,
        "options": opts,
        "nltk_data_path": list(nltk.data.path),
    }
    json.dump({"results": results, "meta": meta}, out)
    out.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(_worker_main())
    # Demo: python bench/peers.py  (from the project's venv or any Python >= 3.10)
    src = [("CustomerID", "int"), ("CompanyName", "varchar"), ("Phone", "varchar")]
    tgt = [("customer_id", "integer"), ("company", "text"), ("phone_number", "text")]
    for p in PEERS:
        ans = match_many_detailed(p, [(src, tgt)])
        r = ans["results"][0]
        print(f"{p}: {r['mapping']}  scores={ {k: round(v, 3) for k, v in r['scores'].items()} }  "
              f"pair={r['seconds']:.3f}s startup={ans['meta']['startup_seconds']:.2f}s "
              f"total={ans['meta']['total_seconds']:.2f}s")
