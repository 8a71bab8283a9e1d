//! What the host's KVM offers for vCPU state save and restore, found once per VM when it is
//! created and shared by its vCPUs.

use std::mem::size_of;

use kvm_bindings::{kvm_xsave, CpuId};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::cpuid;

/// The legacy `struct kvm_xsave` is 4 KiB; KVM_GET_XSAVE2 may return more.
pub(crate) const LEGACY_XSAVE_BYTES: usize = size_of::<kvm_xsave>();

/// What the host's KVM offers for vCPU state, found once per VM and shared by its vCPUs.
#[derive(Debug)]
pub(crate) struct StateCaps {
    /// KVM_GET_MSR_INDEX_LIST, or why it failed (reported by a save, not by VM creation).
    pub(crate) msr_index_list: std::result::Result<Vec<u32>, kvm_ioctls::Error>,
    /// Bytes of the XSAVE area (KVM_CAP_XSAVE2, or 4096 with only KVM_CAP_XSAVE); None without
    /// XSAVE support.
    pub(crate) xsave_bytes: Option<usize>,
    /// KVM_CAP_XCRS.
    pub(crate) xcrs: bool,
    /// The in-kernel irqchip (and so the LAPIC) exists.
    pub(crate) irqchip: bool,
    /// The host's CPUID vendor (leaf 0), from KVM_GET_SUPPORTED_CPUID.
    pub(crate) host_vendor: String,
}

impl StateCaps {
    pub(crate) fn new(kvm: &Kvm, vm: &VmFd, supported: &CpuId, irqchip: bool) -> Self {
        let msr_index_list = kvm
            .get_msr_index_list()
            .map(|list| list.as_slice().to_vec());
        let xsave_bytes = if vm.check_extension(Cap::Xsave) {
            let size = usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
            Some(size.max(LEGACY_XSAVE_BYTES))
        } else {
            None
        };
        StateCaps {
            msr_index_list,
            xsave_bytes,
            xcrs: vm.check_extension(Cap::Xcrs),
            irqchip,
            host_vendor: cpuid::vendor(supported.as_slice()).unwrap_or_default(),
        }
    }
}
