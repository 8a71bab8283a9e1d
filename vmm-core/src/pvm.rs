//! PVM hosts (/dev/kvm from the kvm_pvm module: KVM without VT-x/AMD-V) and what they mean for
//! this VMM's users. vmm-vcpu only states the fact (an emulation failure on a PVM host says so);
//! what to do about it is this project's advice, given here.

pub use vmm_vcpu::is_pvm_host;

/// What to do on a PVM host. A macro, so that both texts below share it.
macro_rules! pvm_advice {
    () => {
        "use a host with hardware virtualization (or ../shared/testhost)"
    };
}

/// What a PVM host means for the guest, said once wherever it matters (before an ordinary
/// kernel boots there).
pub const PVM_EXPLANATION: &str = concat!(
    "this host's /dev/kvm is PVM (kvm_pvm module, no VT-x/AMD-V): it runs guest kernel code \
     through KVM's instruction emulator, so an ordinary Linux kernel cannot boot here; ",
    pvm_advice!()
);

/// What [`crate::error_chain`] adds to an error whose cause is a vCPU's emulation failure on a
/// PVM host.
pub(crate) const PVM_ADVICE: &str = pvm_advice!();

/// Whether `error` is a vCPU's emulation failure on a PVM host.
pub(crate) fn is_pvm_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<vmm_vcpu::Error>(),
        Some(vmm_vcpu::Error::InternalError { pvm: true, .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulation_failure(pvm: bool) -> crate::Error {
        crate::Error::Vcpu(vmm_vcpu::Error::InternalError {
            vcpu: 0,
            suberror: 1, // KVM_INTERNAL_ERROR_EMULATION
            what: ", emulation failure",
            rip: 0xffff_ffff_8100_0000,
            pvm,
        })
    }

    #[test]
    fn the_error_line_of_a_pvm_emulation_failure_says_what_to_do() {
        let line = crate::error_chain(&emulation_failure(true));
        assert!(
            line.starts_with("vCPU: vCPU 0: KVM internal error (suberror 1, emulation failure)"),
            "{line}"
        );
        assert!(line.contains("RIP 0xffffffff81000000"), "{line}");
        assert!(line.contains("PVM"), "{line}");
        assert!(line.ends_with(&format!("; {PVM_ADVICE}")), "{line}");
        assert_eq!(line.matches(PVM_ADVICE).count(), 1, "{line}");
    }

    #[test]
    fn other_errors_get_no_advice() {
        let line = crate::error_chain(&emulation_failure(false));
        assert!(
            !line.contains("PVM") && !line.contains(PVM_ADVICE),
            "{line}"
        );
        let direct = vmm_vcpu::Error::InternalError {
            vcpu: 1,
            suberror: 1,
            what: "",
            rip: 0,
            pvm: true,
        };
        // A vCPU error given directly counts too.
        assert!(crate::error_chain(&direct).ends_with(PVM_ADVICE));
        assert!(PVM_EXPLANATION.ends_with(PVM_ADVICE));
    }
}
