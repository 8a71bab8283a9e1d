//! `--exit-stats`: every vCPU exit counted by kind and address, printed as a table when the VM
//! ends.
//!
//! Counting is lock-free: port I/O has one relaxed atomic per port and direction, MMIO an
//! open-addressing table of atomics keyed by address (a slot is claimed once with a
//! compare-and-swap), other exits one atomic per kind. Nothing is allocated or counted unless
//! [`enable`] was called before the VM was built.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use vmm_memory::layout;
use vmm_vcpu::OtherExit;

/// MMIO addresses the table can tell apart; accesses to more go to an overflow count.
const MMIO_SLOTS: usize = 4096;
/// How far a lookup probes before giving up on a full table.
const MMIO_PROBES: usize = 64;
/// Rows the table prints (the rest are summed into one line).
pub const TOP_ROWS: usize = 40;

/// One MMIO address's counts.
#[derive(Debug, Default)]
struct MmioSlot {
    /// The address plus one (0: free).
    key: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// The counters of one process's VM.
#[derive(Debug)]
pub struct ExitStats {
    /// `[port * 2 + is_write]`.
    pio: Box<[AtomicU64]>,
    mmio: Box<[MmioSlot]>,
    mmio_overflow: AtomicU64,
    other: [AtomicU64; OtherExit::ALL.len()],
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats::new()
    }
}

/// What one row of the table counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitKey {
    /// A port read (IN).
    PioIn(u16),
    /// A port write (OUT).
    PioOut(u16),
    /// An MMIO read.
    MmioRead(u64),
    /// An MMIO write.
    MmioWrite(u64),
    /// MMIO accesses beyond the table's capacity.
    MmioOverflow,
    /// Any other exit.
    Other(OtherExit),
}

impl ExitStats {
    /// Zeroed counters.
    pub fn new() -> ExitStats {
        ExitStats {
            pio: (0..2 * 0x1_0000).map(|_| AtomicU64::new(0)).collect(),
            mmio: (0..MMIO_SLOTS).map(|_| MmioSlot::default()).collect(),
            mmio_overflow: AtomicU64::new(0),
            other: Default::default(),
        }
    }

    /// Counts a port access.
    pub fn pio(&self, port: u16, write: bool) {
        self.pio[usize::from(port) * 2 + usize::from(write)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an MMIO access.
    pub fn mmio(&self, addr: u64, write: bool) {
        let Some(slot) = self.mmio_slot(addr) else {
            self.mmio_overflow.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let counter = if write { &slot.writes } else { &slot.reads };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn mmio_slot(&self, addr: u64) -> Option<&MmioSlot> {
        let key = addr.checked_add(1)?;
        // Fibonacci hashing of the page and offset together.
        let start = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize;
        for i in 0..MMIO_PROBES {
            let slot = &self.mmio[(start + i) % MMIO_SLOTS];
            match slot
                .key
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(slot),
                Err(found) if found == key => return Some(slot),
                Err(_) => {}
            }
        }
        None
    }

    /// Counts another exit.
    pub fn other(&self, kind: OtherExit) {
        let index = OtherExit::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.other[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Every nonzero count, largest first (ties in key order).
    pub fn rows(&self) -> Vec<(ExitKey, u64)> {
        let mut rows = Vec::new();
        for (i, counter) in self.pio.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let port = (i / 2) as u16;
                let key = if i % 2 == 1 {
                    ExitKey::PioOut(port)
                } else {
                    ExitKey::PioIn(port)
                };
                rows.push((key, count));
            }
        }
        for slot in self.mmio.iter() {
            let key = slot.key.load(Ordering::Acquire);
            if key == 0 {
                continue;
            }
            let addr = key - 1;
            for (count, row) in [
                (slot.reads.load(Ordering::Relaxed), ExitKey::MmioRead(addr)),
                (
                    slot.writes.load(Ordering::Relaxed),
                    ExitKey::MmioWrite(addr),
                ),
            ] {
                if count > 0 {
                    rows.push((row, count));
                }
            }
        }
        let overflow = self.mmio_overflow.load(Ordering::Relaxed);
        if overflow > 0 {
            rows.push((ExitKey::MmioOverflow, overflow));
        }
        for (kind, counter) in OtherExit::ALL.iter().zip(&self.other) {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                rows.push((ExitKey::Other(*kind), count));
            }
        }
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rows
    }

    /// The table: the [`TOP_ROWS`] largest counts with their device and register, then the
    /// counts per device, then the totals per kind.
    pub fn table(&self) -> String {
        format_table(&self.rows())
    }
}

/// The kind column of a row.
fn kind_name(key: ExitKey) -> &'static str {
    match key {
        ExitKey::PioIn(_) => "pio-in",
        ExitKey::PioOut(_) => "pio-out",
        ExitKey::MmioRead(_) | ExitKey::MmioOverflow => "mmio-read",
        ExitKey::MmioWrite(_) => "mmio-write",
        ExitKey::Other(kind) => kind.name(),
    }
}

/// The device and register of a row's address, as this VMM's layout places them.
pub fn describe(key: ExitKey) -> (String, String) {
    match key {
        ExitKey::PioIn(port) => describe_port(port, false),
        ExitKey::PioOut(port) => describe_port(port, true),
        ExitKey::MmioRead(addr) | ExitKey::MmioWrite(addr) => describe_mmio(addr),
        ExitKey::MmioOverflow => ("mmio (table full)".into(), String::new()),
        ExitKey::Other(_) => ("-".into(), String::new()),
    }
}

fn describe_port(port: u16, write: bool) -> (String, String) {
    const UART: [(&str, &str); 8] = [
        ("RBR", "THR"),
        ("IER", "IER"),
        ("IIR", "FCR"),
        ("LCR", "LCR"),
        ("MCR", "MCR"),
        ("LSR", "LSR"),
        ("MSR", "MSR"),
        ("SCR", "SCR"),
    ];
    let acpi = layout::ACPI_PM_PORT..layout::ACPI_PM_PORT + layout::ACPI_PM_PORT_LEN;
    let (device, register): (&str, String) = match port {
        0x3f8..=0x3ff => {
            let (r, w) = UART[usize::from(port - 0x3f8)];
            ("serial COM1", if write { w } else { r }.into())
        }
        0x60 => ("i8042", "data".into()),
        0x64 => ("i8042", if write { "command" } else { "status" }.into()),
        p if acpi.contains(&p) => (
            "ACPI",
            ["sleep control", "sleep status", "reset"][usize::from(p - layout::ACPI_PM_PORT)]
                .into(),
        ),
        0x2f8..=0x2ff | 0x3e8..=0x3ef | 0x2e8..=0x2ef => ("unclaimed: COM2-4", String::new()),
        0x40..=0x43 | 0x61 => ("unclaimed: PIT / port B", String::new()),
        0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => ("unclaimed: PIC / ELCR", String::new()),
        0x70 | 0x71 => ("unclaimed: CMOS RTC", String::new()),
        0x80 => ("unclaimed: POST delay", String::new()),
        0x87 | 0x00..=0x1f | 0xc0..=0xdf => ("unclaimed: DMA", String::new()),
        0x92 => ("unclaimed: A20", String::new()),
        0xcf8..=0xcff => ("unclaimed: PCI config", String::new()),
        0x278..=0x27f | 0x378..=0x37f | 0x3bc..=0x3be => ("unclaimed: LPT", String::new()),
        0x3b0..=0x3df => ("unclaimed: VGA", String::new()),
        0x1f0..=0x1f7 | 0x170..=0x177 | 0x3f6 | 0x376 => ("unclaimed: IDE", String::new()),
        0x3f0..=0x3f5 | 0x3f7 => ("unclaimed: floppy", String::new()),
        0x510 | 0x511 => ("unclaimed: fw_cfg", String::new()),
        _ => ("unclaimed", String::new()),
    };
    (device.into(), register)
}

fn describe_mmio(addr: u64) -> (String, String) {
    let virtio_end = layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_WINDOW_SIZE;
    if (layout::VIRTIO_MMIO_START..virtio_end).contains(&addr) {
        let offset = addr - layout::VIRTIO_MMIO_START;
        let slot = offset / layout::VIRTIO_MMIO_DEVICE_SIZE;
        let register = offset % layout::VIRTIO_MMIO_DEVICE_SIZE;
        return (
            format!("virtio-mmio slot {slot}"),
            format!("{register:#05x} {}", virtio_register(register)),
        );
    }
    if (layout::GED_START..layout::GED_START + layout::GED_SIZE).contains(&addr) {
        return (
            "ACPI GED".into(),
            format!("{:#x}", addr - layout::GED_START),
        );
    }
    if (layout::BOOT_TIMER_START..layout::VIRTIO_MMIO_START).contains(&addr) {
        return ("boot timer".into(), String::new());
    }
    if (layout::IOAPIC_START..layout::IOAPIC_START + 0x1000).contains(&addr) {
        use vmm_devices::ioapic::{IOREGSEL_OFFSET, IOWIN_OFFSET};
        let register = match addr - layout::IOAPIC_START {
            IOREGSEL_OFFSET => "IOREGSEL",
            IOWIN_OFFSET => "IOWIN",
            _ => "",
        };
        return ("IOAPIC".into(), register.into());
    }
    if (layout::LAPIC_START..layout::LAPIC_START + 0x1000).contains(&addr) {
        return ("LAPIC".into(), String::new());
    }
    ("unclaimed".into(), String::new())
}

/// The virtio-mmio (version 2) register at `offset`.
fn virtio_register(offset: u64) -> &'static str {
    match offset {
        0x000 => "MagicValue",
        0x004 => "Version",
        0x008 => "DeviceID",
        0x00c => "VendorID",
        0x010 => "DeviceFeatures",
        0x014 => "DeviceFeaturesSel",
        0x020 => "DriverFeatures",
        0x024 => "DriverFeaturesSel",
        0x030 => "QueueSel",
        0x034 => "QueueNumMax",
        0x038 => "QueueNum",
        0x044 => "QueueReady",
        0x050 => "QueueNotify",
        0x060 => "InterruptStatus",
        0x064 => "InterruptACK",
        0x070 => "Status",
        0x080..=0x0a7 => "Queue address",
        0x0fc => "ConfigGeneration",
        0x100.. => "config space",
        _ => "",
    }
}

/// The address column of a row.
fn address(key: ExitKey) -> String {
    match key {
        ExitKey::PioIn(port) | ExitKey::PioOut(port) => format!("{port:#x}"),
        ExitKey::MmioRead(addr) | ExitKey::MmioWrite(addr) => format!("{addr:#x}"),
        ExitKey::MmioOverflow | ExitKey::Other(_) => "-".into(),
    }
}

/// Formats `rows` (largest first, as [`ExitStats::rows`] gives them) as the table.
pub fn format_table(rows: &[(ExitKey, u64)]) -> String {
    let total: u64 = rows.iter().map(|r| r.1).sum();
    let percent = |count: u64| {
        if total == 0 {
            0.0
        } else {
            count as f64 * 100.0 / total as f64
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "vmm: vCPU exits: {total} in total");
    let _ = writeln!(
        out,
        "{:>12} {:>6}  {:<12} {:<12} {:<24} register",
        "count", "%", "exit", "address", "device"
    );
    for &(key, count) in rows.iter().take(TOP_ROWS) {
        let (device, register) = describe(key);
        let _ = writeln!(
            out,
            "{count:>12} {:>6.2}  {:<12} {:<12} {device:<24} {register}",
            percent(count),
            kind_name(key),
            address(key)
        );
    }
    if rows.len() > TOP_ROWS {
        let rest: u64 = rows[TOP_ROWS..].iter().map(|r| r.1).sum();
        let _ = writeln!(
            out,
            "{rest:>12} {:>6.2}  ({} more rows)",
            percent(rest),
            rows.len() - TOP_ROWS
        );
    }
    // Per device, and per kind.
    let mut devices: Vec<(String, u64)> = Vec::new();
    let mut kinds: Vec<(&'static str, u64)> = Vec::new();
    for &(key, count) in rows {
        let device = match key {
            ExitKey::Other(kind) => kind.name().to_string(),
            _ => describe(key).0,
        };
        match devices.iter_mut().find(|d| d.0 == device) {
            Some(d) => d.1 += count,
            None => devices.push((device, count)),
        }
        let kind = kind_name(key);
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => k.1 += count,
            None => kinds.push((kind, count)),
        }
    }
    devices.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let _ = writeln!(out, "by device:");
    for (device, count) in &devices {
        let _ = writeln!(out, "{count:>12} {:>6.2}  {device}", percent(*count));
    }
    let _ = writeln!(out, "by kind:");
    for (kind, count) in &kinds {
        let _ = writeln!(out, "{count:>12} {:>6.2}  {kind}", percent(*count));
    }
    let _ = writeln!(out, "{total:>12} {:>6.2}  total", percent(total));
    out
}

static STATS: OnceLock<ExitStats> = OnceLock::new();

/// Turns counting on for VMs built from now on in this process (`--exit-stats`).
pub fn enable() {
    STATS.get_or_init(ExitStats::new);
}

/// The process's counters, when [`enable`] was called.
pub fn get() -> Option<&'static ExitStats> {
    STATS.get()
}

/// The table of the process's counters, when counting is on.
pub fn report() -> Option<String> {
    get().map(ExitStats::table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_port_direction_and_mmio_address() {
        let stats = ExitStats::new();
        for _ in 0..15 {
            stats.pio(0x3f8, true);
        }
        stats.pio(0x3fd, false);
        stats.pio(0x600, true);
        let notify = layout::VIRTIO_MMIO_START + 0x1000 + 0x50;
        for _ in 0..3 {
            stats.mmio(notify, true);
        }
        stats.mmio(notify, false);
        stats.other(OtherExit::Interrupted);
        let rows = stats.rows();
        assert_eq!(
            rows,
            vec![
                (ExitKey::PioOut(0x3f8), 15),
                (ExitKey::MmioWrite(notify), 3),
                (ExitKey::PioIn(0x3fd), 1),
                (ExitKey::PioOut(0x600), 1),
                (ExitKey::MmioRead(notify), 1),
                (ExitKey::Other(OtherExit::Interrupted), 1),
            ]
        );
    }

    #[test]
    fn the_split_irqchips_ioapic_registers_are_named() {
        let name = |offset| describe_mmio(layout::IOAPIC_START + offset);
        assert_eq!(name(0x00), ("IOAPIC".to_string(), "IOREGSEL".to_string()));
        assert_eq!(name(0x10), ("IOAPIC".to_string(), "IOWIN".to_string()));
        assert_eq!(name(0x40), ("IOAPIC".to_string(), String::new()));
    }

    #[test]
    fn many_mmio_addresses_fill_the_table_then_overflow() {
        let stats = ExitStats::new();
        let n = MMIO_SLOTS as u64 + 100;
        for addr in 0..n {
            stats.mmio(addr * 4, false);
        }
        // Address u64::MAX has no key: it is counted as overflow.
        stats.mmio(u64::MAX, true);
        let rows = stats.rows();
        let total: u64 = rows.iter().map(|r| r.1).sum();
        assert_eq!(total, n + 1);
        assert!(rows.iter().any(|r| r.0 == ExitKey::MmioOverflow));
    }

    #[test]
    fn table_names_devices_and_sums() {
        let stats = ExitStats::new();
        for _ in 0..15 {
            stats.pio(0x3f8, true);
        }
        stats.pio(0x600, true);
        stats.pio(0x80, true);
        stats.mmio(layout::VIRTIO_MMIO_START + 0x2050, true);
        stats.other(OtherExit::Hlt);
        let table = stats.table();
        assert!(
            table.starts_with("vmm: vCPU exits: 19 in total\n"),
            "{table}"
        );
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("0x3f8"),
            ["15", "78.95", "pio-out", "0x3f8", "serial", "COM1", "THR"]
        );
        assert_eq!(
            line("0x600"),
            ["1", "5.26", "pio-out", "0x600", "ACPI", "sleep", "control"]
        );
        assert_eq!(
            line("0xd0002050"),
            [
                "1",
                "5.26",
                "mmio-write",
                "0xd0002050",
                "virtio-mmio",
                "slot",
                "2",
                "0x050",
                "QueueNotify"
            ]
        );
        assert!(table.contains("unclaimed: POST delay"), "{table}");
        assert!(table.contains("hlt"), "{table}");
        assert!(table.trim_end().ends_with("19 100.00  total"), "{table}");
    }

    #[test]
    fn an_empty_table_has_a_zero_total() {
        let table = ExitStats::new().table();
        assert!(table.contains("0 in total"), "{table}");
    }
}
