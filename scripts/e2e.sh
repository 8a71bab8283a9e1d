#!/usr/bin/env bash
# The end-to-end suite (tier 3): full Linux boots of the shared guest through the whole VMM.
# Runs directly where /dev/kvm has hardware virtualization; on a PVM host (kvm_pvm, which cannot
# boot ordinary kernels) it runs the whole suite inside one boot of ../shared/testhost.
#
#   scripts/e2e.sh [TEST-NAME-FILTER...]
#
# --nocapture: a failed first attempt inside the test host stays visible even when the retry passes.
# Env: VMM_IRQCHIP (split or kernel: the interrupt controllers of every VM the suite starts,
# passed into the test host; unset: the VMM's default, split), VMM_GUEST_DIR (guest images,
# default ../shared/guest), TESTHOST_DIR (default
# ../shared/testhost), E2E_TIMEOUT (seconds for the whole suite, default 1500), E2E_STALL
# (seconds without a heartbeat from the test host before it counts as hung, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

# Guest tools busybox lacks (vsock, TCP stream, balloon and flush checks), layered over the
# shared initramfs into target/test-guest/.
scripts/build-test-initramfs.sh >/dev/null

# The minimal-vmm example (examples/minimal-vmm), which the suite finds beside `vmm`.
cargo build -q -p minimal-vmm

bin=$(cargo test -p vmm-cli --test e2e --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*/e2e-[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "e2e.sh: could not build the e2e test binary" >&2; exit 1; }
# vmm-vcpu's split-irqchip tests deliver interrupts to a tiny guest's IDT, which PVM cannot:
# they run here too, where KVM is real, before the suite.
irq_bin=$(cargo test -p vmm-vcpu --test split_irqchip --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*/split_irqchip-[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$irq_bin" ] || { echo "e2e.sh: could not build the split_irqchip test binary" >&2; exit 1; }

# Runs the suite in one test-host boot, beside a heartbeat: a shell loop inside the L1 that
# rewrites target/e2e-heartbeat every 5 s through the shared working directory. A test waits at
# most BOOT_TIMEOUT for its guest, so a heartbeat older than E2E_STALL seconds (default 300) means
# the L1 itself has stopped scheduling anything (a wedged nested-SVM kernel, seen in CI once: the
# suite sat silent until the 1500 s limit). The watchdog then stops the test host and returns 125,
# the status run.sh gives a dead L1. It measures the L1's liveness, never a test's speed.
run_in_test_host() {
    local testhost=$1
    shift
    local heartbeat=target/e2e-heartbeat
    local stall=${E2E_STALL:-300}
    rm -f "$heartbeat"
    local started
    started=$(date +%s)
    # shellcheck disable=SC2016 # expanded by the shell inside the L1
    "$testhost/run.sh" -m 6G -c 2 -t "${E2E_TIMEOUT:-1500}" -- \
        bash -c 'while :; do date +%s >"$0"; sleep 5; done & "$1" --test-threads=1 || exit; shift; exec "$@"' \
        "$heartbeat" "$irq_bin" \
        env ${VMM_IRQCHIP:+VMM_IRQCHIP=$VMM_IRQCHIP} "$bin" --test-threads=1 --nocapture "$@" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 10 &
        wait $! || true
        local last=$started
        [ -e "$heartbeat" ] && last=$(stat -c %Y "$heartbeat")
        local age=$(($(date +%s) - last))
        if [ "$age" -gt "$stall" ] && kill -0 "$pid" 2>/dev/null; then
            echo "e2e.sh: no heartbeat from the test host for ${age}s: its kernel is stuck; stopping it" >&2
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" || true
            rm -f "$heartbeat"
            return 125
        fi
    done
    local rc=0
    wait "$pid" || rc=$?
    rm -f "$heartbeat"
    return "$rc"
}

if [ -e /sys/module/kvm_pvm ] && [ -z "${TESTHOST:-}" ]; then
    testhost="${TESTHOST_DIR:-$(cd .. && pwd)/shared/testhost}"
    [ -x "$testhost/run.sh" ] || { echo "e2e.sh: PVM host and no test host at $testhost" >&2; exit 1; }
    echo "e2e.sh: /dev/kvm is PVM here; running the suite inside the test host ($testhost)"
    # 6 GiB for the L1 so that a 5 GiB guest fits; L2 memory is only touched as the guest uses it.
    # Exit 125: the test host's own (L1) kernel died or stopped running anything before the suite
    # ended, which is not a test's verdict (nested SVM under TCG can crash or wedge the L1 under
    # load; ../shared/testhost's README). The suite then runs once more in a fresh test host; a
    # test failure (any other status) is never retried. Counts come from `test result:` lines,
    # which only a finished run prints, so nothing is counted twice.
    rc=0
    run_in_test_host "$testhost" "$@" || rc=$?
    if [ "$rc" -eq 125 ]; then
        echo "e2e.sh: the test host's kernel died or hung (status 125); running the suite again once" >&2
        rc=0
        run_in_test_host "$testhost" "$@" || rc=$?
    fi
    exit "$rc"
fi
"$irq_bin" --test-threads=1
exec "$bin" --test-threads=1 --nocapture "$@"
