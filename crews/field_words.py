"""The words of a field name, as the field matcher compares them.

A name goes through four steps, each one general rather than tuned to a schema:

1. Splitting on separators, camelCase and digits: `custAddrLine1` -> cust addr line 1.
2. Segmentation of run-together lower-case words against an English word list ranked by frequency
   (the one wordninja ships, from Wikipedia unigram counts): `totalamount` -> total amount,
   `hostname` -> host name. A word is split only when every part is a common word (short parts
   only from a small list such as `id` or `ip`) and the word itself is not a common word, so
   `season` stays whole.
3. Abbreviations expanded from a table (`cust` -> customer, `qty` -> quantity) and the tenant's
   learned synonyms.
4. Light lemmatisation: plurals to singular (`items` -> item, `categories` -> category) and past
   participles to their verb (`created` -> create), each only when the result is itself a word of
   the list, so `status` and `address` stay as they are.

`word_similarity` then compares two words with what a person reading schemas would accept as the
same word: equal, synonyms of a small shipped table, an abbreviation (`mem` of memory, `mgr` of
manager) or a close spelling (`telephone`/`phone`).
"""
from __future__ import annotations

import gzip
import importlib.util
import re
from functools import lru_cache
from math import log
from pathlib import Path


ABBREVIATIONS = {
    "acct": "account", "addr": "address", "amt": "amount", "avg": "average", "bal": "balance", "cd": "code",
    "cnt": "count", "ctry": "country", "cntry": "country", "cust": "customer", "desc": "description",
    "dept": "department", "dob": "birth date", "dt": "date", "emp": "employee", "eml": "email", "fname": "first name",
    "lname": "last name", "mname": "middle name", "ln": "line", "mgr": "manager", "msg": "message", "nbr": "number",
    "no": "number", "num": "number", "nm": "name", "org": "organization", "pct": "percent", "ph": "phone",
    "phn": "phone", "tel": "telephone", "prod": "product", "qty": "quantity", "ref": "reference", "st": "street",
    "str": "street", "zip": "postal code", "zipcode": "postal code", "postcode": "postal code", "ts": "timestamp",
    "tm": "time", "txn": "transaction", "trx": "transaction", "usr": "user", "yr": "year", "mo": "month",
    "id": "identifier", "ident": "identifier", "uid": "user identifier", "sku": "stock keeping unit",
    "e": "e", "mail": "email", "tstamp": "timestamp", "upd": "updated", "crt": "created", "loc": "location",
    "lat": "latitude", "lng": "longitude", "lon": "longitude", "inv": "invoice", "ord": "order", "pmt": "payment",
    "sal": "salary", "ssn": "social security number", "vnd": "vendor", "cat": "category", "img": "image",
    "url": "url", "uri": "url", "web": "website", "co": "company", "fax": "fax", "sex": "gender",
    "mem": "memory", "ram": "memory", "vram": "video memory", "os": "operating system", "fqdn": "host name",
    "ver": "version", "env": "environment", "sz": "size", "len": "length", "dur": "duration", "hrs": "hours",
    "vcpu": "virtual cpu", "ccy": "currency", "curr": "currency", "src": "source", "dst": "destination", "dest": "destination",
    "info": "information", "config": "configuration", "cfg": "configuration", "param": "parameter",
    "attr": "attribute", "tz": "timezone", "utc": "utc", "pwd": "password", "pw": "password",
}
STOP_WORDS = {"the", "of", "a", "an", "tbl", "fld", "col", "field", "value", "val", "at", "on", "in", "for", "by",
              "to", "is", "has"}
# Words of one meaning in schemas. Kept small and general: each group is a pair a data steward
# would map without a second thought.
SYNONYMS = [
    {"count", "quantity"}, {"update", "modify", "change"}, {"create", "add", "insert"},
    {"begin", "start"}, {"end", "finish", "stop"}, {"identifier", "key"}, {"title", "heading"},
    {"description", "summary"}, {"price", "cost"}, {"customer", "client"}, {"vendor", "supplier"},
    {"telephone", "phone"}, {"mobile", "cell"}, {"postal", "zip"}, {"organization", "company"},
    {"region", "state", "province"}, {"size", "capacity"}, {"language", "locale"}, {"cpu", "processor"},
]
_SYNONYM_OF = {word: frozenset(group) for group in SYNONYMS for word in group if " " not in word}
# Two-letter parts a run-together word may hold (`userid`, `ipaddress`, `ostype`).
SHORT_PARTS = {"id", "ip", "os", "db", "mb", "gb", "kb", "tb", "vm", "ui", "tz", "no", "dn", "cd", "hr"}
COMMON_RANK = 5_000  # a word this frequent is kept whole
PART_RANK = 30_000  # parts of a split must be at least this frequent...
SHORT_PART_RANK = 8_000  # ...and three-letter parts this frequent
VOCABULARY_SIZE = 80_000
NAME_CACHE = 65_536
# What of a name is read: a tenant's lesson or schema can hold longer names, and the work of a
# comparison grows with its words, so each name counts its first characters and words only.
MAX_NAME = 200
MAX_WORDS = 16
MAX_SEGMENTED = 40  # longer run-together words are left whole (segmentation is quadratic)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SPLIT = re.compile(r"[\W_]+|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman", "indices": "index",
              "matrices": "matrix", "criteria": "criterion", "data": "data", "media": "media", "analyses": "analysis"}
_KEEP = {"status", "address", "alias", "bus", "gas", "series", "news", "analysis", "basis", "canvas", "campus",
         "virus", "bonus", "census", "corpus", "radius", "process", "access", "business", "class", "glass", "less",
         "this", "has", "was", "yes", "its", "does", "always", "perhaps", "sometimes", "plus", "minus", "us",
         "species", "tennis", "lens", "atlas", "chassis", "thesis", "axis", "ids", "dns", "https", "aws", "gps",
         "sms", "os", "ms", "ns", "vs", "unless", "various", "previous", "numerous", "famous", "nexus",
         "string", "during", "something", "nothing", "anything", "everything", "thing", "morning", "evening",
         "ceiling", "ring", "king", "wing", "spring", "bring", "sing", "swing", "sting", "shipping", "red", "bed",
         "need", "speed", "seed", "feed", "bred", "shed", "led", "wed", "fed", "hundred", "sacred", "wicked",
         "naked", "ragged", "kindred", "rugged", "aged", "embed", "seabed", "tweed"}


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """word -> frequency rank (0 is the most frequent), from wordninja's shipped word list."""
    # the file only: importing wordninja builds its own 126k-word model (about 15 MB)
    spec = importlib.util.find_spec("wordninja")
    if spec is None or spec.origin is None:
        raise RuntimeError("the wordninja package (its word list) is not installed")
    path = Path(spec.origin).parent / "wordninja" / "wordninja_words.txt.gz"
    with gzip.open(path, "rt") as file:
        words = file.read().split()[:VOCABULARY_SIZE]
    return {word: rank for rank, word in enumerate(words) if word.isalpha()}


def split_name(name: str) -> list[str]:
    """`custAddrLine1` -> ["cust", "addr", "line", "1"]; `CUST_NM` -> ["cust", "nm"]."""
    return list(_split_name(name))


@lru_cache(maxsize=NAME_CACHE)
def _split_name(name: str) -> tuple[str, ...]:
    words = []
    for part in _SPLIT.split(_CAMEL.sub(" ", name[:MAX_NAME])):
        words += [w.casefold() for w in part.split() if w]
    return tuple(words)


@lru_cache(maxsize=NAME_CACHE)
def segment(word: str) -> tuple[str, ...]:
    """A run-together word's parts (`totalamount` -> total amount), or the word alone."""
    ranks = vocabulary()
    if not 5 <= len(word) <= MAX_SEGMENTED or not word.isascii() or not word.isalpha() or word in ABBREVIATIONS \
            or ranks.get(word, COMMON_RANK) < COMMON_RANK:
        return (word,)
    total = log(len(ranks))
    # cost[i], start[i]: the cheapest split of word[:i] into allowed parts, and where its last part starts
    cost: list[float | None] = [0.0] + [None] * len(word)
    start: list[int] = [0] * (len(word) + 1)
    for end in range(2, len(word) + 1):
        for begin in range(max(0, end - 20), end - 1):
            part = word[begin:end]
            if cost[begin] is None or not _allowed_part(part, ranks):
                continue
            # a known abbreviation or short part (`id`, `qty`) costs as a very common word does
            rank = 100 if part in ABBREVIATIONS or part in SHORT_PARTS else ranks.get(part, 0)
            found = cost[begin] + log((rank + 1) * total)
            if cost[end] is None or found < cost[end]:
                cost[end], start[end] = found, begin
    if cost[len(word)] is None:
        return (word,)
    parts, end = [], len(word)
    while end:
        parts.append(word[start[end] : end])
        end = start[end]
    return tuple(reversed(parts)) if len(parts) > 1 else (word,)


def _allowed_part(part: str, ranks: dict[str, int]) -> bool:
    if len(part) >= 3 and part in ABBREVIATIONS:  # `custname` -> cust name
        return True
    if len(part) == 2:
        return part in SHORT_PARTS
    rank = ranks.get(part)
    return rank is not None and rank < (SHORT_PART_RANK if len(part) == 3 else PART_RANK)


@lru_cache(maxsize=NAME_CACHE)
def lemma(word: str) -> str:
    """`items` -> item, `categories` -> category, `created` -> create; unknown forms unchanged."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word in _KEEP or not word.isalpha():
        return word
    ranks = vocabulary()
    candidates: list[str] = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        candidates.append(word[:-2])
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        candidates.append(word[:-1])
    if word.endswith("ied"):
        candidates.append(word[:-3] + "y")
    if word.endswith("ed") and len(word) > 4:
        candidates += [word[:-1], word[:-2]]
    if word.endswith("tion") and len(word) >= 8:  # creation -> create, selection -> select
        candidates += [word[:-3] + "e", word[:-3]]
    for candidate in candidates:
        if candidate in ABBREVIATIONS:  # `vcpus` -> vcpu
            return candidate
        if len(candidate) >= 3 and ranks.get(candidate, VOCABULARY_SIZE) < PART_RANK:
            return candidate
    return word


def words_of(name: str, synonyms: dict[str, str] | None = None) -> tuple[str, ...]:
    """The compared words of a field name: split, segmented, expanded and lemmatised."""
    if not synonyms:
        return _words(name, ())
    # only the synonyms of this name's own words are part of the cache key
    return _words(name, tuple((part, synonyms[part]) for part in name_parts(name) if part in synonyms))


@lru_cache(maxsize=NAME_CACHE)
def _words(name: str, synonyms: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    learned = dict(synonyms)
    out: list[str] = []
    parts = [word for token in _split_name(name) for word in _parts(token, learned)]
    for i, word in enumerate(parts):
        if word == "number" and parts[i + 1 : i + 2] == ["of"]:  # "number of items" is an item count
            word = "count"
        expanded = learned.get(word) or ABBREVIATIONS.get(word, word)
        out += [lemma(w) for w in expanded.split() if w not in STOP_WORDS]
    return tuple(out[:MAX_WORDS]) or _split_name(name)[:MAX_WORDS]


def _parts(token: str, learned: dict[str, str]) -> tuple[str, ...]:
    if token in learned or token in ABBREVIATIONS:
        return (token,)
    return segment(token)


@lru_cache(maxsize=NAME_CACHE)
def trigrams(text: str) -> frozenset[str]:
    padded = f"  {text} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def dice(a: frozenset | set, b: frozenset | set) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


@lru_cache(maxsize=NAME_CACHE)
def word_similarity(a: str, b: str) -> float:
    """1 for the same word, 0.9 for synonyms, 0.85 for an abbreviation (prefix) of the other,
    0.75 for a consonant abbreviation (`mgr`, `qty`), else the spelling's trigram similarity when
    close (`telephone`/`phone`), else 0."""
    if a == b:
        return 1.0
    if a in _SYNONYM_OF and b in _SYNONYM_OF[a]:
        return 0.9
    if a.isdigit() or b.isdigit():
        return 0.0
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) >= 3 and short[0] == long[0] and len(long) > len(short):
        if long.startswith(short):
            return 0.85
        if _subsequence(short, long) and len(short) * 2 <= len(long) + 1:
            return 0.75
    spelling = dice(trigrams(a), trigrams(b))
    return 0.8 * spelling if spelling >= 0.55 else 0.0


def _subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(char in letters for char in short)


def name_parts(name: str) -> tuple[str, ...]:
    """A name's words before expansion: split and segmented (what learned synonyms are keyed by)."""
    return tuple(part for token in _split_name(name) for part in _parts(token, {}))


_PATH = re.compile(r"[./:]")


def leaf_of(name: str) -> str:
    """The last segment of a dotted or slashed path (`config.memorySizeMB` -> memorySizeMB): what
    the field itself holds, without the objects it is nested in."""
    segments = [segment for segment in _PATH.split(name) if segment]
    return segments[-1] if segments else name
