#!/usr/bin/env bash
# Checks the running server against its API reference, docs/openapi.yaml,
# with schemathesis (property-based: it generates requests from the
# description, valid and invalid, and checks every answer). Fails on a 5xx
# that the description does not allow, and on any answer whose status,
# content type, headers or body the description does not describe.
#
#   scripts/schemathesis.sh                  # about 2 minutes (CI runs this)
#   ST_MAX_TIME=600 ST_MAX_EXAMPLES=1000 scripts/schemathesis.sh   # longer
#
# Environment:
#   SSECHAT_BIN=PATH      server binary (default: `cargo build` and target/debug/ssechat)
#   ST_MAX_EXAMPLES=60    test cases per operation and phase
#   ST_MAX_TIME=100       time budget of the schemathesis run, seconds
#   ST_SEED=N             reproduce a run
#   ST_ARGS="..."         extra arguments for `st run`
#   PYTHON=python3        the Python that has schemathesis (e.g. a venv's)
# Needs schemathesis (`python3 -m pip install schemathesis`, in a venv on a
# Debian python; Python 3.12 or later runs every phase, see below): .ci/run
# does that. The server runs on a free loopback
# port with a fresh SQLite file in a temp dir; both go when the script ends.
#
# What is bounded and why:
# - GET /chat/events is a stream that never ends: it is not exercised here
#   (the fuzz target `request` and tests/api cover it).
# - Long-polls: the copy of the description given to schemathesis caps
#   `wait` at 0.5 s, so no request is held for long.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES=${ST_MAX_EXAMPLES:-60}
MAX_TIME=${ST_MAX_TIME:-100}

PY=${PYTHON:-python3}

die() { echo "schemathesis.sh: $*" >&2; exit 1; }
command -v "$PY" >/dev/null || die "needs $PY"
"$PY" -m schemathesis.cli --version >/dev/null 2>&1 ||
    die "schemathesis is not installed for $PY (python3 -m pip install schemathesis)"
# On a Python before 3.12 the coverage phase is left out, loudly (a CPython
# 3.11 bug breaks it: scripts/lib.sh).
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
phases=()
if ! python_3_12_or_later "$PY"; then
    echo "schemathesis.sh: NOTE $("$PY" --version 2>&1): the coverage phase is skipped (a CPython 3.11 bug breaks it); use Python 3.12+ for all phases" >&2
    phases=(--phases examples,fuzzing,stateful)
fi

if [ -n "${SSECHAT_BIN:-}" ]; then
    BIN=$SSECHAT_BIN
else
    cargo build --quiet --bin ssechat
    BIN=target/debug/ssechat
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

WORK=$(mktemp -d /tmp/ssechat-schemathesis.XXXXXX)
SERVER=
cleanup() {
    [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true
    [ -z "$SERVER" ] || wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The description as schemathesis sees it: long-poll waits capped.
"$PY" - "$WORK/openapi.yaml" <<'EOF'
import sys, yaml
spec = yaml.safe_load(open("docs/openapi.yaml"))
for p in spec["paths"]["/chat/messages"]["get"]["parameters"]:
    if p.get("name") == "wait":
        p["schema"]["maximum"] = 0.5
        break
else:
    sys.exit("schemathesis.sh: no 'wait' parameter on GET /chat/messages")
yaml.safe_dump(spec, open(sys.argv[1], "w"), sort_keys=False)
EOF

# Posting is not rate-limited here, so that every valid message is stored
# (the 429 answer itself is covered by tests/api).
start_ssechat schemathesis.sh "$WORK/server.log" "$BIN" --db "$WORK/st.db" --post-rate 0

echo "schemathesis.sh: server on 127.0.0.1:$PORT; at most $MAX_EXAMPLES examples per operation, ${MAX_TIME} s" >&2
status=0
# shellcheck disable=SC2086
# Run from the temp dir: schemathesis keeps its example database in the
# working directory.
(cd "$WORK" && timeout --signal=INT $((MAX_TIME + 150)) "$PY" -m schemathesis.cli run "$WORK/openapi.yaml" \
    --url "http://127.0.0.1:$PORT" \
    --exclude-operation-id events \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,positive_data_acceptance \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --request-timeout 10 \
    --max-redirects 0 \
    --workers 2 \
    ${ST_SEED:+--seed "$ST_SEED"} \
    "${phases[@]}" \
    ${ST_ARGS:-}) || status=$?

if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "schemathesis.sh: ERROR the server died during the run:" >&2
    tail -20 "$WORK/server.log" >&2
    status=1
fi
if grep -qi "panic" "$WORK/server.log"; then
    echo "schemathesis.sh: ERROR the server log mentions a panic:" >&2
    grep -i -A5 "panic" "$WORK/server.log" | head -30 >&2
    status=1
fi
exit $status
