//! The vCPU exit handler: port and MMIO exits go to the two buses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vmm_devices::metrics::DeviceMetrics;
use vmm_devices::{Bus, IoApic};
use vmm_vcpu::{ExitHandler, OtherExit};

/// Dispatches vCPU exits to the port bus and the MMIO bus. Unclaimed reads see all ones and
/// unclaimed writes are dropped (the bus counts both), as on real hardware. Each exit is
/// counted in the `vcpu` metrics (one relaxed atomic add).
pub struct BusExitHandler {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// The `--exit-stats` counters, when they are on.
    pub stats: Option<&'static crate::exit_stats::ExitStats>,
    /// The split irqchip's IOAPIC (also on `mmio`), which hears of level-triggered EOIs.
    pub ioapic: Option<Arc<Mutex<IoApic>>>,
}

impl ExitHandler for BusExitHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        crate::metrics::metrics().vcpu.exit_io_in.inc();
        if let Some(stats) = self.stats {
            stats.pio(port, false);
        }
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        crate::metrics::metrics().vcpu.exit_io_out.inc();
        if let Some(stats) = self.stats {
            stats.pio(port, true);
        }
        self.pio.write(u64::from(port), data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        crate::metrics::metrics().vcpu.exit_mmio_read.inc();
        if let Some(stats) = self.stats {
            stats.mmio(addr, false);
        }
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        crate::metrics::metrics().vcpu.exit_mmio_write.inc();
        if let Some(stats) = self.stats {
            stats.mmio(addr, true);
        }
        self.mmio.write(addr, data);
    }

    fn coalesced_mmio_write(&self, addr: u64, data: &[u8]) {
        // Not an exit: neither counted nor in the metrics.
        self.mmio.write(addr, data);
    }

    fn ioapic_eoi(&self, vector: u8) {
        if let Some(ioapic) = &self.ioapic {
            crate::lock(ioapic).end_of_interrupt(vector);
        }
    }

    fn other_exit(&self, kind: OtherExit) {
        if let Some(stats) = self.stats {
            stats.other(kind);
        }
    }
}

impl std::fmt::Debug for BusExitHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusExitHandler")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

/// The buses' unclaimed accesses, reported as extra keys of the `vmm` metrics group. Holds
/// the buses weakly (they hold the devices, which must go when the VM does); once they are
/// gone it reports the last totals it saw.
#[derive(Debug)]
pub(crate) struct UnclaimedAccesses {
    buses: Weak<BusExitHandler>,
    last: [AtomicU64; 2],
}

impl UnclaimedAccesses {
    pub(crate) fn new(buses: &Arc<BusExitHandler>) -> UnclaimedAccesses {
        UnclaimedAccesses {
            buses: Arc::downgrade(buses),
            last: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl DeviceMetrics for UnclaimedAccesses {
    fn totals(&self) -> Vec<(&'static str, u64)> {
        if let Some(buses) = self.buses.upgrade() {
            self.last[0].store(buses.pio.unclaimed_accesses(), Ordering::Relaxed);
            self.last[1].store(buses.mmio.unclaimed_accesses(), Ordering::Relaxed);
        }
        vec![
            (
                "unclaimed_pio_accesses",
                self.last[0].load(Ordering::Relaxed),
            ),
            (
                "unclaimed_mmio_accesses",
                self.last[1].load(Ordering::Relaxed),
            ),
        ]
    }
}
