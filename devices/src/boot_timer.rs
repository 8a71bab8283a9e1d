//! A pseudo device that measures how long a guest takes to boot: the guest's init writes the
//! byte [`BOOT_COMPLETE`] to it once it is up, and the device logs the wall-clock and CPU time
//! since it was created (Firecracker's `--boot-timer`). Reads return zeros; other writes are
//! ignored.

use std::time::Instant;

use crate::BusDevice;

/// The byte a guest writes (at offset 0, one byte wide) when its boot is complete.
pub const BOOT_COMPLETE: u8 = 123;

/// Bytes of MMIO space the device takes.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// The boot timer.
#[derive(Debug)]
pub struct BootTimer {
    started: Instant,
    started_cpu_us: u64,
    /// The boot time, once the guest reported it: (wall-clock µs, process CPU µs).
    reported: Option<(u64, u64)>,
}

/// CPU time this process has used, in microseconds (CLOCK_PROCESS_CPUTIME_ID).
pub fn process_cpu_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

impl BootTimer {
    /// A timer that counts from now.
    pub fn new() -> BootTimer {
        BootTimer {
            started: Instant::now(),
            started_cpu_us: process_cpu_us(),
            reported: None,
        }
    }

    /// The boot time the guest reported, if it did: (wall-clock µs, process CPU µs).
    pub fn reported(&self) -> Option<(u64, u64)> {
        self.reported
    }
}

impl Default for BootTimer {
    fn default() -> BootTimer {
        BootTimer::new()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_COMPLETE] {
            return;
        }
        let wall_us = self.started.elapsed().as_micros() as u64;
        let cpu_us = process_cpu_us().saturating_sub(self.started_cpu_us);
        self.reported = Some((wall_us, cpu_us));
        log::info!(
            "Guest-boot-time = {wall_us:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms",
            wall_us / 1000,
            cpu_us / 1000
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_reports() {
        let mut timer = BootTimer::new();
        timer.write(0, &[1]);
        timer.write(4, &[BOOT_COMPLETE]);
        timer.write(0, &[BOOT_COMPLETE, 0]);
        assert_eq!(timer.reported(), None);
        timer.write(0, &[BOOT_COMPLETE]);
        assert!(timer.reported().is_some());
        let mut data = [0xff; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
