//! vCPU and VM state for snapshots: plain serde structs that [`Vcpu::save_state`] and
//! [`Vm::save_state`] fill from KVM and that [`Vcpu::restore_state`] and [`Vm::restore_state`]
//! write back into a fresh VM, possibly in another process.
//!
//! A restore treats its input as untrusted: a state for another vCPU index, a CPUID of another
//! vendor, an XSAVE area larger than this host takes, an irqchip where the VM has none (or the
//! other way round) and malformed parts are refused with a typed [`Error`] before any KVM state
//! changes. A value KVM itself refuses (an MSR) fails the restore midway: discard that vCPU.
//!
//! Most parts are KVM's own structures (kvm-bindings serializes them as their raw bytes, padded
//! or truncated to the running version's size); the FPU, CPUID entries, MSRs and the XSAVE area
//! use the small wrappers below.
//!
//! Order on restore, each step for a reason the KVM API imposes:
//! 1. CPUID: KVM checks CR4 bits, XCR0/XSAVE features and MSRs against the guest's CPUID, and
//!    refuses a CPUID change once the vCPU has run.
//! 2. MP state, 3. general registers (KVM_SET_REGS drops a pending exception, so events come
//!    later), 4. special registers (EFER, CR0/3/4, APIC base: the mode the rest is read in),
//! 5. XSAVE (or the legacy FPU where KVM has no XSAVE), 6. XCRs,
//! 7. LAPIC (after the APIC base; before the MSRs, as KVM ignores a TSC deadline written while
//!    the LAPIC timer is not in TSC-deadline mode),
//! 8. MSRs, with IA32_TSC first and IA32_TSC_DEADLINE last (the deadline is a TSC value); an
//!    MSR KVM will not write is passed over only where it already holds the saved value,
//! 9. pending events (exceptions, interrupts, NMI, SIPI, SMM), 10. debug registers.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    CpuId, Msrs, Xsave, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use serde::{Deserialize, Serialize};

use crate::caps::LEGACY_XSAVE_BYTES;
use crate::cpuid::{self, CpuidRegs};
use crate::error::{kvm_err, Error, Result};
use crate::run::Vcpu;
use crate::vm::{Irqchip, Vm};

/// IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// MSRs per KVM_GET_MSRS/KVM_SET_MSRS call: KVM refuses 256 (MAX_IO_MSRS) or more with E2BIG.
const MSR_BATCH: usize = KVM_MAX_MSR_ENTRIES - 1;
/// More MSRs than any KVM reports; a state with more is refused instead of looping over it.
const MAX_SAVED_MSRS: usize = 4096;
/// One CPUID leaf as KVM_GET_CPUID2 reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    /// EAX input (leaf).
    pub function: u32,
    /// ECX input (subleaf), where `flags` says it matters.
    pub index: u32,
    /// KVM_CPUID_FLAG_* bits.
    pub flags: u32,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// One MSR and its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    /// The MSR number.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// The legacy FPU and SSE state (KVM_GET_FPU), field by field: kvm-bindings has no serde for
/// `kvm_fpu`. Restored only where KVM has no XSAVE (the XSAVE area holds the same state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers ST0-ST7, 80 bits each in 16 bytes.
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Last x87 opcode.
    pub last_opcode: u16,
    /// Last x87 instruction pointer.
    pub last_ip: u64,
    /// Last x87 data pointer.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM needs to resume one vCPU elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index (and APIC id) this state belongs to.
    pub index: u8,
    /// The vCPU's own CPUID, as set (KVM_GET_CPUID2).
    pub cpuid: Vec<CpuidEntry>,
    /// KVM_GET_MP_STATE (runnable, halted, waiting for INIT/SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state (also inside `xsave` where that is present).
    pub fpu: FpuState,
    /// The XSAVE area as 32-bit words (KVM_GET_XSAVE2, or KVM_GET_XSAVE's 4 KiB); None where
    /// KVM has no XSAVE.
    pub xsave: Option<Vec<u32>>,
    /// Extended control registers (XCR0); None where KVM has no KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    /// The in-kernel LAPIC's registers; None without the in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS could read, in KVM's order.
    pub msrs: Vec<MsrEntry>,
    /// Pending exceptions, interrupts, NMI, SIPI vector and SMM state.
    pub vcpu_events: kvm_vcpu_events,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
}

/// The in-kernel interrupt controllers (KVM_GET_IRQCHIP).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IrqchipState {
    /// The master 8259 PIC (chip 0).
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC (chip 1).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
}

/// VM-wide KVM state: interrupt controllers, PIT and kvmclock. (Not a VM's run state: that is
/// the control API's `VmState`.)
///
/// The serde name stays `VmState`, the type's name before it was renamed, so that a format
/// that writes type names reads what older versions wrote (JSON, which snapshots use, writes
/// none).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename = "VmState")]
pub struct KvmVmState {
    /// PICs and IOAPIC; None for a VM without the in-kernel irqchip.
    pub irqchip: Option<IrqchipState>,
    /// The in-kernel PIT (KVM_GET_PIT2); None for a VM without the in-kernel irqchip.
    pub pit: Option<kvm_pit_state2>,
    /// kvmclock (KVM_GET_CLOCK).
    pub clock: kvm_clock_data,
}

impl CpuidRegs for CpuidEntry {
    fn function(&self) -> u32 {
        self.function
    }
    fn vendor_regs(&self) -> (u32, u32, u32) {
        (self.ebx, self.ecx, self.edx)
    }
}

fn invalid(what: &'static str, detail: impl Into<String>) -> Error {
    Error::InvalidState {
        what,
        detail: detail.into(),
    }
}

/// MSRs in the order they go back: IA32_TSC first, IA32_TSC_DEADLINE last, the rest as saved.
fn restore_order(msrs: &[MsrEntry]) -> Vec<MsrEntry> {
    let rank = |e: &MsrEntry| match e.index {
        MSR_TSC => 0,
        MSR_TSC_DEADLINE => 2,
        _ => 1,
    };
    let mut ordered = msrs.to_vec();
    // A stable sort keeps KVM's order within each rank.
    ordered.sort_by_key(rank);
    ordered
}

impl Vcpu {
    fn vcpu_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let vcpu = self.index();
        move |source| Error::VcpuIoctl { vcpu, what, source }
    }

    /// Saves everything KVM needs to resume this vCPU elsewhere.
    ///
    /// The vCPU must not be running: call it between runs (after [`Vcpu::run`] returned, e.g.
    /// after a [`crate::VcpuKicker`] stopped it; the run loop completes a port or MMIO access
    /// before it returns, so the state is consistent). `&self` against `run`'s `&mut self`
    /// enforces this within one owner. Save the VM's state ([`Vm::save_state`]) and guest memory
    /// at the same time, with every vCPU of the VM stopped.
    pub fn save_state(&self) -> Result<VcpuState> {
        let caps = self.state_caps();
        let fd = self.fd();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(self.vcpu_err("KVM_GET_CPUID2"))?
            .as_slice()
            .iter()
            .map(CpuidEntry::from)
            .collect();
        let mp_state = fd
            .get_mp_state()
            .map_err(self.vcpu_err("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(self.vcpu_err("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(self.vcpu_err("KVM_GET_SREGS"))?;
        let fpu = FpuState::from(&fd.get_fpu().map_err(self.vcpu_err("KVM_GET_FPU"))?);
        let xsave = match caps.xsave_bytes {
            Some(bytes) => Some(self.get_xsave(bytes)?),
            None => None,
        };
        let xcrs = if caps.xcrs {
            Some(fd.get_xcrs().map_err(self.vcpu_err("KVM_GET_XCRS"))?)
        } else {
            None
        };
        let lapic = if caps.irqchip {
            Some(fd.get_lapic().map_err(self.vcpu_err("KVM_GET_LAPIC"))?)
        } else {
            None
        };
        let msr_index_list = caps.msr_index_list.as_ref().map_err(|&source| Error::Kvm {
            what: "KVM_GET_MSR_INDEX_LIST",
            source,
        })?;
        let msrs = self.readable_msrs(msr_index_list)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(self.vcpu_err("KVM_GET_VCPU_EVENTS"))?;
        let debugregs = fd
            .get_debug_regs()
            .map_err(self.vcpu_err("KVM_GET_DEBUGREGS"))?;
        Ok(VcpuState {
            index: self.index(),
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            lapic,
            msrs,
            vcpu_events,
            debugregs,
        })
    }

    fn get_xsave(&self, bytes: usize) -> Result<Vec<u32>> {
        if bytes <= LEGACY_XSAVE_BYTES {
            let xsave = self
                .fd()
                .get_xsave()
                .map_err(self.vcpu_err("KVM_GET_XSAVE"))?;
            return Ok(xsave.region.to_vec());
        }
        let extra_words = (bytes - LEGACY_XSAVE_BYTES).div_ceil(size_of::<u32>());
        let mut xsave = Xsave::new(extra_words)
            .map_err(|_| invalid("XSAVE area", format!("{bytes} bytes cannot be allocated")))?;
        // SAFETY: `xsave` holds 4096 + 4 * extra_words >= `bytes` bytes, the size KVM_CAP_XSAVE2
        // reported for this VM when it was created. That size only grows when the process asks
        // for more dynamic XSTATE features (arch_prctl), which this VMM never does.
        unsafe { self.fd().get_xsave2(&mut xsave) }.map_err(self.vcpu_err("KVM_GET_XSAVE2"))?;
        let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        Ok(words)
    }

    /// Reads `indices` with KVM_GET_MSRS, leaving out those KVM cannot read (it stops at the
    /// first one and reports how many it read).
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MSR_BATCH)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries)
                .map_err(|_| invalid("MSR list", format!("{} entries", entries.len())))?;
            let read = self
                .fd()
                .get_msrs(&mut msrs)
                .map_err(self.vcpu_err("KVM_GET_MSRS"))?
                .min(chunk.len());
            out.extend(msrs.as_slice()[..read].iter().map(|e| MsrEntry {
                index: e.index,
                data: e.data,
            }));
            // Skip the MSR KVM stopped at, if any.
            let consumed = if read < chunk.len() {
                log::debug!(
                    "vCPU {}: KVM cannot read MSR {:#x}; it is left out of the state",
                    self.index(),
                    chunk[read]
                );
                read + 1
            } else {
                read
            };
            rest = &rest[consumed..];
        }
        Ok(out)
    }

    /// Checks `state` against this vCPU and host without touching KVM.
    fn check_state(&self, state: &VcpuState) -> Result<()> {
        let vcpu = self.index();
        let caps = self.state_caps();
        if state.index != vcpu {
            return Err(Error::VcpuIndexMismatch {
                vcpu,
                state: state.index,
            });
        }
        if state.cpuid.is_empty() || state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(invalid(
                "CPUID",
                format!(
                    "{} entries (1 to {KVM_MAX_CPUID_ENTRIES} expected)",
                    state.cpuid.len()
                ),
            ));
        }
        let vendor = cpuid::vendor(&state.cpuid)
            .ok_or_else(|| invalid("CPUID", "no leaf 0 (the vendor) among the entries"))?;
        if vendor != caps.host_vendor {
            return Err(Error::CpuidVendorMismatch {
                vcpu,
                state: vendor,
                host: caps.host_vendor.clone(),
            });
        }
        match (&state.xsave, caps.xsave_bytes) {
            (Some(words), Some(host)) => {
                let bytes = words.len() * size_of::<u32>();
                if bytes < LEGACY_XSAVE_BYTES || bytes > host.max(LEGACY_XSAVE_BYTES) {
                    return Err(Error::XsaveSize {
                        vcpu,
                        state_bytes: bytes,
                        host_bytes: host,
                    });
                }
            }
            (Some(words), None) => {
                return Err(Error::XsaveSize {
                    vcpu,
                    state_bytes: words.len() * size_of::<u32>(),
                    host_bytes: 0,
                })
            }
            (None, _) => {}
        }
        if state.xcrs.is_some() && !caps.xcrs {
            return Err(invalid(
                "XCRs",
                "saved, but this host's KVM has no KVM_CAP_XCRS",
            ));
        }
        if state.lapic.is_some() != caps.irqchip {
            return Err(Error::IrqchipMismatch {
                state: state.lapic.is_some(),
                vm: caps.irqchip,
            });
        }
        if state.msrs.len() > MAX_SAVED_MSRS {
            return Err(invalid(
                "MSRs",
                format!("{} entries (at most {MAX_SAVED_MSRS})", state.msrs.len()),
            ));
        }
        Ok(())
    }

    /// Restores a state saved by [`Vcpu::save_state`] into this vCPU, which must be freshly
    /// created by [`Vm::create_vcpu`] with the same index, not configured and never run (KVM
    /// refuses a CPUID change after the first KVM_RUN), in a VM whose memory and VM state
    /// ([`Vm::restore_state`]) are restored too.
    ///
    /// `state` is untrusted: it is checked first (vCPU index, CPUID vendor against this host's,
    /// XSAVE size, LAPIC presence against the VM's irqchip, entry counts), and nothing is written
    /// to KVM unless every check passes. The order of the writes is the one the module
    /// documentation explains.
    pub fn restore_state(&self, state: &VcpuState) -> Result<()> {
        self.check_state(state)?;
        let fd = self.fd();

        let entries: Vec<kvm_cpuid_entry2> = state.cpuid.iter().map(Into::into).collect();
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|_| invalid("CPUID", format!("{} entries", entries.len())))?;
        fd.set_cpuid2(&cpuid)
            .map_err(self.vcpu_err("KVM_SET_CPUID2"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(self.vcpu_err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs)
            .map_err(self.vcpu_err("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs)
            .map_err(self.vcpu_err("KVM_SET_SREGS"))?;
        match &state.xsave {
            Some(words) => self.set_xsave(words)?,
            None => fd
                .set_fpu(&kvm_fpu::from(&state.fpu))
                .map_err(self.vcpu_err("KVM_SET_FPU"))?,
        }
        if let Some(xcrs) = &state.xcrs {
            fd.set_xcrs(xcrs).map_err(self.vcpu_err("KVM_SET_XCRS"))?;
        }
        if let Some(lapic) = &state.lapic {
            fd.set_lapic(lapic)
                .map_err(self.vcpu_err("KVM_SET_LAPIC"))?;
        }
        self.set_msrs(&restore_order(&state.msrs))?;
        // The vCPU is stopped: take NMI pending and the SIPI vector from the state as well.
        let mut events = state.vcpu_events;
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        fd.set_vcpu_events(&events)
            .map_err(self.vcpu_err("KVM_SET_VCPU_EVENTS"))?;
        // KVM_SET_DEBUGREGS wants `flags` cleared.
        let debugregs = kvm_debugregs {
            flags: 0,
            ..state.debugregs
        };
        fd.set_debug_regs(&debugregs)
            .map_err(self.vcpu_err("KVM_SET_DEBUGREGS"))?;
        Ok(())
    }

    /// Writes `msrs` in order. KVM stops at the first MSR it refuses; one whose fresh value
    /// already equals the saved one is passed over (KVM reads some MSRs it will not write in
    /// every configuration, e.g. MSR_KVM_ASYNC_PF_INT without the in-kernel LAPIC, and
    /// writing back the value they have changes nothing). Any other refusal is an error.
    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()> {
        let mut rest = msrs;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MSR_BATCH)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|e| kvm_msr_entry {
                    index: e.index,
                    data: e.data,
                    ..Default::default()
                })
                .collect();
            let kvm_msrs = Msrs::from_entries(&entries)
                .map_err(|_| invalid("MSRs", format!("{} entries", entries.len())))?;
            let written = self
                .fd()
                .set_msrs(&kvm_msrs)
                .map_err(self.vcpu_err("KVM_SET_MSRS"))?
                .min(chunk.len());
            if let Some(refused) = chunk.get(written) {
                let current = self.readable_msrs(&[refused.index])?;
                if current.first().map(|e| e.data) != Some(refused.data) {
                    return Err(Error::MsrRestoreRefused {
                        vcpu: self.index(),
                        index: refused.index,
                        data: refused.data,
                    });
                }
                log::debug!(
                    "vCPU {}: KVM does not write MSR {:#x}, which already holds the saved value",
                    self.index(),
                    refused.index
                );
                rest = &rest[written + 1..];
            } else {
                rest = &rest[written..];
            }
        }
        Ok(())
    }

    fn set_xsave(&self, words: &[u32]) -> Result<()> {
        let host = self.state_caps().xsave_bytes.unwrap_or(LEGACY_XSAVE_BYTES);
        let region_words = LEGACY_XSAVE_BYTES / size_of::<u32>();
        // check_state made sure region_words <= words.len() <= host bytes / 4.
        let extra_words =
            (host.max(LEGACY_XSAVE_BYTES) - LEGACY_XSAVE_BYTES).div_ceil(size_of::<u32>());
        let mut xsave = Xsave::new(extra_words)
            .map_err(|_| invalid("XSAVE area", format!("{host} bytes cannot be allocated")))?;
        let (region, extra) = words.split_at(region_words.min(words.len()));
        // SAFETY: only the fixed 4 KiB region is written; the length field that the wrapper's
        // invariant depends on stays as Xsave::new set it.
        unsafe { xsave.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(region);
        // A shorter saved area (from a host with fewer XSTATE features) leaves the rest zero:
        // the XSAVE header's bitmaps say which components the area holds.
        xsave.as_mut_slice()[..extra.len()].copy_from_slice(extra);
        // SAFETY: `xsave` holds 4096 + 4 * extra_words bytes, at least the size KVM_CAP_XSAVE2
        // reported for this VM (4096 without it), which is what KVM_SET_XSAVE reads; the process
        // never asks for more dynamic XSTATE features, which could grow that size.
        unsafe { self.fd().set_xsave2(&xsave) }.map_err(self.vcpu_err("KVM_SET_XSAVE"))
    }
}

impl Vm {
    /// Saves the VM-wide KVM state: the PICs and the IOAPIC, the PIT (only with
    /// [`Irqchip::Kernel`]: a split irqchip's IOAPIC is the VMM's to save) and kvmclock.
    /// Creates the irqchip first if the VM has that option and it does not exist yet (as
    /// creating a vCPU does). Stop every vCPU first.
    pub fn save_state(&self) -> Result<KvmVmState> {
        let fd = self.fd();
        let (irqchip, pit) = if self.irqchip() == Irqchip::Kernel {
            self.create_irqchip()?;
            let chip = |chip_id: u32| -> Result<kvm_irqchip> {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                fd.get_irqchip(&mut chip)
                    .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
                Ok(chip)
            };
            let irqchip = IrqchipState {
                pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
                pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
                ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            };
            let pit = fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
            (Some(irqchip), Some(pit))
        } else {
            (None, None)
        };
        let clock = fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
        Ok(KvmVmState {
            irqchip,
            pit,
            clock,
        })
    }

    /// Restores a state saved by [`Vm::save_state`] into this VM, creating its irqchip and PIT
    /// first if needed. Restore the vCPUs ([`Vcpu::restore_state`]) after it.
    ///
    /// `state` is untrusted: an irqchip or PIT where this VM has none (or none where it has
    /// one) and chips under the wrong id are refused before anything is written.
    ///
    /// kvmclock goes back to exactly the saved value: of the saved flags, KVM_CLOCK_TSC_STABLE
    /// and KVM_CLOCK_HOST_TSC only describe the saved reading (KVM ignores them on
    /// KVM_SET_CLOCK, and kernels before 5.16 refuse any flag), and KVM_CLOCK_REALTIME would
    /// add the real time passed since the save. It is left out so that the guest's clock, like
    /// its TSC (restored from the IA32_TSC MSR), resumes where it stopped.
    pub fn restore_state(&self, state: &KvmVmState) -> Result<()> {
        let vm = self.irqchip() == Irqchip::Kernel;
        if state.irqchip.is_some() != vm || state.pit.is_some() != vm {
            return Err(Error::IrqchipMismatch {
                state: state.irqchip.is_some() || state.pit.is_some(),
                vm,
            });
        }
        if let Some(chips) = &state.irqchip {
            for (chip, expected) in [
                (&chips.pic_master, KVM_IRQCHIP_PIC_MASTER),
                (&chips.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
                (&chips.ioapic, KVM_IRQCHIP_IOAPIC),
            ] {
                if chip.chip_id != expected {
                    return Err(invalid(
                        "irqchip",
                        format!("chip id {} where {expected} belongs", chip.chip_id),
                    ));
                }
            }
        }
        let fd = self.fd();
        if let (Some(chips), Some(pit)) = (&state.irqchip, &state.pit) {
            self.create_irqchip()?;
            for chip in [&chips.pic_master, &chips.pic_slave, &chips.ioapic] {
                fd.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
            }
            fd.set_pit2(pit).map_err(kvm_err("KVM_SET_PIT2"))?;
        }
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tier 2 (needs /dev/kvm): KVM_GET_MSRS stops at an MSR it cannot read; the save skips
    /// it and goes on, also across batches.
    #[test]
    fn unreadable_msrs_are_left_out() {
        let ignored = std::fs::read_to_string("/sys/module/kvm/parameters/ignore_msrs")
            .is_ok_and(|v| v.trim() == "Y");
        if ignored {
            // kvm.ignore_msrs=1 reads unknown MSRs as 0: nothing to skip.
            return;
        }
        let vm = Vm::new(crate::VmOptions::new(crate::boot::test_layout())).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut indices = vec![MSR_TSC];
        indices.extend((0..300).map(|i| 0xdead_0000 + i));
        indices.push(0x174); // IA32_SYSENTER_CS
        let read: Vec<u32> = vcpu
            .readable_msrs(&indices)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(read, [MSR_TSC, 0x174]);
    }

    #[test]
    fn msrs_go_back_tsc_first_and_deadline_last() {
        let msr = |index| MsrEntry { index, data: 1 };
        let saved = [
            msr(0x174),
            msr(MSR_TSC_DEADLINE),
            msr(0xc000_0080),
            msr(MSR_TSC),
        ];
        let order: Vec<u32> = restore_order(&saved).iter().map(|e| e.index).collect();
        assert_eq!(order, [MSR_TSC, 0x174, 0xc000_0080, MSR_TSC_DEADLINE]);
    }

    #[test]
    fn vendor_from_leaf_0() {
        let leaf0 = CpuidEntry {
            function: 0,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
            ..Default::default()
        };
        let other = CpuidEntry {
            function: 1,
            ..Default::default()
        };
        assert_eq!(
            cpuid::vendor(&[other, leaf0]).as_deref(),
            Some("GenuineIntel")
        );
        assert_eq!(cpuid::vendor(&[other]), None);
    }

    #[test]
    fn fpu_and_cpuid_wrappers_round_trip() {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 7,
            xmm: [[3; 16]; 16],
            ..Default::default()
        };
        assert_eq!(kvm_fpu::from(&FpuState::from(&fpu)), fpu);
        let entry = kvm_cpuid_entry2 {
            function: 7,
            index: 1,
            flags: 1,
            eax: 2,
            ebx: 3,
            ecx: 4,
            edx: 5,
            ..Default::default()
        };
        assert_eq!(kvm_cpuid_entry2::from(&CpuidEntry::from(&entry)), entry);
    }
}
