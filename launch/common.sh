# Shared by the launch scripts: --dry-run handling. `run CMD...` prints the command (shell-quoted,
# one line) and, unless DRY_RUN=1, runs it. Sourced, not executed.
DRY_RUN=${DRY_RUN:-0}

quote() {
  local out="" arg
  for arg in "$@"; do out+="${out:+ }$(printf '%q' "$arg")"; done
  printf '%s\n' "$out"
}

run() {
  quote "$@"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Waits for every pid given; returns the last non-zero exit status (0 if all succeeded).
wait_all() {
  local status=0 pid
  for pid in "$@"; do wait "$pid" || status=$?; done
  return "$status"
}
