# Sourced by the hack/ build scripts (which define log()): with_ticker WHAT CMD... runs CMD in the
# background and logs a progress line every 30 s until it ends, then how long it took.

with_ticker() {
  local what=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  local next=30
  # Poll every second (not every 30 s) so a finished build is not left waiting for the ticker.
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $((SECONDS - start)) -ge $next ] && kill -0 "$pid" 2>/dev/null; then
      log "  ... still building $what ($((SECONDS - start))s)"
      next=$((next + 30))
    fi
  done
  wait "$pid"
  log "  built $what in $((SECONDS - start))s"
}
