# Shared by the integration tests: start skiff on loopback, talk to its admin API, stop it by pid.
# Each test sources this file; SKIFF (the binary) and SRCDIR come from meson.
set -uo pipefail

: "${SKIFF:?SKIFF must name the skiff binary}"
: "${SRCDIR:?SRCDIR must name the source tree}"
SHARED=${SHARED:-$SRCDIR/../shared}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/skiff-test.XXXXXX")
SKIFF_PID=""
FAILS=0
CHECKS=0

cleanup() {
  if [ -n "$SKIFF_PID" ] && kill -0 "$SKIFF_PID" 2>/dev/null; then
    kill -TERM "$SKIFF_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SKIFF_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SKIFF_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ok() { CHECKS=$((CHECKS + 1)); echo "ok - $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "not ok - $*"; }
check() { # check "description" command...
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
  echo "$((CHECKS - FAILS)) passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
  exit $?
}

# start_skiff ARGS...: starts skiff with its admin on a free loopback port (the bootstrap's
# admin address is overridden through --config-yaml) and waits until the admin API answers.
start_skiff() {
  rm -f "$WORK/admin"
  "$SKIFF" "$@" --admin-address-path "$WORK/admin" >"$WORK/stdout" 2>"$WORK/skiff.log" &
  SKIFF_PID=$!
  for _ in $(seq 100); do
    if [ -s "$WORK/admin" ]; then
      ADMIN="http://$(cat "$WORK/admin")"
      return 0
    fi
    kill -0 "$SKIFF_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "skiff did not start; its log:"; cat "$WORK/skiff.log"
  return 1
}

ADMIN_PORT0='{"admin":{"address":{"socket_address":{"address":"127.0.0.1","port_value":0}}}}'

# stop_skiff SIGNAL: sends the signal and waits (5 s at most) for the exit; sets SKIFF_RC.
stop_skiff() {
  kill "-$1" "$SKIFF_PID"
  for _ in $(seq 50); do kill -0 "$SKIFF_PID" 2>/dev/null || break; sleep 0.1; done
  wait "$SKIFF_PID"; SKIFF_RC=$?
  SKIFF_PID=""
}

wait_exit() { # wait_exit: waits (5 s at most) for skiff to exit by itself; sets SKIFF_RC.
  for _ in $(seq 50); do kill -0 "$SKIFF_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SKIFF_PID" 2>/dev/null; then SKIFF_RC=999; return 1; fi
  wait "$SKIFF_PID"; SKIFF_RC=$?
  SKIFF_PID=""
}

http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
