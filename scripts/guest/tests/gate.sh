# shared helper for the test initramfs's tests (sourced after /tests/lib.sh, not a test):
# a gate lets the host decide when a guest test may go on or finish, so that end-to-end tests
# wait for events instead of guessing how fast the guest runs.
#
# guest.gate=/dev/vdX names a small read-only virtio disk; the host writes a word into its first
# sector and the guest reads it with O_DIRECT (its own page cache would hide new contents):
#   (nothing, zeros)  run: go on, and do not finish
#   open [N]          go on, and finish once the test's own minimum (and item N, if given) is done
#   <number K>        pace: items up to K may start; later ones wait for a new word
# Without guest.gate the gate is always open, so a test behaves like its ungated original.
gate_dev=$(cmdline_arg guest.gate '')

# gate_line: the host's words (the first line of the gate's first sector)
gate_line() {
    if [ -z "$gate_dev" ]; then echo open; return; fi
    dd if="$gate_dev" bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1
}

# gate_open I: the host said "open", and with "open N", I >= N
gate_open() {
    set -- "$1" $(gate_line)
    [ "$2" = open ] || return 1
    case "$3" in
        '') return 0 ;;
        *[!0-9]*) return 1 ;;
        *) [ "$1" -ge "$3" ] ;;
    esac
}

# gate_allows I: item I may start (the gate runs, is open, or holds a number >= I)
gate_allows() {
    set -- "$1" $(gate_line)
    case "$2" in
        '' | *[!0-9]*) return 0 ;;
        *) [ "$2" -ge "$1" ] ;;
    esac
}

# gate_check FAIL-MARKER: with guest.gate given, fail early (and say why) when there is no such disk
gate_check() {
    if [ -n "$gate_dev" ] && [ ! -b "$gate_dev" ]; then
        echo "$1 guest.gate=$gate_dev is not a block device"
        exit 1
    fi
}
