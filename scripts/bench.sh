#!/usr/bin/env bash
# Runs the standard benchmark scenarios against ssechat and the minimal
# reference server (sse-reference), interleaved, each run on a fresh server
# process on a free loopback port, and prints median (min-max) and ratios.
# See docs/BENCHMARK.md.
#
# Environment:
#   SCENARIOS="1 2 3 4 5 6 7 8"  which scenarios to run (6 and 7: crowds;
#                          8: HTTPS and HTTP/2, with tls-load)
#   ROUNDS=3               runs per server and scenario (QUICK: 1)
#   FANOUT_DB=:memory:     in-memory store for scenarios 1-3 (default: SQLite)
#   QUICK=1                small numbers, finishes in well under a minute
#   SKIP_BUILD=1           use the binaries already in $BIN_DIR
#   BIN_DIR=target/release where the binaries are
#   OUT_DIR=DIR            keep raw JSON results and logs there
#                          (default: a temp dir, removed unless KEEP=1)
#   BENCH_ARGS="..."       extra flags for every ssechat-bench run
#   SQLITE=1               also run scenario 4 with a SQLite file (default 1;
#                          "n/a" when ssechat refuses the --db path)
#   Scenario sizes: S1_SUBS S1_MSGS S1_INFLIGHT  S2_SUBS S2_RATE S2_MSGS
#                   S3_CONNS S3_ROOMS  S4_MSGS S4_INFLIGHT
#                   S6_CONNS  S7_CONNS S7_MSGS S7_RATE
#                   S8_SUBS S8_MSGS S8_IDLE S8_HS_SECONDS
set -u -o pipefail

cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    S1_SUBS=${S1_SUBS:-100};   S1_MSGS=${S1_MSGS:-300};  S1_INFLIGHT=${S1_INFLIGHT:-16}
    S2_SUBS=${S2_SUBS:-100};   S2_RATE=${S2_RATE:-100};  S2_MSGS=${S2_MSGS:-100}
    S3_CONNS=${S3_CONNS:-1000}; S3_ROOMS=${S3_ROOMS:-10}
    S4_MSGS=${S4_MSGS:-2000};  S4_INFLIGHT=${S4_INFLIGHT:-64}
    S6_CONNS=${S6_CONNS:-1000}
    S7_CONNS=${S7_CONNS:-1000}; S7_MSGS=${S7_MSGS:-20}; S7_RATE=${S7_RATE:-50}
    S8_SUBS=${S8_SUBS:-50}; S8_MSGS=${S8_MSGS:-100}; S8_IDLE=${S8_IDLE:-200}; S8_HS_SECONDS=${S8_HS_SECONDS:-2}
else
    ROUNDS=${ROUNDS:-3}
    S1_SUBS=${S1_SUBS:-1000};  S1_MSGS=${S1_MSGS:-2000}; S1_INFLIGHT=${S1_INFLIGHT:-16}
    S2_SUBS=${S2_SUBS:-1000};  S2_RATE=${S2_RATE:-100};  S2_MSGS=${S2_MSGS:-1000}
    S3_CONNS=${S3_CONNS:-10000}; S3_ROOMS=${S3_ROOMS:-100}
    S4_MSGS=${S4_MSGS:-20000}; S4_INFLIGHT=${S4_INFLIGHT:-64}
    S6_CONNS=${S6_CONNS:-10000}
    S7_CONNS=${S7_CONNS:-19000}; S7_MSGS=${S7_MSGS:-100}; S7_RATE=${S7_RATE:-50}
    S8_SUBS=${S8_SUBS:-500}; S8_MSGS=${S8_MSGS:-1000}; S8_IDLE=${S8_IDLE:-2000}; S8_HS_SECONDS=${S8_HS_SECONDS:-5}
fi
SCENARIOS=${SCENARIOS:-"1 2 3 4 5 6 7 8"}
BIN_DIR=${BIN_DIR:-target/release}
SQLITE=${SQLITE:-1}

SSECHAT="$BIN_DIR/ssechat"
REFERENCE="$BIN_DIR/sse-reference"
BENCH="$BIN_DIR/ssechat-bench"
TLSLOAD="$BIN_DIR/tls-load"
# Scenario 8 serves HTTPS: the flags of both servers, the health check's URL.
TLS_FLAGS=()
SCHEME=http
SSECHAT_FLAGS=(--post-rate 0 --max-streams 0 --max-streams-per-ip 0 --max-long-polls 0
    --max-connections-per-ip 0)

die() { echo "bench.sh: $*" >&2; exit 1; }
log() { echo "bench.sh: $*" >&2; }

command -v jq >/dev/null || die "needs jq"

if [ -n "${OUT_DIR:-}" ]; then
    mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
    WORK=$(cd "$OUT_DIR" && pwd)
    KEEP=1
else
    WORK=$(mktemp -d /tmp/ssechat-bench.XXXXXX)
    KEEP=${KEEP:-0}
fi
RAW="$WORK/raw.jsonl"
: >"$RAW"

SERVER_PID=""
PORT=""

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
}

cleanup() {
    stop_server
    if [ "$KEEP" = 1 ]; then
        log "raw results and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# The servers and the bench need many descriptors (10,000+ connections).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries (LTO: this takes a while)"
    timeout 3600 cargo build --release --workspace --bins >&2 \
        || die "release build failed"
fi
for b in "$SSECHAT" "$REFERENCE" "$BENCH" "$TLSLOAD"; do
    [ -x "$b" ] || die "missing $b (build, or set BIN_DIR)"
done

# start_server KIND [DB]: a fresh server on a free loopback port.
start_server() {
    local kind=$1 db=${2:-:memory:}
    PORT=$("$BENCH" --free-port) || die "no free port"
    case $kind in
        ssechat) "$SSECHAT" --port "$PORT" "${SSECHAT_FLAGS[@]}" --db "$db" \
                     "${TLS_FLAGS[@]}" >>"$WORK/server.log" 2>&1 &;;
        reference) "$REFERENCE" --port "$PORT" "${TLS_FLAGS[@]}" >>"$WORK/server.log" 2>&1 &;;
        *) die "unknown server $kind";;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 200); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null
            SERVER_PID=""
            return 1
        fi
        if curl -sf -m 1 ${TLS_FLAGS[0]:+--cacert "$WORK/tls/ca.pem"} \
            "$SCHEME://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    stop_server
    return 1
}

# bench SCENARIO KIND ROUND TIMEOUT ARGS...: runs the load generator against
# the running server, appends its JSON (tagged) to $RAW, echoes the JSON.
bench() {
    local scenario=$1 kind=$2 round=$3 t=$4
    shift 4
    local mode=$kind
    [ "$kind" = reference ] || mode=ssechat
    local json
    json=$(timeout $((t + 60)) "$BENCH" --mode "$mode" --url "http://127.0.0.1:$PORT" \
        --pid "$SERVER_PID" --timeout "$t" --json ${BENCH_ARGS:-} "$@" 2>>"$WORK/bench.log" | tail -n 1)
    if [ -z "$json" ] || ! jq -e . >/dev/null 2>&1 <<<"$json"; then
        json='{"ok":false,"error":"no result"}'
    fi
    jq -c --arg s "$scenario" --arg k "$kind" --argjson r "$round" \
        '. + {scenario: $s, kind: $k, round: $r}' <<<"$json" >>"$RAW"
    echo "$json"
}

# values SCENARIO KIND JQ_EXPR: one value per round (numbers only).
values() {
    jq -r --arg s "$1" --arg k "$2" \
        "select(.scenario == \$s and .kind == \$k) | ($3) // empty" "$RAW" \
        | grep -E '^-?[0-9.e+-]+$'
}

fails() {
    jq -r --arg s "$1" --arg k "$2" \
        'select(.scenario == $s and .kind == $k) | select(.ok != true) | 1' "$RAW" | wc -l
}

# summ DIGITS < values: "median (min-max)" or "n/a".
summ() {
    sort -g | awk -v d="$1" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { printf "n/a"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            f = "%." d "f"
            if (NR == 1) printf f, m
            else printf f " (" f "-" f ")", m, v[1], v[NR]
        }'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() {
    local a b
    a=$(values "$1" "$2" "$4" | median)
    b=$(values "$1" "$3" "$4" | median)
    if [ -n "$a" ] && [ -n "$b" ]; then
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'
    else
        printf "n/a"
    fi
}

ROWS=()
# row LABEL SCENARIO KIND_A KIND_B JQ DIGITS
row() {
    local label=$1 s=$2 ka=$3 kb=$4 expr=$5 d=$6
    local a b r fa fb
    a=$(values "$s" "$ka" "$expr" | summ "$d")
    fa=$(fails "$s" "$ka")
    [ "$fa" -gt 0 ] && a="$a [FAIL x$fa]"
    if [ -n "$kb" ]; then
        b=$(values "$s" "$kb" "$expr" | summ "$d")
        fb=$(fails "$s" "$kb")
        [ "$fb" -gt 0 ] && b="$b [FAIL x$fb]"
        r=$(ratio "$s" "$ka" "$kb" "$expr")
    else
        b="-"
        r="-"
    fi
    ROWS+=("$(printf '%-46s | %-30s | %-30s | %s' "$label" "$a" "$b" "$r")")
}

# correctness ROW: lost/duplicated/out-of-order totals over all rounds.
check_row() {
    local label=$1 s=$2 ka=$3 kb=$4
    local cell k out=()
    for k in "$ka" "$kb"; do
        cell=$(jq -rs --arg s "$s" --arg k "$k" '
            map(select(.scenario == $s and .kind == $k)) |
            "lost \(map(.lost // 0) | add // 0) dup \(map(.duplicated // 0) | add // 0) ooo \(map((.out_of_order // 0) + (.order_mismatch // 0)) | add // 0)"' "$RAW")
        out+=("$cell")
    done
    ROWS+=("$(printf '%-46s | %-30s | %-30s | %s' "$label" "${out[0]}" "${out[1]}" "-")")
}

run_pair() { # SCENARIO TIMEOUT ARGS... (both servers, interleaved)
    local s=$1 t=$2 round kind
    shift 2
    for round in $(seq 1 "$ROUNDS"); do
        for kind in ssechat reference; do
            # ssechat runs as shipped: history in a fresh SQLite file
            # (FANOUT_DB=:memory: for the in-memory store).
            rm -f "$WORK/fanout.db"*
            if start_server "$kind" "${FANOUT_DB:-$WORK/fanout.db}"; then
                log "scenario $s round $round: $kind"
                bench "$s" "$kind" "$round" "$t" "$@" >/dev/null
            else
                log "scenario $s round $round: $kind did not start"
                echo "{\"ok\":false,\"scenario\":\"$s\",\"kind\":\"$kind\",\"round\":$round}" >>"$RAW"
            fi
            stop_server
        done
    done
}

T0=$(date +%s)
for s in $SCENARIOS; do
    case $s in
    1)
        run_pair 1 120 --subscribers "$S1_SUBS" --messages "$S1_MSGS" --in-flight "$S1_INFLIGHT"
        row "1 fan-out ${S1_SUBS}x${S1_MSGS} @${S1_INFLIGHT}: CPU us/delivery" 1 ssechat reference .cpu_us_per_delivery 3
        check_row "1   correctness (sum over rounds)" 1 ssechat reference
        row "1   deliveries/s" 1 ssechat reference .deliveries_per_s 0
        row "1   latency p99 ms" 1 ssechat reference .latency_ms.p99 1
        ;;
    2)
        run_pair 2 $((S2_MSGS / S2_RATE + 60)) --subscribers "$S2_SUBS" --messages "$S2_MSGS" --rate "$S2_RATE"
        row "2 ${S2_RATE} msg/s -> ${S2_SUBS} subs: latency p99 ms" 2 ssechat reference .latency_ms.p99 2
        row "2   latency p50 ms" 2 ssechat reference .latency_ms.p50 2
        row "2   latency max ms" 2 ssechat reference .latency_ms.max 2
        check_row "2   correctness (sum over rounds)" 2 ssechat reference
        row "2   CPU us/delivery" 2 ssechat reference .cpu_us_per_delivery 3
        ;;
    3)
        # ssechat: the connections spread over S3_ROOMS rooms, so the join
        # events of N distinct clients (N^2/2 in one room) stay out of it.
        run_pair 3 300 --idle-only --subscribers "$S3_CONNS" --rooms "$S3_ROOMS"
        row "3 ${S3_CONNS} idle conns: RSS KiB/conn" 3 ssechat reference .rss_kib_per_conn 2
        row "3   connect all s" 3 ssechat reference .connect_s 2
        row "3   new client served after all left, ms" 3 ssechat reference .reconnect_ms 1
        ;;
    4)
        for round in $(seq 1 "$ROUNDS"); do
            for kind in ssechat-mem ssechat-sqlite reference; do
                case $kind in
                    ssechat-mem) start_server ssechat :memory:;;
                    ssechat-sqlite)
                        [ "$SQLITE" = 1 ] || continue
                        rm -f "$WORK/s4.db" "$WORK/s4.db-wal" "$WORK/s4.db-shm"
                        start_server ssechat "$WORK/s4.db";;
                    reference) start_server reference;;
                esac
                # shellcheck disable=SC2181
                if [ $? -eq 0 ]; then
                    log "scenario 4 round $round: $kind"
                    bench 4 "$kind" "$round" 120 --subscribers 0 \
                        --messages "$S4_MSGS" --in-flight "$S4_INFLIGHT" >/dev/null
                else
                    log "scenario 4 round $round: $kind did not start"
                fi
                stop_server
                rm -f "$WORK/s4.db" "$WORK/s4.db-wal" "$WORK/s4.db-shm"
            done
        done
        row "4 POST ${S4_INFLIGHT} in flight, :memory:: msgs/s" 4 ssechat-mem reference .posts_per_s 0
        row "4   SQLite store: msgs/s" 4 ssechat-sqlite reference .posts_per_s 0
        row "4   :memory: POST p99 ms" 4 ssechat-mem reference .post_rtt_ms.p99 2
        row "4   :memory: CPU us/POST" 4 ssechat-mem reference .cpu_us_per_post 1
        ;;
    5)
        for kind in ssechat reference; do
            bin=$SSECHAT
            [ "$kind" = reference ] && bin=$REFERENCE
            size=$(stat -c %s "$bin")
            if command -v strip >/dev/null; then
                cp "$bin" "$WORK/stripped" && strip "$WORK/stripped" 2>/dev/null \
                    && size=$(stat -c %s "$WORK/stripped")
                rm -f "$WORK/stripped"
            fi
            echo "{\"scenario\":\"5\",\"kind\":\"$kind\",\"round\":0,\"ok\":true,\"binary_mib\":$(awk -v s="$size" 'BEGIN{printf "%.3f", s/1048576}')}" >>"$RAW"
        done
        for round in $(seq 1 "$ROUNDS"); do
            for kind in ssechat reference; do
                PORT=$("$BENCH" --free-port)
                if [ "$kind" = ssechat ]; then
                    cmd=("$SSECHAT" --port "$PORT" "${SSECHAT_FLAGS[@]}" --db :memory:)
                else
                    cmd=("$REFERENCE" --port "$PORT")
                fi
                log "scenario 5 round $round: $kind"
                json=$(timeout 60 "$BENCH" --startup-probe --url "http://127.0.0.1:$PORT" --json \
                    -- "${cmd[@]}" 2>>"$WORK/bench.log" | tail -n 1)
                [ -n "$json" ] || json='{"ok":false}'
                jq -c --arg k "$kind" --argjson r "$round" \
                    '. + {scenario: "5", kind: $k, round: $r}' <<<"$json" >>"$RAW"
            done
        done
        row "5 footprint: stripped binary MiB" 5 ssechat reference .binary_mib 2
        row "5   idle RSS of a fresh server KiB" 5 ssechat reference .idle_rss_kib 0
        row "5   start -> first 200 on /healthz ms" 5 ssechat reference .startup_ms 1
        ;;
    6)
        # Crowds: every subscriber in one room (N distinct clients), and a
        # watcher that was there first, through the join and leave storms.
        run_pair 6 300 --idle-only --subscribers "$S6_CONNS" --rooms 1 --watcher
        row "6 ${S6_CONNS} join one room: all hello'd, s" 6 ssechat reference .connect_s 2
        row "6   subscribers dropped by the server" 6 ssechat reference '.disconnected + .connect_failed' 0
        row "6   watcher cut off (runs)" 6 ssechat reference 'if .watcher_cut_off then 1 else 0 end' 0
        row "6   watcher presence events, join storm" 6 ssechat "" .watcher_presence_join 0
        row "6   ... per 100 ms of the storm" 6 ssechat "" '.watcher_presence_join / ([.connect_s * 10, 1] | max)' 2
        row "6   watcher presence events, leave storm" 6 ssechat "" .watcher_presence_leave 0
        row "6   all left -> watcher told it is alone, s" 6 ssechat "" .leave_s 2
        row "6   RSS KiB/conn, all in one room" 6 ssechat reference .rss_kib_per_conn 2
        ;;
    7)
        # A crowd that stays: everybody in one room, then messages at a
        # fixed rate. Needs an open-files limit above S7_CONNS + 100.
        run_pair 7 $((S7_MSGS / S7_RATE + 240)) --subscribers "$S7_CONNS" --messages "$S7_MSGS" --rate "$S7_RATE"
        row "7 ${S7_CONNS} in one room, ${S7_RATE} msg/s: p99 ms" 7 ssechat reference .latency_ms.p99 1
        row "7   latency p50 ms" 7 ssechat reference .latency_ms.p50 1
        check_row "7   correctness (sum over rounds)" 7 ssechat reference
        row "7   subscribers dropped / failed" 7 ssechat reference '.disconnected + .connect_failed' 0
        row "7   connect all s" 7 ssechat reference .connect_s 2
        ;;
    8)
        # HTTPS: the same rustls (ring) in both servers, HTTP/2 or HTTP/1.1
        # by ALPN; tls-load is the client (hyper + rustls), one connection
        # per subscriber, the posters on HTTP/1.1 connections of their own.
        "$TLSLOAD" --make-cert "$WORK/tls" || die "tls-load --make-cert failed"
        TLS_FLAGS=(--tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem")
        SCHEME=https
        tls_run() { # FIGURE KIND ROUND TLS-LOAD-ARGS...: one run on the running server
            local figure=$1 kind=$2 round=$3 json
            shift 3
            json=$(timeout 300 "$TLSLOAD" --addr "127.0.0.1:$PORT" --ca "$WORK/tls/ca.pem" \
                --pid "$SERVER_PID" --mode "$kind" --timeout 120 "$@" 2>>"$WORK/bench.log" | tail -n 1)
            jq -e . >/dev/null 2>&1 <<<"$json" || json='{"ok":false,"error":"no result"}'
            jq -c --arg s "$figure" --arg k "$kind" --argjson r "$round" \
                '. + {scenario: $s, kind: $k, round: $r}' <<<"$json" >>"$RAW"
        }
        tls_fresh() { # FIGURE KIND ROUND TLS-LOAD-ARGS...: the same, on a fresh server
            if start_server "$2"; then
                log "scenario 8 round $3: $2 $1"
                tls_run "$@"
            else
                log "scenario 8 round $3: $2 did not start"
                echo "{\"ok\":false,\"scenario\":\"$1\",\"kind\":\"$2\",\"round\":$3}" >>"$RAW"
            fi
            stop_server
        }
        for round in $(seq 1 "$ROUNDS"); do
            for proto in h1 h2; do
                for kind in ssechat reference; do
                    tls_fresh "8-fan-$proto" "$kind" "$round" --test fanout --proto "$proto" \
                        --subscribers "$S8_SUBS" --messages "$S8_MSGS"
                done
                for kind in ssechat reference; do
                    tls_fresh "8-idle-$proto" "$kind" "$round" --test idle --proto "$proto" \
                        --subscribers "$S8_IDLE"
                done
            done
            for kind in ssechat reference; do
                tls_fresh 8-hs "$kind" "$round" --test handshakes --seconds "$S8_HS_SECONDS"
            done
        done
        TLS_FLAGS=()
        SCHEME=http
        row "8 HTTPS/1.1 fan-out ${S8_SUBS}x${S8_MSGS}: CPU us/delivery" 8-fan-h1 ssechat reference .cpu_us_per_delivery 3
        row "8   HTTP/2 (TLS) fan-out: CPU us/delivery" 8-fan-h2 ssechat reference .cpu_us_per_delivery 3
        row "8   HTTPS/1.1 fan-out: deliveries/s" 8-fan-h1 ssechat reference .deliveries_per_s 0
        row "8   HTTP/2 (TLS) fan-out: deliveries/s" 8-fan-h2 ssechat reference .deliveries_per_s 0
        row "8 HTTPS/1.1 ${S8_IDLE} idle streams: RSS KiB/conn" 8-idle-h1 ssechat reference .rss_kib_per_conn 2
        row "8   HTTP/2 (TLS) idle streams: RSS KiB/conn" 8-idle-h2 ssechat reference .rss_kib_per_conn 2
        row "8 TLS 1.3 full handshakes/s" 8-hs ssechat reference .handshakes_per_s 0
        row "8   server CPU us/handshake" 8-hs ssechat reference .server_cpu_us_per_handshake 0
        ;;
    *) die "unknown scenario $s";;
    esac
done

echo
echo "ssechat benchmark: rounds=$ROUNDS quick=$QUICK, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - T0 )) s"
printf '%-46s | %-30s | %-30s | %s\n' "scenario / figure" "ssechat median (min-max)" "reference median (min-max)" "ratio"
printf '%s\n' "$(printf -- '-%.0s' $(seq 1 124))"
for r in "${ROWS[@]}"; do
    echo "$r"
done
echo
echo "ratio = ssechat / reference (lower is better for CPU, RSS, latency; higher for msgs/s)."
echo "Scenario 4 rows compare against the reference's POST rate (no store, no JSON)."
FAILED=$(jq -r 'select(.ok != true) | "\(.scenario)/\(.kind)/\(.round)"' "$RAW" | tr '\n' ' ')
if [ -n "$FAILED" ]; then
    echo "runs that failed a correctness check or timed out (scenario/server/round): $FAILED"
    exit 2
fi
