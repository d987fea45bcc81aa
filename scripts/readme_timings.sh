#!/usr/bin/env bash
# The README's two set-up commands in a fresh clone of this repository, each with an empty model cache, under
# /usr/bin/time -v: wall time, peak RSS, and the test summary. Writes the log the README quotes.
#   bash scripts/readme_timings.sh bench/results/readme_fresh_clone.txt
set -uo pipefail
out=$(realpath -m "${1:?log file}")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/lorakit"
cd "$work/lorakit"
{
    echo "commit $(git rev-parse --short HEAD), $(nproc) CPUs, load average before: $(cut -d' ' -f1 /proc/loadavg)"
    for command in "bash scripts/setup.sh && .venv/bin/lorakit train examples/config.yaml --overwrite" \
                   "bash scripts/setup.sh --test && .venv/bin/python -m pytest"; do
        echo "== $command"
        LORAKIT_CACHE_DIR="$(mktemp -d "$work/cache-XXXX")" /usr/bin/time -v bash -c "$command" > "$work/out.txt" 2> "$work/err.txt"
        echo "exit $?"
        tail -4 "$work/out.txt"
        grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$work/err.txt"
    done
} > "$out" 2>&1
rm -rf "$work"
cat "$out"
