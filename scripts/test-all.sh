#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
#   formatting, clippy with -D warnings, tier 1 (no KVM) and tier 2 (tiny guests on this
#   machine's /dev/kvm) through cargo test, tier 3 (full Linux boots: scripts/e2e.sh, inside the
#   test host on a PVM machine, once per irqchip mode), and a short fuzz run of every target
#   (each replays its committed corpus and regression inputs first: fuzz/README.md).
# Env: FUZZ_SECONDS (per target, default 15), VMM_GUEST_DIR (default ../shared/guest).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s\n' "$*"; }
# Every test runner's output is also kept here, for the counts on the last line.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
counted() { "$@" 2>&1 | tee -a "$results"; }

step "dependencies"
scripts/install-deps.sh
step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p vmm-cli --test e2e -- -D warnings  # test = false: not in --all-targets
step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
step "tiers 1 and 2: cargo test --workspace (unit, integration and doc tests)"
counted cargo test --workspace
step "tier 2 again with the in-kernel irqchip: the CLI's tests (every vmm they start inherits it)"
VMM_IRQCHIP=kernel counted cargo test -p vmm-cli
step "tier 2: the vmm-vcpu example, as its docs say to run it"
cargo run -q -p vmm-vcpu --example hello_guest
step "tier 3: end-to-end Linux boots (split irqchip, the default)"
counted scripts/e2e.sh
step "tier 3: end-to-end Linux boots again with the in-kernel irqchip (--irqchip kernel)"
VMM_IRQCHIP=kernel counted scripts/e2e.sh
step "fuzz: replay the committed corpora, then a short run of every target"
fuzz/run.sh "${FUZZ_SECONDS:-15}"
step "all passed"
# The counts of every cargo test and e2e run above, in the form CI reads.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i - 1); if ($i ~ /^failed/) f += $(i - 1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
