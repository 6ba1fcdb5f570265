#!/usr/bin/env bash
# Structure limits of the code base (issue #11): no source file over 700 lines and no function over
# 120 lines, outside tests (`mod tests` blocks, tests/ folders and test-only helpers are exempt).
# rustfmt puts a function's closing brace at the indentation of its `fn`, which is what this reads.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
files=$(git ls-files --cached --others --exclude-standard '*.rs' | grep -v -e '/tests/' -e '^tests/' -e 'testutil.rs$')
for f in $files; do
  n=$(wc -l < "$f")
  if [ "$n" -gt 700 ]; then echo "check-sizes: $f has $n lines (limit 700)"; status=1; fi
done
awk '
  FNR == 1 { skip = ""; fn = "" }
  skip != "" { if ($0 == skip) skip = ""; next }
  /^[[:space:]]*mod tests \{/ { match($0, /^[[:space:]]*/); skip = substr($0, 1, RLENGTH) "}"; next }
  fn == "" && /^[[:space:]]*(pub(\([a-z]+\))? )?(const )?(unsafe )?fn [A-Za-z_0-9]+/ && !/;[[:space:]]*$/ {
    match($0, /^[[:space:]]*/); ind = substr($0, 1, RLENGTH); fn = $0; start = FNR; next
  }
  fn != "" && $0 == ind "}" {
    len = FNR - start + 1
    if (len > 120) { sub(/^[[:space:]]*/, "", fn); sub(/\(.*/, "", fn); printf "check-sizes: %s:%d %s is %d lines (limit 120)\n", FILENAME, start, fn, len; bad = 1 }
    fn = ""
  }
  END { exit bad }
' $files || status=1
[ $status -eq 0 ] && echo "check-sizes: every file <= 700 lines, every function <= 120 lines (outside tests)"
exit $status
