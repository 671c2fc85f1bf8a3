#!/usr/bin/env bash
# Build the one-folder Linux app (packaging/dist/sorat/) with PyInstaller, then smoke-test it.
# Usage: packaging/build_linux.sh [--skip-build]   (env: PYTHON=python3.11, to pick the interpreter)
# Everything it writes is under packaging/build/ (venv, PyInstaller work dir) and packaging/dist/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BUILD="$HERE/build"
DIST="$HERE/dist"
VENV="$BUILD/venv"
PYTHON="${PYTHON:-python3}"
BIN="$DIST/sorat/sorat"

fail() { echo "build_linux.sh: FAIL: $*" >&2; exit 1; }

if [[ "${1:-}" != "--skip-build" ]]; then
    start=$(date +%s)
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The repo (for its dependencies; the spec bundles sorat_daemon from this checkout) and PyInstaller.
    "$VENV/bin/python" -m pip install --quiet "$ROOT" pyinstaller
    "$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
        --workpath "$BUILD/work" --distpath "$DIST" "$HERE/sorat.spec"
    echo "build_linux.sh: built $DIST/sorat in $(( $(date +%s) - start )) s, $(du -sh "$DIST/sorat" | cut -f1)"
fi

[[ -x "$BIN" ]] || fail "no binary at $BIN"

# --- smoke test ---------------------------------------------------------------------------------------------
SMOKE_HOME="$(mktemp -d /tmp/sorat-smoke.XXXXXX)"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$SMOKE_HOME"
}
trap cleanup EXIT

version="$("$BIN" --version)" || fail "--version exited non-zero"
[[ "$version" == sorat\ * ]] || fail "--version printed '$version'"
echo "build_linux.sh: $version"

# A scripted provider on loopback (the test suite's), so the app makes a real model call through its bundled
# HTTP client and writes a session.
UP_LOG="$SMOKE_HOME/upstream.out"
"$VENV/bin/python" -u - "$ROOT" >"$UP_LOG" 2>&1 <<'PY' &
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.upstream import Upstream, text
with Upstream(models=["smoke-model"]) as up:
    up.default = text("packaged and answering", chunks=1)
    print(up.base_url, flush=True)
    while True:
        time.sleep(3600)
PY
UP_PID=$!
trap 'kill "$UP_PID" 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do [[ -s "$UP_LOG" ]] && break; sleep 0.1; done
UPSTREAM="$(head -1 "$UP_LOG")"
[[ "$UPSTREAM" == http://127.0.0.1:* ]] || { cat "$UP_LOG" >&2; fail "the scripted provider did not start"; }
printf '[agent]\nmodel = "smoke-model"\n\n[[providers]]\nname = "smoke"\nbase_url = "%s"\napi_key = "sk-smoke"\n' \
    "$UPSTREAM" >"$SMOKE_HOME/config.toml"

PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
LOG="$SMOKE_HOME/serve.out"
env -u DISPLAY -u WAYLAND_DISPLAY SORAT_HOME="$SMOKE_HOME" "$BIN" serve --port "$PORT" >"$LOG" 2>&1 &
PID=$!

deadline=$(( $(date +%s) + 30 ))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" == 200 ]]; do
    kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; fail "serve exited before /health answered"; }
    (( $(date +%s) < deadline )) || { cat "$LOG" >&2; fail "/health did not answer 200 within 30 s"; }
    sleep 0.2
done
echo "build_linux.sh: /health 200 on port $PORT"

[[ -s "$SMOKE_HOME/token" ]] || fail "no token at \$SORAT_HOME/token"
TOKEN="$(tr -d '[:space:]' <"$SMOKE_HOME/token")"
code="$(curl -s -o "$SMOKE_HOME/models.json" -w '%{http_code}' \
    -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/v1/models")"
[[ "$code" == 200 ]] || { cat "$SMOKE_HOME/models.json" >&2; fail "/v1/models answered $code"; }
"$VENV/bin/python" - "$SMOKE_HOME/models.json" <<'PY' || fail "/v1/models did not return a model list"
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["object"] == "list" and any(m["id"] == "sorat-agent" for m in doc["data"]), doc
PY
echo "build_linux.sh: /v1/models 200 with a model list"

code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/openapi.json")"
[[ "$code" == 200 ]] || fail "/openapi.json answered $code (package data missing?)"

code="$(curl -s -o "$SMOKE_HOME/chat.out" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -H 'X-Session-ID: smoke' \
    -d '{"model": "sorat-agent", "stream": true, "messages": [{"role": "user", "content": "hi"}]}' \
    "http://127.0.0.1:$PORT/v1/chat/completions")"
[[ "$code" == 200 ]] || { cat "$SMOKE_HOME/chat.out" >&2; fail "a streamed chat answered $code"; }
grep -q 'data: \[DONE\]' "$SMOKE_HOME/chat.out" && grep -q 'answering' "$SMOKE_HOME/chat.out" \
    || { cat "$SMOKE_HOME/chat.out" >&2; fail "the streamed chat did not relay the provider's answer"; }
[[ -s "$SMOKE_HOME/sessions/smoke.jsonl" ]] || fail "the chat left no session file"
echo "build_linux.sh: a streamed chat through the scripted provider, saved as a session"

kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
PID=""
[[ "$rc" == 0 ]] || { cat "$LOG" >&2; fail "serve exited $rc after SIGTERM"; }
if grep -E "Traceback|ModuleNotFoundError|ImportError" "$LOG" "$SMOKE_HOME"/logs/* 2>/dev/null; then
    fail "tracebacks or import errors in the logs"
fi
echo "build_linux.sh: SIGTERM -> exit 0"

# The tray as a StatusNotifierItem (the bundled dbus-fast and pixmaps): on a private session bus with a
# StatusNotifierWatcher (the test suite's), the app in tray mode, without a display, registers its item.
if command -v dbus-daemon >/dev/null 2>&1; then
    BUS_OUT="$SMOKE_HOME/bus.out"
    dbus-daemon --session --print-address --nofork >"$BUS_OUT" 2>/dev/null &
    BUS_PID=$!
    trap 'kill "$UP_PID" "$BUS_PID" "${WATCH_PID:-}" 2>/dev/null || true; cleanup' EXIT
    for _ in $(seq 1 100); do [[ -s "$BUS_OUT" ]] && break; sleep 0.1; done
    BUS="$(head -1 "$BUS_OUT")"
    [[ -n "$BUS" ]] || fail "dbus-daemon did not start"
    WATCH_LOG="$SMOKE_HOME/watcher.out"
    DBUS_SESSION_BUS_ADDRESS="$BUS" "$VENV/bin/python" -u -c \
        "import sys; sys.path.insert(0, sys.argv.pop(1)); from tests.desktop.sni_host import WATCHER_APP; exec(WATCHER_APP)" \
        "$ROOT" accept >"$WATCH_LOG" 2>&1 &
    WATCH_PID=$!
    for _ in $(seq 1 100); do grep -q watching "$WATCH_LOG" 2>/dev/null && break; sleep 0.1; done
    TRAY_LOG="$SMOKE_HOME/tray.out"
    env -u DISPLAY -u WAYLAND_DISPLAY -u PYSTRAY_BACKEND SORAT_HOME="$SMOKE_HOME" DBUS_SESSION_BUS_ADDRESS="$BUS" \
        XDG_RUNTIME_DIR="$SMOKE_HOME" "$BIN" >"$TRAY_LOG" 2>&1 &
    PID=$!
    deadline=$(( $(date +%s) + 30 ))
    until grep -q "registered" "$WATCH_LOG" && grep -q "sorat serving on" "$TRAY_LOG"; do
        kill -0 "$PID" 2>/dev/null || { cat "$TRAY_LOG" >&2; fail "the tray exited before registering"; }
        (( $(date +%s) < deadline )) || { cat "$TRAY_LOG" "$WATCH_LOG" >&2; fail "no StatusNotifierItem within 30 s"; }
        sleep 0.2
    done
    kill -TERM "$PID"
    rc=0
    wait "$PID" || rc=$?
    PID=""
    [[ "$rc" == 0 ]] || { cat "$TRAY_LOG" >&2; fail "the tray exited $rc after SIGTERM"; }
    if grep -E "Traceback|ModuleNotFoundError|ImportError|no tray" "$TRAY_LOG"; then
        fail "the StatusNotifierItem tray did not come up cleanly"
    fi
    echo "build_linux.sh: the tray registered its StatusNotifierItem on a private session bus; SIGTERM -> exit 0"
else
    echo "build_linux.sh: no dbus-daemon here: the StatusNotifierItem check is skipped"
fi
echo "build_linux.sh: OK"
