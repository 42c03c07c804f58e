# Sourced by scripts/setup.sh (and usable by other scripts): runs one named
# step of a longer job so that the user sees what is happening.
#
#   STEP_PREFIX=setup STEP_TOTAL=5
#   run_step 3 "building the guest kit" "npx nx run guest-kit:build" -- npx nx run guest-kit:build --outputStyle=static
#
# - announces the step ("setup [3/5] building the guest kit");
# - keeps the tool's output in a log file and, while the tool runs, prints a
#   progress line every STEP_PROGRESS_SECONDS (default 10): elapsed time, lines
#   of output so far and the last one (e.g. cmake's "[ 50%] Building ...");
# - on success, prints the time taken; on failure, prints the tool's own output
#   (the last STEP_TAIL_LINES lines, default 80, and where the full log is
#   kept), the exit status and the command that reruns the step, then returns
#   the tool's exit status (set -e callers stop there).
# STEP_VERBOSE=1 streams the tool's output instead of summarizing it.

STEP_PREFIX="${STEP_PREFIX:-setup}"
STEP_TOTAL="${STEP_TOTAL:-?}"
STEP_PROGRESS_SECONDS="${STEP_PROGRESS_SECONDS:-10}"
STEP_TAIL_LINES="${STEP_TAIL_LINES:-80}"

step_say() { printf '%s: %s\n' "$STEP_PREFIX" "$*"; }
# step_skip N WHY: a step that has nothing to do.
step_skip() { printf '%s [%s/%s] %s\n' "$STEP_PREFIX" "$1" "$STEP_TOTAL" "$2"; }

# A directory for the steps' logs; removed at exit unless a step failed.
step_logdir() {
  if [ -z "${STEP_LOGDIR:-}" ]; then
    STEP_LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/tsvmm-${STEP_PREFIX}-logs.XXXXXX")"
    STEP_KEEP_LOGS=0
    # shellcheck disable=SC2064
    trap "[ \"\${STEP_KEEP_LOGS:-0}\" = 1 ] || rm -rf '$STEP_LOGDIR'" EXIT
  fi
}

# run_step N TITLE RERUN -- CMD [ARGS...]
run_step() {
  local n="$1" title="$2" rerun="$3"
  shift 3
  [ "${1:-}" = "--" ] && shift
  step_logdir
  local log="$STEP_LOGDIR/step-$n.log"
  printf '%s [%s/%s] %s\n' "$STEP_PREFIX" "$n" "$STEP_TOTAL" "$title"
  local t0=$SECONDS status=0
  if [ "${STEP_VERBOSE:-0}" = 1 ]; then
    "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
  else
    "$@" >"$log" 2>&1 </dev/null &
    local pid=$! next=$((SECONDS + STEP_PROGRESS_SECONDS))
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
        next=$((SECONDS + STEP_PROGRESS_SECONDS))
        local lines last
        lines=$(wc -l <"$log")
        # `|| true`: under the caller's `set -eo pipefail`, grep finding only blank lines (cmake-js
        # prints some) would fail the assignment and end the script without a word.
        last="$(tail -n 20 "$log" | tr -d '\r' | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-110)" || true
        printf '%s [%s/%s]   ... %d s, %d lines of output%s\n' "$STEP_PREFIX" "$n" "$STEP_TOTAL" \
          $((SECONDS - t0)) "$lines" "${last:+; last: $last}"
      fi
    done
    wait "$pid" || status=$?
  fi
  if [ "$status" -eq 0 ]; then
    printf '%s [%s/%s]   done in %d s\n' "$STEP_PREFIX" "$n" "$STEP_TOTAL" $((SECONDS - t0))
    return 0
  fi
  STEP_KEEP_LOGS=1
  {
    printf '\n%s [%s/%s] FAILED: %s (exit status %d after %d s)\n' "$STEP_PREFIX" "$n" "$STEP_TOTAL" \
      "$title" "$status" $((SECONDS - t0))
    if [ "${STEP_VERBOSE:-0}" != 1 ]; then
      local total
      total=$(wc -l <"$log")
      if [ "$total" -gt "$STEP_TAIL_LINES" ]; then
        printf -- '----- output of `%s` (last %d of %d lines) -----\n' "$*" "$STEP_TAIL_LINES" "$total"
      else
        printf -- '----- output of `%s` -----\n' "$*"
      fi
      tail -n "$STEP_TAIL_LINES" "$log"
      printf -- '----- end of output -----\n'
    fi
    printf '%s: the full output is kept in %s\n' "$STEP_PREFIX" "$log"
    printf '%s: fix the error above, then rerun this step with:\n    %s\n' "$STEP_PREFIX" "$rerun"
    [ -n "${STEP_RERUN_ALL:-}" ] && printf '%s: or the whole job with:\n    %s\n' "$STEP_PREFIX" "$STEP_RERUN_ALL"
  } >&2
  return "$status"
}
