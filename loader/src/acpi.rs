//! ACPI tables for x86-64 guests: RSDP, XSDT, a hardware-reduced FADT, a DSDT with the legacy
//! devices (COM1, the i8042) and the MADT (local APICs, the IOAPIC, IRQ 0 on GSI 2, LINT1 as
//! NMI), built with rust-vmm's `acpi_tables` and placed where Linux scans for the RSDP
//! ([`BootLayout::acpi_start`]).
//!
//! Kernels without MP-table support (Debian's cloud kernel, for one) find their CPUs and the
//! IOAPIC only here; without it they fall back to the 8259 PIC in "virtual wire" mode.
//! Hardware-reduced ACPI means no PM timer, SCI, PM1 blocks or GPEs to emulate, and no legacy
//! PIC for Linux. Power-off goes through the FADT's sleep control register
//! ([`BootLayout::acpi_pm_port`]: the guest writes SLP_TYP 5 with SLP_EN, [`S5_SLEEP_CONTROL`],
//! which Linux does when the DSDT has an `_S5_` package and the FADT both sleep registers), reset
//! through the FADT's reset register ([`RESET_VALUE`]), and the power button is a Generic Event
//! Device ([`BootLayout::ged`]: `ACPI0013`, whose `_EVT` method reads the event register and
//! notifies the `PNP0C0C` power button device when bit [`GED_POWER_BUTTON`] is set). With
//! hardware-reduced ACPI a legacy device's IRQ then reaches the IOAPIC only if the DSDT declares the
//! device with its interrupt, so COM1, the i8042 and every virtio-mmio device (`LNRO0005`, the
//! ID Linux's virtio_mmio driver matches) are declared there. The `virtio_mmio.device=` command
//! line entries are for kernels booted with `acpi=off` (see [`crate::virtio_mmio_cmdline`]).
//! `acpi_tables` has no MADT interrupt source override or local APIC NMI structure, so those
//! two are written as raw bytes from the ACPI spec's layout.

use acpi_tables::aml::{
    And, Device, EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name, Notify, OpRegion,
    OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO, ONE,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot_layout::{addr32, BootLayout};
use crate::error::{Error, Result};
use crate::VirtioMmioDevice;

const OEM_ID: [u8; 6] = *b"RSVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"RSVMMTBL";
const OEM_REVISION: u32 = 1;

/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel PIC), which the OS masks;
/// set when [`BootLayout::legacy_pic`] says so.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Polarity and trigger "conform to the bus" (ISA: active high, edge).
const MPS_INTI_CONFORMS: u16 = 0;
/// All processors, in a local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// The sleep type of S5 (soft off) in the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN, bit 5 of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// What a guest writes to the sleep control register to power off: SLP_TYP (bits 2..4) = 5
/// and SLP_EN.
pub const S5_SLEEP_CONTROL: u8 = (S5_SLEEP_TYPE << 2) | SLEEP_ENABLE;
/// Offset of the sleep status register from [`BootLayout::acpi_pm_port`].
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Offset of the reset register from [`BootLayout::acpi_pm_port`].
pub const RESET_OFFSET: u16 = 2;
/// What a guest writes to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// Bit of the GED's event register that says the power button was pressed.
pub const GED_POWER_BUTTON: u8 = 1;
/// Notify value of a power button press (ACPI: "S0 power button pressed").
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// Largest vCPU count the tables describe (APIC ids are one byte; the IOAPIC takes the next).
const MAX_CPUS: u8 = 254;

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// An edge-triggered, active-high, exclusive ISA interrupt.
fn isa_interrupt(irq: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, irq)
}

fn dsdt(boot: &BootLayout, virtio: &[VirtioMmioDevice]) -> Result<Sdt> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let com1_port = IO::new(0x3f8, 0x3f8, 1, 8);
    let com1_irq = isa_interrupt(boot.serial_irq);
    let com1_resources = ResourceTemplate::new(vec![&com1_port, &com1_irq]);
    let com1_hid = EISAName::new("PNP0501");
    let com1_names = [
        Name::new(Path::new("_HID"), &com1_hid),
        Name::new(Path::new("_UID"), &0u8),
        Name::new(Path::new("_CRS"), &com1_resources),
    ];
    let com1 = Device::new(
        Path::new("COM1"),
        com1_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    let kbd_data = IO::new(0x60, 0x60, 1, 1);
    let kbd_command = IO::new(0x64, 0x64, 1, 1);
    let kbd_irq = isa_interrupt(boot.keyboard_irq);
    let kbd_resources = ResourceTemplate::new(vec![&kbd_data, &kbd_command, &kbd_irq]);
    let kbd_hid = EISAName::new("PNP0303");
    let kbd_names = [
        Name::new(Path::new("_HID"), &kbd_hid),
        Name::new(Path::new("_CRS"), &kbd_resources),
    ];
    let kbd = Device::new(
        Path::new("PS2K"),
        kbd_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    // One `Device` per virtio-mmio slot; the AML objects borrow their parts, so those live in
    // vectors built first.
    let mut ranges = Vec::with_capacity(virtio.len());
    let mut irqs = Vec::with_capacity(virtio.len());
    for dev in virtio {
        let (Ok(base), Ok(size)) = (u32::try_from(dev.addr), u32::try_from(dev.size)) else {
            return Err(Error::VirtioMmioAbove4G { addr: dev.addr });
        };
        ranges.push(Memory32Fixed::new(true, base, size));
        irqs.push(isa_interrupt(dev.irq));
    }
    let resources: Vec<ResourceTemplate> = ranges
        .iter()
        .zip(&irqs)
        .map(|(range, irq)| ResourceTemplate::new(vec![range, irq]))
        .collect();
    let uids: Vec<u32> = (0..virtio.len() as u32).collect();
    let hid = "LNRO0005";
    let names: Vec<[Name; 3]> = resources
        .iter()
        .zip(&uids)
        .map(|(crs, uid)| {
            [
                Name::new(Path::new("_HID"), &hid),
                Name::new(Path::new("_UID"), uid),
                Name::new(Path::new("_CRS"), crs),
            ]
        })
        .collect();
    let paths: Vec<String> = (0..virtio.len()).map(|i| format!("V{i:03X}")).collect();
    let devices: Vec<Device> = names
        .iter()
        .zip(&paths)
        .map(|(names, path)| {
            Device::new(
                Path::new(path),
                names.iter().map(|n| n as &dyn Aml).collect(),
            )
        })
        .collect();
    let mut children: Vec<&dyn Aml> = vec![&com1, &kbd];
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    let power = boot.ged.map(power_button).transpose()?;
    if let Some(power) = &power {
        children.push(power);
    }
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut dsdt);
    if boot.acpi_pm_port.is_some() {
        // \_S5_: SLP_TYPa (SLP_TYPb is unused with the hardware-reduced sleep registers).
        let s5 = Package::new(vec![&S5_SLEEP_TYPE]);
        Name::new(Path::new("\\_S5_"), &s5).to_aml_bytes(&mut dsdt);
    }
    Ok(dsdt)
}

/// The power button (`\_SB_.PWRB`, `PNP0C0C`) and the Generic Event Device (`\_SB_.GED_`,
/// `ACPI0013`) that reports its presses, as AML bytes:
///
/// ```text
/// Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, 0) }
/// Device (GED_) {
///     Name (_HID, "ACPI0013") Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () { Interrupt (, Edge, ActiveHigh, Exclusive) { irq } })
///     OperationRegion (GDST, SystemMemory, addr, 1)
///     Field (GDST, ByteAcc, NoLock, WriteAsZeros) { GDAT, 8 }
///     Method (_EVT, 1, Serialized) {
///         Store (GDAT, Local0)   // reading clears the register
///         And (Local0, 1, Local1)
///         If (LEqual (Local1, One)) { Notify (\_SB_.PWRB, 0x80) }
///     }
/// }
/// ```
fn power_button(ged: crate::GedLayout) -> Result<AmlBytes> {
    let addr = addr32("GED (DSDT)", ged.addr)?;
    let mut out = Vec::new();
    let hid = EISAName::new("PNP0C0C");
    let names = [
        Name::new(Path::new("_HID"), &hid),
        Name::new(Path::new("_UID"), &0u8),
    ];
    Device::new(
        Path::new("PWRB"),
        names.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut out);

    let irq = isa_interrupt(ged.irq);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = OpRegion::new(Path::new("GDST"), OpRegionSpace::SystemMemory, &addr, &1u8);
    let field = Field::new(
        Path::new("GDST"),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = Path::new("GDAT");
    let read = Store::new(&Local(0), &gdat);
    let masked = And::new(&Local(1), &Local(0), &GED_POWER_BUTTON);
    let button = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
    let pressed = Equal::new(&Local(1), &ONE);
    let when = If::new(&pressed, vec![&notify]);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&read, &masked, &when]);
    let hid = "ACPI0013";
    let parts: [&dyn Aml; 6] = [
        &Name::new(Path::new("_HID"), &hid),
        &Name::new(Path::new("_UID"), &0u8),
        &Name::new(Path::new("_CRS"), &crs),
        &region,
        &field,
        &evt,
    ];
    Device::new(Path::new("GED_"), parts.to_vec()).to_aml_bytes(&mut out);
    Ok(AmlBytes(out))
}

/// AML already encoded.
struct AmlBytes(Vec<u8>);

impl Aml for AmlBytes {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn madt(boot: &BootLayout, num_cpus: u8) -> Result<Vec<u8>> {
    // Header (36 bytes), local APIC address, flags.
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, addr32("local APIC (MADT)", boot.lapic_addr)?);
    madt.write_u32(40, if boot.legacy_pic { MADT_PCAT_COMPAT } else { 0 });
    for cpu in 0..num_cpus {
        madt.append_slice(&bytes(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    // The IOAPIC id follows the APIC ids of the CPUs, as in the MP table.
    madt.append_slice(&bytes(&IoApic::new(
        num_cpus,
        addr32("IOAPIC (MADT)", boot.ioapic_addr)?,
        0,
    )));
    // ISA IRQ 0 (the PIT) arrives on GSI 2, as KVM's default routing wires it.
    let mut iso = vec![MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    madt.append_slice(&iso);
    // LINT1 of every local APIC is the NMI input.
    let mut nmi = vec![MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS];
    nmi.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    nmi.push(1);
    madt.append_slice(&nmi);
    Ok(madt.as_slice().to_vec())
}

/// Writes the ACPI tables for `num_cpus` vCPUs and the `virtio` devices at `boot.acpi_start`,
/// RSDP first, within `boot.acpi_max_size` bytes: the MADT with the local APICs at
/// `boot.lapic_addr` and the IOAPIC at `boot.ioapic_addr`, the DSDT with COM1 on
/// `boot.serial_irq` and the i8042 on `boot.keyboard_irq`.
pub fn setup_acpi<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootLayout,
    num_cpus: u8,
    virtio: &[VirtioMmioDevice],
) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    let start = boot.acpi_start;
    // Each table 16-byte aligned after the one before, as offsets from `start` (a few KiB in all:
    // no overflow). The addresses saturate; the size check below refuses an area that would
    // run past the end of the address space.
    let align = |offset: u64| (offset + 15) & !15;
    let at = |offset: u64| start.saturating_add(offset);
    let dsdt_offset = align(Rsdp::len() as u64);
    let dsdt = dsdt(boot, virtio)?;
    let fadt_offset = align(dsdt_offset + dsdt.len() as u64);
    // Hardware-reduced: no PM timer, SCI, PM1 blocks or GPEs to emulate. Power-off through
    // the sleep registers, reset through the reset register (or the i8042, `reboot=k`).
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(at(dsdt_offset));
    if let Some(port) = boot.acpi_pm_port {
        let register = |offset: u16| {
            GAS::new(
                AddressSpace::SystemIo,
                8,
                0,
                AccessSize::ByteAccess,
                u64::from(port) + u64::from(offset),
            )
        };
        fadt.sleep_control_reg = register(0);
        fadt.sleep_status_reg = register(SLEEP_STATUS_OFFSET);
        fadt.reset_reg = register(RESET_OFFSET);
        fadt.reset_value = RESET_VALUE;
        fadt = fadt.flag(Flags::ResetRegSup);
    }
    let fadt = bytes(&fadt.finalize());
    let madt_offset = align(fadt_offset + fadt.len() as u64);
    let madt = madt(boot, num_cpus)?;
    let xsdt_offset = align(madt_offset + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(at(fadt_offset));
    xsdt.add_entry(at(madt_offset));
    let xsdt = bytes(&xsdt);
    let rsdp = bytes(&Rsdp::new(OEM_ID, at(xsdt_offset)));

    let size = xsdt_offset + xsdt.len() as u64;
    if size > boot.acpi_max_size || start.checked_add(size).is_none() {
        return Err(Error::AcpiTooLarge {
            size,
            max: boot.acpi_max_size,
            addr: start,
        });
    }
    for (what, offset, table) in [
        ("ACPI RSDP", 0, &rsdp),
        ("ACPI DSDT", dsdt_offset, &dsdt.as_slice().to_vec()),
        ("ACPI FADT", fadt_offset, &fadt),
        ("ACPI MADT", madt_offset, &madt),
        ("ACPI XSDT", xsdt_offset, &xsdt),
    ] {
        let addr = at(offset);
        mem.write_slice(table, GuestAddress(addr))
            .map_err(|source| Error::GuestWrite { what, addr, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_memory::{create_guest_memory, layout, GuestMemoryMmap, MemoryOptions};

    fn setup_acpi(mem: &GuestMemoryMmap, num_cpus: u8, virtio: &[VirtioMmioDevice]) -> Result<()> {
        super::setup_acpi(mem, &BootLayout::default(), num_cpus, virtio)
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    /// Reads a whole table at `addr` (length from its header) and checks its checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[..4], signature);
        let table = read(mem, addr, u32_at(&header, 4) as usize);
        assert!(
            checksum_ok(&table),
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        table
    }

    #[test]
    fn virtio_devices_are_declared_in_the_dsdt() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        let devices = [
            VirtioMmioDevice {
                addr: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            VirtioMmioDevice {
                addr: 0xd000_1000,
                size: 0x1000,
                irq: 23,
            },
        ];
        setup_acpi(&mem, 1, &devices).unwrap();
        let rsdp = read(&mem, layout::ACPI_START, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 2);
        assert_eq!(count(b"V000") + count(b"V001"), 2);
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        for d in &devices {
            let mut range = vec![0x86, 9, 0, 1];
            range.extend_from_slice(&(d.addr as u32).to_le_bytes());
            range.extend_from_slice(&(d.size as u32).to_le_bytes());
            assert_eq!(count(&range), 1, "{d:?}");
        }
        let above = [VirtioMmioDevice {
            addr: 1 << 32,
            size: 0x1000,
            irq: 5,
        }];
        assert!(matches!(
            setup_acpi(&mem, 1, &above),
            Err(Error::VirtioMmioAbove4G { .. })
        ));
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        setup_acpi(&mem, 4, &[]).unwrap();
        let rsdp = read(&mem, layout::ACPI_START, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|at| u64_at(&xsdt, at))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&mem, entries[0], b"FACP");
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "hardware-reduced ACPI");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"COM1") && has(b"PS2K") && has(b"_CRS"),
            "legacy devices declared"
        );
        let madt = table(&mem, entries[1], b"APIC");
        assert_eq!(u32_at(&madt, 36), layout::LAPIC_START as u32);
        assert_eq!(
            u32_at(&madt, 40),
            MADT_PCAT_COMPAT,
            "the default layout has PICs"
        );
        // Walk the MADT's structures.
        let (mut cpus, mut ioapic, mut overrides, mut nmis) = (vec![], None, vec![], 0);
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            let entry = &madt[at..at + len];
            match kind {
                0 => {
                    assert_eq!(u32_at(entry, 4), 1, "enabled");
                    cpus.push(entry[3]);
                }
                1 => ioapic = Some((entry[2], u32_at(entry, 4), u32_at(entry, 8))),
                2 => overrides.push((entry[3], u32_at(entry, 4))),
                4 => nmis += 1,
                other => panic!("unexpected MADT structure {other}"),
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(cpus, vec![0, 1, 2, 3]);
        assert_eq!(ioapic, Some((4, layout::IOAPIC_START as u32, 0)));
        assert_eq!(overrides, vec![(0, 2)], "IRQ 0 on GSI 2");
        assert_eq!(nmis, 1);
    }

    /// The DSDT and FADT that `boot` gives, checksums checked.
    fn dsdt_and_fadt(boot: &BootLayout) -> (Vec<u8>, Vec<u8>) {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        super::setup_acpi(&mem, boot, 1, &[]).unwrap();
        let rsdp = read(&mem, boot.acpi_start, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        (dsdt, fadt)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn power_off_reset_and_power_button() {
        let (dsdt, fadt) = dsdt_and_fadt(&BootLayout::default());
        let port = u64::from(layout::ACPI_PM_PORT);
        // A generic address: system I/O, 8 bits at bit 0, byte access, the port.
        let gas = |at: usize| {
            (
                fadt[at],
                fadt[at + 1],
                fadt[at + 2],
                fadt[at + 3],
                u64_at(&fadt, at + 4),
            )
        };
        assert_eq!(gas(244), (1, 8, 0, 1, port), "SLEEP_CONTROL_REG");
        assert_eq!(gas(256), (1, 8, 0, 1, port + 1), "SLEEP_STATUS_REG");
        assert_eq!(gas(116), (1, 8, 0, 1, port + 2), "RESET_REG");
        assert_eq!(fadt[128], RESET_VALUE);
        let flags = u32_at(&fadt, 112);
        for (bit, what) in [
            (20, "HW_REDUCED_ACPI"),
            (10, "RESET_REG_SUP"),
            (4, "PWR_BUTTON"),
        ] {
            assert_ne!(flags & (1 << bit), 0, "{what}");
        }
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
        // Name (\_S5_, Package (1) { 5 }): NameOp, root, name, PackageOp, length 4, 1 element,
        // BytePrefix 5.
        assert!(contains(&dsdt, b"\x08\\_S5_\x12\x04\x01\x0a\x05"), "_S5_");
        // The GED and the power button it notifies.
        assert!(contains(&dsdt, b"ACPI0013\0"));
        assert!(contains(&dsdt, &bytes(&EISAName::new("PNP0C0C"))));
        for name in [&b"GED_"[..], b"PWRB", b"_EVT", b"GDST", b"GDAT"] {
            assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(contains(&dsdt, &bytes(&isa_interrupt(layout::GED_IRQ))));
        // OperationRegion (GDST, SystemMemory, DWord address, 1).
        let mut region = b"\x5b\x80GDST\x00\x0c".to_vec();
        region.extend_from_slice(&(layout::GED_START as u32).to_le_bytes());
        region.push(0x01); // OneOp
        assert!(contains(&dsdt, &region), "GED operation region");
        // Notify (\_SB_.PWRB, 0x80).
        assert!(
            contains(&dsdt, b"\x86\\.\x5f\x53\x42\x5fPWRB\x0a\x80"),
            "Notify"
        );

        // A layout without them: none of it.
        let without = BootLayout {
            acpi_pm_port: None,
            ged: None,
            ..BootLayout::default()
        };
        let (dsdt, fadt) = dsdt_and_fadt(&without);
        assert!(!contains(&dsdt, b"_S5_") && !contains(&dsdt, b"ACPI0013"));
        assert_eq!(
            (u64_at(&fadt, 248), u64_at(&fadt, 260), u64_at(&fadt, 120)),
            (0, 0, 0)
        );
        assert_eq!(u32_at(&fadt, 112) & (1 << 10), 0);

        let high = BootLayout {
            ged: Some(crate::GedLayout {
                addr: 1 << 32,
                irq: 3,
            }),
            ..BootLayout::default()
        };
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        assert!(matches!(
            super::setup_acpi(&mem, &high, 1, &[]),
            Err(Error::AddressAbove4G { .. })
        ));
    }

    #[test]
    fn cpu_limits() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        assert!(setup_acpi(&mem, 0, &[]).is_err());
        assert!(setup_acpi(&mem, 255, &[]).is_err());
        setup_acpi(&mem, 254, &[]).unwrap();
    }

    #[test]
    fn a_foreign_memory_and_layout() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let boot = BootLayout {
            acpi_start: 0xf_0000,
            acpi_max_size: 0x1_0000,
            lapic_addr: 0xfee1_0000,
            ioapic_addr: 0xfec1_0000,
            serial_irq: 3,
            keyboard_irq: 12,
            legacy_pic: false,
            ..BootLayout::default()
        };
        super::setup_acpi(&mem, &boot, 2, &[]).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(0xf_0000)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        let xsdt_addr = u64_at(&rsdp, 24);
        assert!((0xf_0000..0x10_0000).contains(&xsdt_addr));
        let mut xsdt = [0u8; 52];
        mem.read_slice(&mut xsdt, GuestAddress(xsdt_addr)).unwrap();
        let madt_addr = u64_at(&xsdt, 44);
        let mut madt = [0u8; 44];
        mem.read_slice(&mut madt, GuestAddress(madt_addr)).unwrap();
        assert_eq!((&madt[..4], u32_at(&madt, 36)), (&b"APIC"[..], 0xfee1_0000));
        assert_eq!(u32_at(&madt, 40), 0, "no PCAT_COMPAT without PICs");
        // The DSDT declares COM1 on IRQ 3 and the keyboard on 12.
        let fadt_addr = u64_at(&xsdt, 36);
        let mut fadt = [0u8; 148];
        mem.read_slice(&mut fadt, GuestAddress(fadt_addr)).unwrap();
        let dsdt_addr = u64_at(&fadt, 140);
        let mut header = [0u8; 36];
        mem.read_slice(&mut header, GuestAddress(dsdt_addr))
            .unwrap();
        let mut dsdt = vec![0u8; u32_at(&header, 4) as usize];
        mem.read_slice(&mut dsdt, GuestAddress(dsdt_addr)).unwrap();
        let irq = |n: u32| {
            let needle = bytes(&isa_interrupt(n));
            dsdt.windows(needle.len()).any(|w| w == needle)
        };
        assert!(irq(3) && irq(12) && !irq(4) && !irq(1));

        let small = BootLayout {
            acpi_max_size: 0x100,
            ..boot
        };
        assert!(matches!(
            super::setup_acpi(&mem, &small, 2, &[]),
            Err(Error::AcpiTooLarge {
                max: 0x100,
                addr: 0xf_0000,
                ..
            })
        ));
        let end = BootLayout {
            acpi_start: u64::MAX - 0x100,
            acpi_max_size: u64::MAX,
            ..boot
        };
        assert!(matches!(
            super::setup_acpi(&mem, &end, 2, &[]),
            Err(Error::AcpiTooLarge { .. })
        ));
        let high = BootLayout {
            ioapic_addr: 1 << 32,
            ..boot
        };
        assert!(matches!(
            super::setup_acpi(&mem, &high, 2, &[]),
            Err(Error::AddressAbove4G { addr, .. }) if addr == 1 << 32
        ));
    }
}
