# Shared helpers for the examples' run.sh scripts. Source it after setting EXAMPLE_DIR:
#
#   EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
#   source "$EXAMPLE_DIR/../lib/common.sh"
#
# Everything an example starts is recorded as "PID START_TIME NAME" lines in $RUN_DIR/pids (the
# start time, from /proc, guards against a recycled PID), and its output goes to
# $RUN_DIR/NAME.log. stop_all kills exactly those processes, nothing else.

EXAMPLES_DIR="$(cd "$EXAMPLE_DIR/.." && pwd)"
REPO_DIR="$(cd "$EXAMPLES_DIR/.." && pwd)"
RUN_DIR="$EXAMPLE_DIR/.run"
PID_FILE="$RUN_DIR/pids"
HTTP_ADDR="127.0.0.1:8500"

# concord: $CONCORD, else `concord` on PATH, else the repository's debug build.
find_concord() {
  if [[ -n "${CONCORD:-}" ]]; then
    :
  elif CONCORD="$(type -P concord)"; then
    :
  else
    CONCORD="$REPO_DIR/target/debug/concord"
  fi
  if [[ ! -x "$CONCORD" ]]; then
    echo "concord not found (tried \$CONCORD, PATH and $REPO_DIR/target/debug/concord); run 'cargo build' first" >&2
    exit 1
  fi
}

# envoy: `envoy` on PATH, else the repository's .venv (scripts/test installs it there).
find_envoy() {
  if ENVOY="$(type -P envoy)"; then
    :
  else
    ENVOY="$REPO_DIR/.venv/bin/envoy"
  fi
  if [[ ! -x "$ENVOY" ]]; then
    echo "envoy not found on PATH nor at $REPO_DIR/.venv/bin/envoy" >&2
    exit 1
  fi
}

# Refuses to start when this example is already running or something else owns the agent ports.
preflight() {
  find_concord
  find_envoy
  if [[ -s "$PID_FILE" ]]; then
    local pid started name
    while read -r pid started name; do
      if still_ours "$pid" "$started"; then
        echo "this example is already running ($name is PID $pid); run ./stop.sh first" >&2
        exit 1
      fi
    done <"$PID_FILE"
  fi
  if curl -s -o /dev/null --max-time 2 "http://$HTTP_ADDR/v1/status/leader"; then
    echo "something already answers on $HTTP_ADDR (another example or agent?); stop it first" >&2
    exit 1
  fi
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"
  : >"$PID_FILE"
}

# start NAME CMD ARGS...: runs CMD in the background, logging to $RUN_DIR/NAME.log, and records
# its PID. (`concord connect envoy` execs Envoy, so its PID is the Envoy's.)
start() {
  local name="$1"
  shift
  "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_time "$pid") $name" >>"$PID_FILE"
  printf '  started %-20s PID %-7s log %s\n' "$name" "$pid" "${RUN_DIR#"$REPO_DIR/"}/$name.log"
}

# start_time PID: the process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
start_time() {
  local t
  t="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20)"
  echo "${t:--}"
}

# still_ours PID START_TIME: whether PID is alive (not a zombie) and is still the process we
# started.
still_ours() {
  local stat
  stat="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$stat" && "${stat%% *}" != Z ]] && [[ "$(echo "$stat" | cut -d' ' -f20)" == "$2" ]]
}

# stop_on_failure: installed as an EXIT trap by run.sh; if the script fails half-way, stops what
# it had started (logs stay in $RUN_DIR).
stop_on_failure() {
  local rc=$?
  if ((rc != 0)); then
    echo "run.sh failed (exit $rc); stopping what it started. Logs: $RUN_DIR" >&2
    stop_all >&2
  fi
}

# all_alive: fails, showing the end of its log, when a process this example started has exited.
all_alive() {
  local pid started name
  while read -r pid started name; do
    if ! still_ours "$pid" "$started"; then
      echo "$name (PID $pid) exited; the end of ${RUN_DIR#"$REPO_DIR/"}/$name.log:" >&2
      tail -15 "$RUN_DIR/$name.log" | sed 's/^/    /' >&2
      return 1
    fi
  done <"$PID_FILE"
}

# wait_until DESCRIPTION TIMEOUT_SECONDS CMD ARGS...: polls CMD every half second; gives up
# early when one of the started processes has died.
wait_until() {
  local what="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    all_alive || return 1
    if ((SECONDS >= deadline)); then
      echo "timed out after ${timeout}s waiting for $what; logs are in $RUN_DIR" >&2
      return 1
    fi
    sleep 0.5
  done
}

agent_up() { curl -sf --max-time 2 "http://$HTTP_ADDR/v1/status/leader" | grep -q ':'; }

# start_agent ARGS...: `concord agent -dev ARGS...`, then waits for a leader.
start_agent() {
  start agent "$CONCORD" agent -dev "$@"
  wait_until "the concord agent on $HTTP_ADDR" 30 agent_up || {
    tail -20 "$RUN_DIR/agent.log" >&2
    exit 1
  }
}

# start_sidecar NAME SERVICE_ID ADMIN_PORT BASE_ID: `concord connect envoy` for SERVICE_ID's
# sidecar, with Envoy's admin API on 127.0.0.1:ADMIN_PORT.
start_sidecar() {
  start "$1" "$CONCORD" connect envoy -sidecar-for "$2" -admin-bind "127.0.0.1:$3" \
    -envoy-binary "$ENVOY" -- --base-id "$4"
}

# passing_instances SERVICE: how many Connect-capable instances of SERVICE are passing.
passing_instances() {
  curl -sf "http://$HTTP_ADDR/v1/health/connect/$1?passing" |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'
}

has_passing() { [[ "$(passing_instances "$1")" -ge "$2" ]]; }

# wait_passing SERVICE [COUNT]: waits until COUNT (default 1) sidecar instances of SERVICE pass
# their checks; the sidecar's TCP check runs every 10 s, so this takes up to ~10 s.
wait_passing() {
  local svc="$1" count="${2:-1}"
  echo "  waiting for $count passing sidecar instance(s) of '$svc' (TCP check interval 10s)..."
  wait_until "passing sidecar instances of $svc" 60 has_passing "$svc" "$count"
}

# wait_http URL: waits until URL answers 200.
wait_http() { wait_until "$1" 30 curl -sf -o /dev/null --max-time 2 "$1"; }

# stop_all: kills exactly the PIDs recorded in $PID_FILE (TERM, then KILL after 5 s).
stop_all() {
  if [[ ! -s "$PID_FILE" ]]; then
    echo "nothing recorded in ${PID_FILE#"$REPO_DIR/"}; not running?"
    return 0
  fi
  local pid started name alive=()
  # Reverse order: Envoys and apps first, the agent last.
  while read -r pid started name; do
    if still_ours "$pid" "$started"; then
      kill "$pid" 2>/dev/null && echo "  stopped $name (PID $pid)"
      alive+=("$pid:$started")
    fi
  done < <(tac "$PID_FILE")
  local deadline=$((SECONDS + 5))
  local entry
  for entry in ${alive[@]+"${alive[@]}"}; do
    pid="${entry%%:*}" started="${entry#*:}"
    while still_ours "$pid" "$started" && ((SECONDS < deadline)); do sleep 0.2; done
    if still_ours "$pid" "$started"; then
      kill -9 "$pid" 2>/dev/null && echo "  killed PID $pid (did not exit on SIGTERM)"
    fi
  done
  : >"$PID_FILE"
}
