#!/usr/bin/env bash
# The README's two set-up commands in a fresh clone of this repository, each with an empty model cache, under
# /usr/bin/time -v: wall time, peak RSS, and the test summary; between them, `lorakit eval runs/demo --safety` on
# the first command's run (same cache). Writes the log the README quotes.
#   bash scripts/readme_timings.sh bench/results/readme_fresh_clone.txt
set -uo pipefail
out=$(realpath -m "${1:?log file}")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/lorakit"
cd "$work/lorakit"
timed() {  # CACHE COMMAND: run it, print its exit code, last lines, wall time and peak RSS
    echo "== $2"
    LORAKIT_CACHE_DIR="$1" /usr/bin/time -v bash -c "$2" > "$work/out.txt" 2> "$work/err.txt"
    echo "exit $?"
    tail -"${3:-4}" "$work/out.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$work/err.txt"
}
{
    echo "commit $(git rev-parse --short HEAD), $(nproc) CPUs, load average before: $(cut -d' ' -f1 /proc/loadavg)"
    demo_cache=$(mktemp -d "$work/cache-XXXX")
    timed "$demo_cache" "bash scripts/setup.sh && .venv/bin/lorakit train examples/config.yaml --overwrite"
    timed "$demo_cache" ".venv/bin/lorakit eval runs/demo --safety" 40
    timed "$(mktemp -d "$work/cache-XXXX")" "bash scripts/setup.sh --test && .venv/bin/python -m pytest" 8
} > "$out" 2>&1
rm -rf "$work"
cat "$out"
