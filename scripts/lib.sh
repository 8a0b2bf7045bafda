# Shared by the scripts that run a server of their own (sourced, not run).
#
# start_ssechat NAME LOG BIN [FLAGS...]: starts BIN on 127.0.0.1, port 0,
# with FLAGS, logging to LOG, and waits (at most 15 s) for its "listening
# on" line. Sets SERVER (the pid) and PORT. NAME prefixes the error: the
# server exited at start, or never listened.
start_ssechat() {
    local name=$1 log=$2 bin=$3
    shift 3
    RUST_LOG="${RUST_LOG:-warn},ssechat::startup=info" "$bin" --host 127.0.0.1 --port 0 "$@" \
        >"$log" 2>&1 &
    SERVER=$!
    PORT=""
    local _
    for _ in $(seq 150); do
        PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$log" | head -1)
        [ -n "$PORT" ] && return 0
        if ! kill -0 "$SERVER" 2>/dev/null; then
            echo "$name: the server exited at start: $(tail -5 "$log")" >&2
            exit 1
        fi
        sleep 0.1
    done
    kill "$SERVER" 2>/dev/null
    echo "$name: the server did not listen within 15 s: $(tail -5 "$log")" >&2
    exit 1
}
