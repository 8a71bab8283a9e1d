//! An Intel MultiProcessor Specification 1.4 table, so that a guest without ACPI finds its
//! vCPUs, its IOAPIC and how ISA interrupts are wired.
//!
//! Written by hand: no rust-vmm crate publishes an MP table writer (Firecracker and Cloud
//! Hypervisor each keep a private one). The structures follow chapter 4 of the specification;
//! each is `#[repr(C, packed)]` with its size checked at compile time and in the tests.
//!
//! Layout at [`BootLayout::mptable_start`] (the EBDA in the VMM's layout), where Linux scans for
//! the floating pointer: floating pointer (16 bytes), configuration table header (44), one
//! processor entry per vCPU (20 each), one ISA bus, one IOAPIC, one I/O interrupt entry per
//! IOAPIC pin up to [`BootLayout::ioapic_last_pin`] (IRQ 0 twice, IRQ 2 not at all), 2 local
//! interrupt entries (8 each).

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot_layout::{addr32, BootLayout};
use crate::error::{Error, Result};

/// Most vCPUs: APIC ids 0..num_cpus, and the IOAPIC takes id num_cpus, all below the broadcast
/// id 0xff.
const MAX_CPUS: u8 = 254;
/// Specification revision 1.4.
const SPEC_REVISION: u8 = 4;
const OEM_ID: [u8; 8] = *b"RVMMLDR ";
const PRODUCT_ID: [u8; 12] = *b"VMM-LOADER  ";
/// Local APIC version of a modern integrated APIC (what KVM's in-kernel LAPIC reports).
const LAPIC_VERSION: u8 = 0x14;
/// The in-kernel IOAPIC's version.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6, model 0, stepping 0 (the guest reads the real one from CPUID).
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags: FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const IOAPIC_ENABLED: u8 = 1;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (ISA: active high, edge).
const INT_FLAGS_CONFORM: u16 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpFloatingPointer {
    signature: [u8; 4],
    physptr: u32,
    /// In 16-byte units.
    length: u8,
    spec_rev: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    feature2: u8,
    feature3: [u8; 3],
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table_ptr: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_table_length: u16,
    ext_table_checksum: u8,
    reserved: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpProcessor {
    entry_type: u8,
    lapic_id: u8,
    lapic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

/// How ISA IRQs reach the IOAPIC, as (interrupt type, ISA IRQ, IOAPIC pin): as on a PC and as
/// KVM's default GSI routing wires them, the PIT's IRQ 0 arrives on pin 2 (pin 0 carries the
/// PIC's ExtINT), IRQ 2 is the PIC cascade and has no pin, every other IRQ its own pin.
/// Announcing IRQ 0 on pin 0 instead sends Linux through its timer-fallback probing, which
/// under a slow (nested) host can pick a dead timer and hang the boot.
/// Every IOAPIC pin a device may use gets an entry: ISA IRQs 1-15 and the pins up to
/// `last_pin` that virtio-mmio devices from the command line use with `acpi=off`.
fn isa_interrupt_routes(last_pin: u8) -> impl Iterator<Item = (u8, u8, u8)> {
    [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_INT, 0, 2)]
        .into_iter()
        .chain(
            (1..=last_pin)
                .filter(|&irq| irq != 2)
                .map(|irq| (INT_TYPE_INT, irq, irq)),
        )
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpIoApic {
    entry_type: u8,
    id: u8,
    version: u8,
    flags: u8,
    addr: u32,
}

/// I/O interrupt assignment (entry type 3) and local interrupt assignment (type 4) share this
/// layout; for type 4 the destination is a local APIC id and its LINT pin.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpInterrupt {
    entry_type: u8,
    int_type: u8,
    flags: u16,
    src_bus: u8,
    src_irq: u8,
    dst_id: u8,
    dst_pin: u8,
}

// SAFETY: each is `repr(C, packed)` of integers and byte arrays only: no padding, and every bit
// pattern is a valid value, which is what `ByteValued` requires.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above.
unsafe impl ByteValued for MpInterrupt {}

const _: () = assert!(std::mem::size_of::<MpFloatingPointer>() == 16);
const _: () = assert!(std::mem::size_of::<MpConfigHeader>() == 44);
const _: () = assert!(std::mem::size_of::<MpProcessor>() == 20);
const _: () = assert!(std::mem::size_of::<MpBus>() == 8);
const _: () = assert!(std::mem::size_of::<MpIoApic>() == 8);
const _: () = assert!(std::mem::size_of::<MpInterrupt>() == 8);

/// Two's complement of the byte sum, so that the structure sums to 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
        .wrapping_neg()
}

/// Size in bytes of the whole MP table for `num_cpus` vCPUs and IOAPIC pins up to `last_pin`.
fn table_size(num_cpus: u8, last_pin: u8) -> u64 {
    use std::mem::size_of;
    // The I/O interrupt entries, then LINT0 and LINT1.
    let interrupts = isa_interrupt_routes(last_pin).count() + 2;
    (size_of::<MpFloatingPointer>()
        + size_of::<MpConfigHeader>()
        + usize::from(num_cpus) * size_of::<MpProcessor>()
        + size_of::<MpBus>()
        + size_of::<MpIoApic>()
        + interrupts * size_of::<MpInterrupt>()) as u64
}

/// Writes the MP table for `num_cpus` vCPUs (APIC ids `0..num_cpus`, the first one the BSP),
/// the IOAPIC at `boot.ioapic_addr` with pins up to `boot.ioapic_last_pin` and the local APICs
/// at `boot.lapic_addr`, at `boot.mptable_start`.
pub fn setup_mptable<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootLayout,
    num_cpus: u8,
) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus {
            num_cpus,
            max: MAX_CPUS,
        });
    }
    let start = boot.mptable_start;
    let size = table_size(num_cpus, boot.ioapic_last_pin);
    let table_addr = start.checked_add(std::mem::size_of::<MpFloatingPointer>() as u64);
    let Some(table_addr) = table_addr.filter(|_| size <= boot.mptable_max_size) else {
        return Err(Error::MpTableTooLarge {
            size,
            max: boot.mptable_max_size,
            addr: start,
        });
    };
    let physptr = addr32("MP configuration table", table_addr)?;
    let lapic_addr = addr32("local APIC (MP table)", boot.lapic_addr)?;
    let ioapic_addr = addr32("IOAPIC (MP table)", boot.ioapic_addr)?;

    // The entries first: the header needs their length, count and checksum.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for id in 0..num_cpus {
        let mut flags = CPU_ENABLED;
        if id == 0 {
            flags |= CPU_BOOTSTRAP;
        }
        push(
            MpProcessor {
                entry_type: ENTRY_PROCESSOR,
                lapic_id: id,
                lapic_version: LAPIC_VERSION,
                flags,
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    const ISA_BUS_ID: u8 = 0;
    push(
        MpBus {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    let ioapic_id = num_cpus;
    push(
        MpIoApic {
            entry_type: ENTRY_IOAPIC,
            id: ioapic_id,
            version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            addr: ioapic_addr,
        }
        .as_slice(),
    );
    for (int_type, src_irq, dst_pin) in isa_interrupt_routes(boot.ioapic_last_pin) {
        push(
            MpInterrupt {
                entry_type: ENTRY_IO_INTERRUPT,
                int_type,
                flags: INT_FLAGS_CONFORM,
                src_bus: ISA_BUS_ID,
                src_irq,
                dst_id: ioapic_id,
                dst_pin,
            }
            .as_slice(),
        );
    }
    // LINT0 takes the legacy PIC's ExtINT, LINT1 the NMI, on every local APIC.
    for (pin, int_type) in [(0, INT_TYPE_EXTINT), (1, INT_TYPE_NMI)] {
        push(
            MpInterrupt {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                int_type,
                flags: INT_FLAGS_CONFORM,
                src_bus: ISA_BUS_ID,
                src_irq: 0,
                dst_id: ALL_LOCAL_APICS,
                dst_pin: pin,
            }
            .as_slice(),
        );
    }

    let base_length = std::mem::size_of::<MpConfigHeader>() + entries.len();
    let mut header = MpConfigHeader {
        signature: *b"PCMP",
        // At most 44 + 254 * 20 + 8 + 8 + 258 * 8 bytes: fits in u16.
        base_length: base_length as u16,
        spec_rev: SPEC_REVISION,
        checksum: 0,
        oem_id: OEM_ID,
        product_id: PRODUCT_ID,
        oem_table_ptr: 0,
        oem_table_size: 0,
        entry_count: count,
        lapic_addr,
        ext_table_length: 0,
        ext_table_checksum: 0,
        reserved: 0,
    };
    header.checksum = checksum(header.as_slice()).wrapping_add(checksum(&entries));

    let mut fp = MpFloatingPointer {
        signature: *b"_MP_",
        physptr,
        length: 1,
        spec_rev: SPEC_REVISION,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    let mut table = Vec::with_capacity(size as usize);
    table.extend_from_slice(fp.as_slice());
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    mem.write_slice(&table, GuestAddress(start))
        .map_err(|source| Error::GuestWrite {
            what: "MP table",
            addr: start,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_memory::{layout, GuestMemoryMmap};

    const LAST_PIN: u8 = layout::IRQ_LAST as u8;

    fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<()> {
        super::setup_mptable(mem, &BootLayout::default(), num_cpus)
    }

    fn memory() -> GuestMemoryMmap {
        vmm_memory::create_guest_memory(64 << 20, Default::default()).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    /// Parses the table back as a guest would: returns (header, entries bytes).
    fn read_back(mem: &GuestMemoryMmap) -> (MpConfigHeader, Vec<u8>) {
        let fp: MpFloatingPointer = mem.read_obj(GuestAddress(layout::EBDA_START)).unwrap();
        assert_eq!(&fp.signature, b"_MP_");
        assert_eq!(fp.length, 1);
        assert_eq!(fp.spec_rev, 4);
        assert_eq!(fp.feature1, 0);
        assert_eq!(sum(fp.as_slice()), 0);
        let addr = GuestAddress(u64::from(fp.physptr));
        let header: MpConfigHeader = mem.read_obj(addr).unwrap();
        assert_eq!(&header.signature, b"PCMP");
        assert_eq!(header.spec_rev, 4);
        let mut all = vec![0u8; usize::from(header.base_length)];
        mem.read_slice(&mut all, addr).unwrap();
        assert_eq!(sum(&all), 0, "configuration table checksum");
        (header, all[44..].to_vec())
    }

    #[test]
    fn struct_sizes() {
        assert_eq!(std::mem::size_of::<MpFloatingPointer>(), 16);
        assert_eq!(std::mem::size_of::<MpConfigHeader>(), 44);
        assert_eq!(std::mem::size_of::<MpProcessor>(), 20);
        assert_eq!(std::mem::size_of::<MpBus>(), 8);
        assert_eq!(std::mem::size_of::<MpIoApic>(), 8);
        assert_eq!(std::mem::size_of::<MpInterrupt>(), 8);
    }

    #[test]
    fn table_parses_back() {
        for num_cpus in [1u8, 2, 8, 254] {
            let mem = memory();
            setup_mptable(&mem, num_cpus).unwrap();
            let (header, entries) = read_back(&mem);
            assert_eq!(
                u64::from(header.base_length) + 16,
                table_size(num_cpus, LAST_PIN),
                "{num_cpus}"
            );
            let mut cpus = 0;
            let mut bsp = 0;
            let mut ioapic = None;
            let mut isa_irqs = Vec::new();
            let mut lints = Vec::new();
            let mut seen = 0;
            let mut at = 0;
            while at < entries.len() {
                seen += 1;
                match entries[at] {
                    ENTRY_PROCESSOR => {
                        let p = MpProcessor::from_slice(&entries[at..at + 20]).unwrap();
                        assert_eq!(p.lapic_id, cpus);
                        assert_ne!(p.flags & CPU_ENABLED, 0);
                        if p.flags & CPU_BOOTSTRAP != 0 {
                            assert_eq!(p.lapic_id, 0);
                            bsp += 1;
                        }
                        cpus += 1;
                        at += 20;
                    }
                    ENTRY_BUS => {
                        assert_eq!(&entries[at + 2..at + 8], b"ISA   ");
                        at += 8;
                    }
                    ENTRY_IOAPIC => {
                        let a = MpIoApic::from_slice(&entries[at..at + 8]).unwrap();
                        ioapic = Some((a.id, a.version, { a.addr }));
                        at += 8;
                    }
                    ENTRY_IO_INTERRUPT => {
                        let i = MpInterrupt::from_slice(&entries[at..at + 8]).unwrap();
                        assert_eq!(i.dst_id, num_cpus);
                        isa_irqs.push((i.src_irq, i.dst_pin));
                        at += 8;
                    }
                    ENTRY_LOCAL_INTERRUPT => {
                        let i = MpInterrupt::from_slice(&entries[at..at + 8]).unwrap();
                        lints.push((i.int_type, i.dst_id, i.dst_pin));
                        at += 8;
                    }
                    other => panic!("unknown entry type {other}"),
                }
            }
            assert_eq!(cpus, num_cpus);
            assert_eq!(bsp, 1);
            assert_eq!({ header.entry_count }, seen);
            assert_eq!(ioapic, Some((num_cpus, 0x11, layout::IOAPIC_START as u32)));
            let mut expected = vec![(0, 0), (0, 2)];
            expected.extend((1..=23).filter(|&i| i != 2).map(|i| (i, i)));
            assert_eq!(isa_irqs, expected);
            assert_eq!(lints, vec![(3, 0xff, 0), (1, 0xff, 1)]);
            assert_eq!({ header.lapic_addr }, layout::LAPIC_START as u32);
        }
    }

    #[test]
    fn cpu_count_limits() {
        let mem = memory();
        for bad in [0u8, 255] {
            let err = setup_mptable(&mem, bad).unwrap_err();
            assert!(
                matches!(err, Error::TooManyCpus { num_cpus, max: 254 } if num_cpus == bad),
                "{err}"
            );
        }
        assert!(table_size(254, LAST_PIN) <= layout::MPTABLE_MAX_SIZE);
        // Every pin a u8 can name still fits the header's 16-bit length.
        assert!(table_size(254, u8::MAX) < u64::from(u16::MAX));
    }

    #[test]
    fn fails_cleanly_without_memory_at_the_ebda() {
        // A memory that ends below the EBDA (not one vmm-memory would build).
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(Error::GuestWrite { .. })
        ));
    }

    #[test]
    fn a_foreign_memory_and_layout() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let boot = BootLayout {
            mptable_start: 0xf_0000,
            mptable_max_size: 0x1000,
            lapic_addr: 0xfee1_0000,
            ioapic_addr: 0xfec1_0000,
            ioapic_last_pin: 15,
            ..BootLayout::default()
        };
        super::setup_mptable(&mem, &boot, 2).unwrap();
        let fp: MpFloatingPointer = mem.read_obj(GuestAddress(0xf_0000)).unwrap();
        assert_eq!((&fp.signature, { fp.physptr }), (b"_MP_", 0xf_0010));
        let header: MpConfigHeader = mem.read_obj(GuestAddress(0xf_0010)).unwrap();
        assert_eq!({ header.lapic_addr }, 0xfee1_0000);
        // 2 CPUs, bus, IOAPIC, 16 I/O interrupts (IRQ 0 twice, none for 2), 2 local ones.
        assert_eq!({ header.entry_count }, 2 + 1 + 1 + 16 + 2);
        assert_eq!(u64::from(header.base_length) + 16, table_size(2, 15));
        let ioapic: MpIoApic = mem
            .read_obj(GuestAddress(0xf_0010 + 44 + 2 * 20 + 8))
            .unwrap();
        assert_eq!(
            (ioapic.entry_type, { ioapic.addr }),
            (ENTRY_IOAPIC, 0xfec1_0000)
        );

        let small = BootLayout {
            mptable_max_size: 0x100,
            ..boot
        };
        assert!(matches!(
            super::setup_mptable(&mem, &small, 2),
            Err(Error::MpTableTooLarge {
                max: 0x100,
                addr: 0xf_0000,
                ..
            })
        ));
        let high = BootLayout {
            lapic_addr: 1 << 32,
            ..boot
        };
        assert!(matches!(
            super::setup_mptable(&mem, &high, 2),
            Err(Error::AddressAbove4G { addr, .. }) if addr == 1 << 32
        ));
        let end = BootLayout {
            mptable_start: u64::MAX - 8,
            ..boot
        };
        assert!(matches!(
            super::setup_mptable(&mem, &end, 2),
            Err(Error::MpTableTooLarge { .. })
        ));
    }
}
