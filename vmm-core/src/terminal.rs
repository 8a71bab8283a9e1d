//! Raw mode for an interactive serial console, restored however the VMM ends.

use std::io::{self, IsTerminal};

use vmm_sys_util::terminal::Terminal;

/// Puts stdin in raw mode while alive (when it is a terminal) and restores canonical mode on drop.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal.
    pub fn enter() -> RawTerminal {
        let stdin = io::stdin();
        let active = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
        RawTerminal { active }
    }

    /// Whether stdin is a terminal now in raw mode.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = io::stdin().lock().set_canon_mode();
        }
    }
}

/// Ctrl-A, the console's escape key (as QEMU's `-serial mon:stdio`).
pub const ESCAPE_KEY: u8 = 0x01;
/// After [`ESCAPE_KEY`]: quit.
pub const QUIT_KEYS: [u8; 2] = [b'x', b'X'];

/// The interactive console's escape sequences, read from the user's keystrokes: Ctrl-A x quits,
/// Ctrl-A Ctrl-A sends one Ctrl-A to the guest, Ctrl-A and any other key sends nothing. Every
/// other byte goes to the guest. The state carries over from one read to the next, so a
/// sequence split between two reads still counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleEscape {
    escaped: bool,
}

impl ConsoleEscape {
    /// Appends to `guest` what of `input` goes to the guest. Returns true when the user asked
    /// to quit; what followed the quit in `input` is dropped.
    pub fn filter(&mut self, input: &[u8], guest: &mut Vec<u8>) -> bool {
        for &byte in input {
            if std::mem::take(&mut self.escaped) {
                match byte {
                    ESCAPE_KEY => guest.push(ESCAPE_KEY),
                    key if QUIT_KEYS.contains(&key) => return true,
                    _ => {}
                }
            } else if byte == ESCAPE_KEY {
                self.escaped = true;
            } else {
                guest.push(byte);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(escape: &mut ConsoleEscape, input: &[u8]) -> (Vec<u8>, bool) {
        let mut guest = Vec::new();
        let quit = escape.filter(input, &mut guest);
        (guest, quit)
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one_ctrl_a() {
        let mut e = ConsoleEscape::default();
        assert_eq!(run(&mut e, b"ls -l\r"), (b"ls -l\r".to_vec(), false));
        assert_eq!(run(&mut e, b"a\x01\x01b"), (b"a\x01b".to_vec(), false));
        // Any other key after Ctrl-A: both dropped.
        assert_eq!(run(&mut e, b"\x01cd"), (b"d".to_vec(), false));
        // Ctrl-A Ctrl-A x is a literal Ctrl-A and an x, not a quit.
        assert_eq!(run(&mut e, b"\x01\x01x"), (b"\x01x".to_vec(), false));
        // Quit: what came before goes to the guest, what came after does not.
        assert_eq!(run(&mut e, b"ab\x01xcd"), (b"ab".to_vec(), true));
        let mut e = ConsoleEscape::default();
        assert_eq!(run(&mut e, b"\x01X"), (vec![], true));
    }

    #[test]
    fn a_sequence_split_between_reads() {
        let mut e = ConsoleEscape::default();
        assert_eq!(run(&mut e, b"q\x01"), (b"q".to_vec(), false));
        assert_eq!(run(&mut e, b"x"), (vec![], true));
        let mut e = ConsoleEscape::default();
        assert_eq!(run(&mut e, b"\x01"), (vec![], false));
        assert_eq!(run(&mut e, b"\x01"), (b"\x01".to_vec(), false));
        assert_eq!(run(&mut e, b"x"), (b"x".to_vec(), false));
    }
}
