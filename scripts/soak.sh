#!/usr/bin/env bash
# The soak: 30 minutes of moderate load with churn against a release server
# on loopback, with the server's RSS and open files sampled from /proc every
# 10 s. Prints the drift (first vs last 5 minutes) and exits 1 on any error.
# Not part of CI (too long); see docs/testing.md.
#
#   scripts/soak.sh                      # 30 minutes, builds the release binary if missing
#   SOAK_SECONDS=120 scripts/soak.sh     # a short run
#
# Environment:
#   SOAK_SECONDS=1800       how long the load runs (the script ends by itself)
#   SSECHAT_BIN=PATH        the server binary (default target/release/ssechat)
#   SOAK_OUT=DIR            where the CSV and the server log go (default: a temp dir, kept)
#   SOAK_DB=:memory:        history store (default: a SQLite file in SOAK_OUT)
#   SOAK_ARGS="..."         more server flags (e.g. "--history 100")
# The server inherits the environment, so e.g. MALLOC_ARENA_MAX=2
# scripts/soak.sh runs it with two glibc malloc arenas.
# The load itself (readers, posters, long-pollers, non-readers) is described
# in scripts/soak.py. Clients bind to 127.0.0.2-127.0.0.9.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TOTAL=${SOAK_SECONDS:-1800}
BIN=${SSECHAT_BIN:-target/release/ssechat}
OUT=${SOAK_OUT:-$(mktemp -d /tmp/ssechat-soak.XXXXXX)}
mkdir -p "$OUT"
DB=${SOAK_DB:-$OUT/soak.db}

die() { echo "soak.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "needs python3"
if [ ! -x "$BIN" ]; then
    [ -z "${SSECHAT_BIN:-}" ] || die "$BIN is not an executable"
    echo "soak.sh: building the release binary" >&2
    cargo build --release --bin ssechat
fi

# Default limits: the soak is the product as shipped.
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck disable=SC2086
start_ssechat soak.sh "$OUT/server.log" "$BIN" --db "$DB" ${SOAK_ARGS:-}
cleanup() { kill "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT

echo "soak.sh: server pid $SERVER on 127.0.0.1:$PORT, db $DB, ${SECONDS_TOTAL} s; output in $OUT" >&2
status=0
timeout --signal=INT $((SECONDS_TOTAL + 120)) \
    python3 scripts/soak.py "$SERVER" "$PORT" "$SECONDS_TOTAL" "$OUT/samples.csv" || status=$?

# A clean stop is part of the check: SIGTERM, exit 0 within the shutdown timeout.
kill -TERM "$SERVER"
for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER" 2>/dev/null; then
    echo "soak.sh: ERROR the server did not exit within 10 s of SIGTERM" >&2
    kill -KILL "$SERVER"; status=1
else
    wait "$SERVER" || { echo "soak.sh: ERROR the server exited with $?" >&2; status=1; }
fi
trap - EXIT
panics=$(grep -c -i "panic" "$OUT/server.log" || true)
if [ "$panics" != 0 ]; then
    echo "soak.sh: ERROR the server log mentions a panic ($panics lines)" >&2; status=1
fi
echo "soak.sh: samples $OUT/samples.csv, server log $OUT/server.log" >&2
exit $status
