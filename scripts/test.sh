#!/usr/bin/env bash
# The whole test suite: every crate's tests, then the stress tests of the
# per-CPU stacks in a build with the test-only delay loop inside every
# critical section (`--cfg rseq_inject_delay`, never set by a normal or a
# shipped build). The second build has its own target directory, so the two
# never rebuild each other. Fails if the injected run ran no test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --release

log=$(mktemp)
trap 'rm -f "$log"' EXIT
RUSTFLAGS="${RUSTFLAGS:-} --cfg rseq_inject_delay" \
  cargo test --release -p rseq-sys --target-dir target/inject \
  --test rseq_stress 2>&1 | tee "$log"
passed=$(sed -n 's/^test result: ok\. \([0-9][0-9]*\) passed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
if [ "$passed" -eq 0 ]; then
  echo "scripts/test.sh: the injected stress run ran no test (is rseq_stress.rs gated on a cfg the build does not set?)" >&2
  exit 1
fi
echo "scripts/test.sh: injected stress run: $passed tests passed"
