#!/usr/bin/env bash
# Prints what failed in `go test` output saved to the given files: every "--- FAIL" block with its test output
# (the service's JSON log lines left out), panics and timeouts with the lines after them, and the FAIL lines of
# the packages. The suites log a lot; CI keeps only the end of what they print, so `go tool task test` ends with
# this summary.
set -u
for f in "$@"; do
  [ -f "$f" ] || continue
  awk -v name="$f" '
    /^\{"level"/ { next }
    /^[ \t]*--- FAIL/ { if (!shown++) print "=== failures in " name; block = 1; print; next }
    /^panic: |test timed out after|^fatal error: |^WARNING: DATA RACE/ { if (!shown++) print "=== failures in " name; tail = 40 }
    tail > 0 { print; tail--; next }
    block && /^[ \t]+/ { print; next }
    { block = 0 }
    /^FAIL[ \t]/ { if (!shown++) print "=== failures in " name; print }
  ' "$f"
done
