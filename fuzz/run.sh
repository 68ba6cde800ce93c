#!/usr/bin/env bash
# Fuzzes every input parser on stable Rust: runs the properties of
# tests/proptest_parsers.rs with PROPTEST_CASES cases each (default
# 1,000,000), one parser at a time, and prints per parser the inputs
# executed, the failures (a panic or a broken property, shrunk to a
# minimal input and printed) and the time taken.
#
#   fuzz/run.sh                 # every parser: range at fotadl fault path
#   fuzz/run.sh range path      # some of them
#   PROPTEST_CASES=20000 fuzz/run.sh
#
# It is CPU-heavy (one core per parser run): on a shared machine run it as
# `nice -n 19 fuzz/run.sh`. Exit status 1 when any parser failed.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${PROPTEST_CASES:-1000000}"
if [ "$#" -gt 0 ]; then parsers=("$@"); else parsers=(range at fotadl fault path); fi

# Build once, then run a copy of the test binary: later builds in the
# work tree neither wait for nor overwrite a run in progress.
built=$(cargo test --test proptest_parsers --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -x "$built" ] || { echo "fuzz: cannot build tests/proptest_parsers.rs" >&2; exit 1; }
exe=$(mktemp)
trap 'rm -f "$exe"' EXIT
cp "$built" "$exe"
chmod +x "$exe"

status=0
printf '%-8s %14s %9s %10s\n' parser executions failures seconds
for parser in "${parsers[@]}"; do
    start=$(date +%s.%N)
    if ! out=$(PROPTEST_CASES="$cases" "$exe" "${parser}::" --nocapture --test-threads=1 2>&1); then
        status=1
        printf '%s\n' "$out" | grep -v 'proptest-summary' >&2
    fi
    end=$(date +%s.%N)
    # With --nocapture a summary may share its line with libtest's
    # "test … ..." prefix: read the key=value fields wherever they are.
    printf '%s\n' "$out" | awk -v p="$parser" -v start="$start" -v end="$end" '
        /proptest-summary/ {
            delete f
            for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) f[kv[1]] = kv[2]
            if (f["parser"] == p) { cases += f["cases"]; fails += f["failures"]; n++ }
        }
        END {
            if (n == 0) { print p ": no property ran" > "/dev/stderr"; exit 1 }
            printf "%-8s %14d %9d %10.1f\n", p, cases, fails, end - start
        }' || status=1
done
exit "$status"
