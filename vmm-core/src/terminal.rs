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
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = io::stdin().lock().set_canon_mode();
        }
    }
}
