//! Per-vCPU CPUID from KVM's supported CPUID: APIC ids and topology (one socket of
//! `vcpu_count` logical processors, one or two threads per core), the hypervisor bit, and
//! nothing the VMM cannot back.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaves 0xB / 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed for APIC ids of `count` cores (the x2APIC id shift of the core level).
fn apic_id_bits(count: u8) -> u32 {
    let count = u32::from(count.max(1));
    32 - (count - 1).leading_zeros()
}

/// The processor topology the guest sees: `vcpus` logical processors in one socket, paired as
/// the two threads of a core when `smt` (Firecracker's `smt`), else one thread per core. APIC
/// ids are the vCPU indexes, so with SMT vCPUs 2k and 2k+1 are the threads of core k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Logical processors (vCPUs).
    pub vcpus: u8,
    /// Two threads per core instead of one.
    pub smt: bool,
}

impl From<u8> for CpuTopology {
    /// `vcpus` single-threaded cores.
    fn from(vcpus: u8) -> CpuTopology {
        CpuTopology { vcpus, smt: false }
    }
}

impl CpuTopology {
    /// Threads per core: 2 with SMT (and more than one vCPU), else 1.
    pub fn threads_per_core(self) -> u32 {
        if self.smt && self.vcpus > 1 {
            2
        } else {
            1
        }
    }
}

/// Rewrites `cpuid` (KVM's supported CPUID) for vCPU `index` of `topology` (a vCPU count
/// converts into single-threaded cores).
pub fn normalize(cpuid: &mut CpuId, index: u8, topology: impl Into<CpuTopology>) {
    let topology = topology.into();
    let shape = Shape {
        apic_id: u32::from(index),
        count: u32::from(topology.vcpus.max(1)),
        threads: topology.threads_per_core(),
    };
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, &shape);
    }
}

/// What one vCPU's CPUID says about where it sits.
struct Shape {
    apic_id: u32,
    /// Logical processors in the package.
    count: u32,
    /// Threads per core (1 or 2).
    threads: u32,
}

impl Shape {
    /// Bits of the APIC id that number the thread within its core.
    fn thread_bits(&self) -> u32 {
        self.threads - 1
    }

    /// Bits of the APIC id below the package level (thread and core).
    fn package_bits(&self) -> u32 {
        // Every APIC id 0..count must fit, and the core level sits above the thread bits.
        apic_id_bits(u8::try_from(self.count).unwrap_or(u8::MAX)).max(self.thread_bits())
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, shape: &Shape) {
    let (apic_id, count, threads) = (shape.apic_id, shape.count, shape.threads);
    let core_bits = shape.package_bits();
    match entry.function {
        LEAF_FEATURES => {
            // EBX: APIC id in 31:24, logical processors per package in 23:16, CLFLUSH 8 qwords.
            entry.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            // KVM offers the TSC deadline timer only through the in-kernel LAPIC, which we have.
            entry.ecx |= ECX_TSC_DEADLINE;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX 31:26: cores per package - 1; 25:14: threads sharing this cache - 1
            // (a core's threads, except the shared last level).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { threads - 1 };
            entry.eax &= 0x3fff;
            entry.eax |= ((count / threads - 1) & 0x3f) << 26;
            entry.eax |= (sharing & 0xfff) << 14;
        }
        LEAF_PMU => {
            // No virtual PMU: guests must not program counters we never set up.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = shape.thread_bits();
                    entry.ebx = threads;
                    entry.ecx = (LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_bits;
                    entry.ebx = count;
                    entry.ecx = (LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_SIZES => {
            // ECX 15:12: APIC id size; 7:0: cores - 1.
            entry.ecx = (core_bits << 12) | ((count - 1) & 0xff);
        }
        LEAF_AMD_EXT_APIC => {
            entry.eax = apic_id;
            // EBX 15:8: threads per compute unit - 1; 7:0: the compute unit's id.
            entry.ebx &= !0xffff;
            entry.ebx |= ((threads - 1) << 8) | ((apic_id >> shape.thread_bits()) & 0xff);
            entry.ecx &= !0x700; // one node
        }
        _ => {}
    }
}

/// The 12-byte vendor string of CPUID leaf 0 (EBX, EDX, ECX), if the leaf is there.
pub(crate) fn vendor<'a, E>(entries: impl IntoIterator<Item = &'a E>) -> Option<String>
where
    E: 'a + CpuidRegs,
{
    let leaf0 = entries.into_iter().find(|e| e.function() == 0)?;
    let (ebx, ecx, edx) = leaf0.vendor_regs();
    let mut bytes = Vec::with_capacity(12);
    for reg in [ebx, edx, ecx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Leaf number and vendor registers of a CPUID entry, for KVM's entries and saved ones.
pub(crate) trait CpuidRegs {
    fn function(&self) -> u32;
    fn vendor_regs(&self) -> (u32, u32, u32);
}

impl CpuidRegs for kvm_cpuid_entry2 {
    fn function(&self) -> u32 {
        self.function
    }
    fn vendor_regs(&self) -> (u32, u32, u32) {
        (self.ebx, self.ecx, self.edx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0),
            kvm_cpuid_entry2 {
                edx: EDX_HTT,
                ..leaf(LEAF_FEATURES, 0)
            },
            kvm_cpuid_entry2 {
                eax: (3 << 5) | 0x3,
                ..leaf(LEAF_CACHE_PARAMS, 3)
            },
            leaf(LEAF_EXT_TOPOLOGY, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1),
            leaf(LEAF_EXT_TOPOLOGY, 2),
            kvm_cpuid_entry2 {
                eax: 0x1234,
                ..leaf(LEAF_PMU, 0)
            },
            leaf(LEAF_AMD_SIZES, 0),
            leaf(LEAF_AMD_EXT_APIC, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        for (index, count) in [(0u8, 1u8), (3, 4), (7, 8), (5, 6)] {
            let mut cpuid = sample();
            normalize(&mut cpuid, index, count);
            let f = find(&cpuid, LEAF_FEATURES, 0);
            assert_eq!(f.ebx >> 24, u32::from(index));
            assert_eq!((f.ebx >> 16) & 0xff, u32::from(count));
            assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(f.edx & EDX_HTT != 0, count > 1);
            assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 0).edx, u32::from(index));
            assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 1).ebx, u32::from(count));
            assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 1).ecx >> 8, LEVEL_CORE);
            assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 2).ecx >> 8, 0);
            assert_eq!(find(&cpuid, LEAF_AMD_EXT_APIC, 0).eax, u32::from(index));
            assert_eq!(
                find(&cpuid, LEAF_AMD_SIZES, 0).ecx & 0xff,
                u32::from(count) - 1
            );
            let cache = find(&cpuid, LEAF_CACHE_PARAMS, 3);
            assert_eq!(cache.eax >> 26, u32::from(count) - 1);
            assert_eq!(cache.eax & 0x1f, 0x3, "cache type kept");
            assert_eq!(find(&cpuid, LEAF_PMU, 0).eax, 0);
        }
    }

    #[test]
    fn core_bits_cover_every_apic_id() {
        assert_eq!(apic_id_bits(1), 0);
        assert_eq!(apic_id_bits(2), 1);
        assert_eq!(apic_id_bits(3), 2);
        assert_eq!(apic_id_bits(8), 3);
        assert_eq!(apic_id_bits(9), 4);
        assert_eq!(apic_id_bits(254), 8);
        for n in 1..=254u8 {
            assert!(u32::from(n - 1) < (1 << apic_id_bits(n)));
        }
    }

    #[test]
    fn smt_pairs_vcpus_as_the_threads_of_a_core() {
        let smt = CpuTopology {
            vcpus: 4,
            smt: true,
        };
        assert_eq!(smt.threads_per_core(), 2);
        assert_eq!(
            CpuTopology {
                vcpus: 1,
                smt: true
            }
            .threads_per_core(),
            1
        );
        for index in 0..4u8 {
            let mut cpuid = sample();
            normalize(&mut cpuid, index, smt);
            let thread = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
            assert_eq!(
                (thread.eax, thread.ebx),
                (1, 2),
                "APIC id bit 0 is the thread"
            );
            assert_eq!(thread.ecx >> 8, LEVEL_SMT);
            let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
            assert_eq!(
                (core.eax, core.ebx),
                (2, 4),
                "4 logical processors, 2 id bits"
            );
            let cache = find(&cpuid, LEAF_CACHE_PARAMS, 3);
            assert_eq!(cache.eax >> 26, 1, "two cores");
            let amd = find(&cpuid, LEAF_AMD_EXT_APIC, 0);
            assert_eq!((amd.ebx >> 8) & 0xff, 1, "two threads per compute unit");
            assert_eq!(amd.ebx & 0xff, u32::from(index / 2), "compute unit id");
        }
        // Without SMT nothing changes from a plain vCPU count.
        let (mut a, mut b) = (sample(), sample());
        normalize(&mut a, 1, 4u8);
        normalize(
            &mut b,
            1,
            CpuTopology {
                vcpus: 4,
                smt: false,
            },
        );
        assert_eq!(a.as_slice(), b.as_slice());
    }
}
