# Shared by the scripts (sourced, not run).
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

# schemathesis wants Python 3.12 or later: CPython 3.11's ast.parse fails at
# random stack depths with "SystemError: AST constructor recursion depth
# mismatch" (CPython issue 106905), which hypothesis's lambda descriptions
# hit in schemathesis's coverage phase (seen on 3.11.2 and 3.11.7, never on
# 3.12.1 or 3.13.0).
#
# python_3_12_or_later PY: whether PY runs and is 3.12 or later.
python_3_12_or_later() {
    [ "$("$1" -c 'import sys; print(sys.version_info >= (3, 12))' 2>/dev/null)" = True ]
}

# pick_python: prints the newest Python 3.12+ found (python3.14, 3.13, 3.12
# on PATH, then pyenv's versions), else python3.
pick_python() {
    local c
    for c in python3.14 python3.13 python3.12 \
        $(command -v pyenv >/dev/null && ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
        if python_3_12_or_later "$c"; then
            echo "$c"
            return
        fi
    done
    echo python3
}
