//! The built-in syscall lists, one per thread kind, found by running every feature under
//! `strace -f` (the tier-2 and tier-3 suites) and checked by running them with the filters on.
//! Anything not listed traps (see `mod.rs`). Syscalls a thread makes before its filter is
//! applied (thread start: names, signal stacks, rseq, guard pages) are not listed.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use super::ThreadKind;

/// A filter under construction: syscall number to the rules that allow it (none: always).
#[derive(Default)]
struct Rules {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    /// The first error, reported when the filter is built.
    error: Option<seccompiler::Error>,
}

impl Rules {
    /// Allows `syscalls` whatever their arguments.
    fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
        for &nr in syscalls {
            self.rules.insert(nr, Vec::new());
        }
        self
    }

    /// Allows `syscall` when argument `arg` (its low 32 bits) is one of `values`.
    fn allow_arg(&mut self, syscall: libc::c_long, arg: u8, values: &[u64]) -> &mut Self {
        for &value in values {
            let rule = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                .and_then(|c| SeccompRule::new(vec![c]));
            match rule {
                Ok(rule) => self.rules.entry(syscall).or_default().push(rule),
                Err(e) => {
                    self.error.get_or_insert(seccompiler::Error::Backend(e));
                }
            }
        }
        self
    }

    fn build(self, arch: TargetArch) -> seccompiler::Result<SeccompFilter> {
        if let Some(e) = self.error {
            return Err(e);
        }
        SeccompFilter::new(self.rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .map_err(seccompiler::Error::Backend)
    }
}

/// What every thread does: the allocator, locks, logging to stderr or the log file, thread
/// exit, and the signal handlers that may run on any thread.
fn common(r: &mut Rules) {
    r.allow(&[
        libc::SYS_futex,
        // Log lines and eventfd writes.
        libc::SYS_write,
        libc::SYS_close,
        // malloc's main arena grows with brk; large blocks and thread arenas are munmapped.
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        // Returning from the termination and kick signal handlers.
        libc::SYS_rt_sigreturn,
        // Thread exit: std removes the signal stack, glibc blocks signals and frees the stack.
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigprocmask,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Used by the vDSO's fallback when the clock source has no vDSO path.
        libc::SYS_clock_gettime,
        libc::SYS_sched_yield,
        libc::SYS_gettid,
        // HashMap's RandomState keys, seeded once per thread.
        libc::SYS_getrandom,
    ]);
    // Anonymous private memory only (malloc, thread arenas): no file or shared mappings.
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    r.allow_arg(
        libc::SYS_mmap,
        3,
        &[
            anon,
            anon | libc::MAP_NORESERVE as u64,
            anon | libc::MAP_STACK as u64,
        ],
    );
    // malloc grows a thread arena read-write; never executable.
    r.allow_arg(
        libc::SYS_mprotect,
        2,
        &[
            libc::PROT_NONE as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
        ],
    );
    // free() and thread exit give pages back.
    r.allow_arg(libc::SYS_madvise, 2, &[libc::MADV_DONTNEED as u64]);
    // Debug builds of std check that a descriptor is open before closing it.
    r.allow_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
}

/// Builds `kind`'s filter for `arch`.
pub(super) fn filter(kind: ThreadKind, arch: TargetArch) -> seccompiler::Result<SeccompFilter> {
    let mut r = Rules::default();
    common(&mut r);
    match kind {
        ThreadKind::Vcpu => vcpu(&mut r),
        ThreadKind::Api => api(&mut r),
        ThreadKind::Events => events(&mut r),
        ThreadKind::Signals => signals(&mut r),
        ThreadKind::Metrics => metrics(&mut r),
        ThreadKind::Vmm => vmm(&mut r),
    }
    r.build(arch)
}

/// A vCPU thread: KVM_RUN and the state reads of a snapshot on its own vCPU fd, device
/// emulation on its exits (eventfd writes, serial output).
fn vcpu(r: &mut Rules) {
    r.allow_arg(libc::SYS_ioctl, 1, &kvm::VCPU_THREAD);
    // The serial console's output, an i8042 reset, a device's interrupt eventfd.
    r.allow(&[libc::SYS_writev, libc::SYS_read]);
    // A device the guest activates or resets (a status write, on a vCPU) arms its timers
    // (vsock's connection deadlines, balloon statistics) and registers or drops descriptors
    // (vsock's muxer epoll, its streams).
    r.allow(&[
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_epoll_ctl,
        libc::SYS_shutdown,
    ]);
    // A virtio device activated by the guest (DRIVER_OK written from a vCPU) sets up its tap.
    r.allow_arg(
        libc::SYS_ioctl,
        1,
        &[tun::TUNSETOFFLOAD, tun::TUNSETVNETHDRSZ],
    );
    // The kick signal's handler (SIGRTMIN, vmm-vcpu's kick_signal) is registered by the
    // first vCPU to run.
    r.allow_arg(
        libc::SYS_rt_sigaction,
        0,
        &[vmm_sys_util::signal::SIGRTMIN() as u64],
    );
}

/// The API thread: the listening socket and its connections, nothing else.
fn api(r: &mut Rules) {
    r.allow(&[
        libc::SYS_poll,
        libc::SYS_accept4,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
    ]);
    // set_nonblocking on each accepted connection.
    r.allow_arg(libc::SYS_ioctl, 1, &[libc::FIONBIO]);
    // Each client's uid (SO_PEERCRED), checked before it is served.
    r.allow_arg(libc::SYS_getsockopt, 2, &[libc::SO_PEERCRED as u64]);
}

/// The event loop: device queues, block files, taps, vsock's Unix sockets, timers.
fn events(r: &mut Rules) {
    r.allow(&[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        // Queue notifications, irqfds, taps, vsock streams, stdin.
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        // virtio-blk on a raw file.
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_lseek,
        // Rate limiters' and the balloon's statistics timers.
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        // vsock: streams to host applications over Unix sockets.
        libc::SYS_connect,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        // A new connection's subscriber registered from another thread wakes the loop.
        libc::SYS_eventfd2,
        libc::SYS_poll,
    ]);
    // The guest's discards: a raw image punches a hole; qcow2 (imago) punches or zeroes ranges,
    // and may allocate when a write grows its file.
    r.allow_arg(
        libc::SYS_fallocate,
        1,
        &[
            0,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
            libc::FALLOC_FL_ZERO_RANGE as u64,
            (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u64,
        ],
    );
    // vsock's guest-initiated connections: Unix sockets only.
    r.allow_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    // Nonblocking vsock streams, tap offloads once the guest set the features.
    r.allow_arg(
        libc::SYS_ioctl,
        1,
        &[libc::FIONBIO, tun::TUNSETOFFLOAD, tun::TUNSETVNETHDRSZ],
    );
    r.allow_arg(
        libc::SYS_fcntl,
        1,
        &[libc::F_GETFL as u64, libc::F_SETFL as u64],
    );
}

/// The signal forwarder: waits on its eventfds and sends to a channel.
fn signals(r: &mut Rules) {
    r.allow(&[libc::SYS_poll, libc::SYS_read]);
}

/// The metrics writer: waits on its timerfd and appends a line to the metrics file.
fn metrics(r: &mut Rules) {
    r.allow(&[libc::SYS_poll, libc::SYS_read, libc::SYS_lseek]);
}

/// The main thread once the VM runs: API requests (pause and resume kick vCPUs; snapshots
/// create and write files; drive updates open files; balloon, rate limiters), then shutdown
/// (joining threads, removing the API socket, restoring the terminal).
fn vmm(r: &mut Rules) {
    r.allow(&[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_lseek,
        // Snapshot files: created, sized, written, synced, renamed into place; drive files
        // opened for PATCH /drives, checked with stat.
        libc::SYS_openat,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_statx,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        // Eventfds and timers of devices and vCPUs handed over at a pause.
        libc::SYS_eventfd2,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_poll,
        libc::SYS_epoll_ctl,
        // Kicking vCPU threads out of KVM_RUN (pause, shutdown).
        libc::SYS_tgkill,
        libc::SYS_getpid,
        // Waiting for threads (joins), pause timeouts.
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_sched_getaffinity,
        // Closing client connections on the way out.
        libc::SYS_shutdown,
        libc::SYS_dup,
    ]);
    // Memory files of snapshots may be mapped shared; still never executable.
    let file = [
        libc::MAP_SHARED as u64,
        libc::MAP_PRIVATE as u64,
        (libc::MAP_PRIVATE | libc::MAP_NORESERVE) as u64,
        (libc::MAP_SHARED | libc::MAP_NORESERVE) as u64,
    ];
    r.allow_arg(libc::SYS_mmap, 3, &file);
    r.allow_arg(
        libc::SYS_madvise,
        2,
        &[
            libc::MADV_DONTNEED as u64,
            libc::MADV_HUGEPAGE as u64,
            libc::MADV_MERGEABLE as u64,
        ],
    );
    r.allow_arg(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_DUPFD_CLOEXEC as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_SETFD as u64,
        ],
    );
    let mut ioctls = kvm::VM_CONTROL.to_vec();
    ioctls.extend_from_slice(&kvm::VCPU_THREAD);
    // Restoring the terminal's mode at exit; nonblocking sockets and taps.
    ioctls.extend_from_slice(&[
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::FIONBIO,
        tun::TUNSETOFFLOAD,
        tun::TUNSETVNETHDRSZ,
    ]);
    r.allow_arg(libc::SYS_ioctl, 1, &ioctls);
}

/// The tap ioctls devices make after start.
mod tun {
    pub const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
    pub const TUNSETVNETHDRSZ: u64 = libc::TUNSETVNETHDRSZ;
}

/// KVM's ioctl request numbers (linux/kvm.h), computed as the kernel's _IO macros do.
mod kvm {
    use kvm_bindings::*;
    use std::mem::size_of;

    const KVMIO: u64 = 0xAE;
    const NONE: u64 = 0;
    const WRITE: u64 = 1;
    const READ: u64 = 2;

    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }

    /// What a vCPU thread does on its own vCPU: run it, read its state for a snapshot.
    pub const VCPU_THREAD: [u64; 17] = [
        ioc(NONE, 0x80, 0),                               // KVM_RUN
        ioc(READ, 0x81, size_of::<kvm_regs>()),           // KVM_GET_REGS
        ioc(READ, 0x83, size_of::<kvm_sregs>()),          // KVM_GET_SREGS
        ioc(READ | WRITE, 0x88, size_of::<kvm_msrs>()),   // KVM_GET_MSRS
        ioc(READ, 0x8c, size_of::<kvm_fpu>()),            // KVM_GET_FPU
        ioc(READ, 0x8e, size_of::<kvm_lapic_state>()),    // KVM_GET_LAPIC
        ioc(READ | WRITE, 0x91, size_of::<kvm_cpuid2>()), // KVM_GET_CPUID2
        ioc(READ, 0x98, size_of::<kvm_mp_state>()),       // KVM_GET_MP_STATE
        ioc(READ, 0x9f, size_of::<kvm_vcpu_events>()),    // KVM_GET_VCPU_EVENTS
        ioc(READ, 0xa1, size_of::<kvm_debugregs>()),      // KVM_GET_DEBUGREGS
        ioc(READ, 0xa4, size_of::<kvm_xsave>()),          // KVM_GET_XSAVE
        ioc(READ, 0xcf, size_of::<kvm_xsave>()),          // KVM_GET_XSAVE2
        ioc(READ, 0xa6, size_of::<kvm_xcrs>()),           // KVM_GET_XCRS
        ioc(NONE, 0xa3, 0),                               // KVM_GET_TSC_KHZ
        ioc(NONE, 0xad, 0),                               // KVM_KVMCLOCK_CTRL
        // The split irqchip's IOAPIC, programmed by the guest through MMIO exits.
        ioc(WRITE, 0x6a, size_of::<kvm_irq_routing>()), // KVM_SET_GSI_ROUTING
        ioc(WRITE, 0xa5, size_of::<kvm_msi>()),         // KVM_SIGNAL_MSI
    ];

    /// What the main thread does on the VM once it runs: a snapshot's VM-wide state and dirty
    /// log, the vCPUs' state read back at shutdown (their last RIP).
    pub const VM_CONTROL: [u64; 9] = [
        ioc(READ, 0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
        ioc(READ | WRITE, 0x62, size_of::<kvm_irqchip>()), // KVM_GET_IRQCHIP
        ioc(READ, 0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
        ioc(WRITE, 0x42, size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        ioc(WRITE, 0x46, size_of::<kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
        ioc(WRITE, 0x76, size_of::<kvm_irqfd>()),     // KVM_IRQFD
        ioc(WRITE, 0x79, size_of::<kvm_ioeventfd>()), // KVM_IOEVENTFD
        ioc(NONE, 0x03, 0),                           // KVM_CHECK_EXTENSION
        // The VM's coalesced MMIO zones go before its fd closes (much cheaper then).
        ioc(WRITE, 0x68, size_of::<kvm_coalesced_mmio_zone>()), // KVM_UNREGISTER_COALESCED_MMIO
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_request_numbers_match_the_kernel_headers() {
        assert_eq!(kvm::VCPU_THREAD[0], 0xae80); // KVM_RUN
        assert_eq!(kvm::VCPU_THREAD[1], 0x8090_ae81); // KVM_GET_REGS
        assert_eq!(kvm::VM_CONTROL[7], 0xae03); // KVM_CHECK_EXTENSION
        assert_eq!(kvm::VM_CONTROL[3], 0x4010_ae42); // KVM_GET_DIRTY_LOG
        assert_eq!(kvm::VM_CONTROL[8], 0x4010_ae68); // KVM_UNREGISTER_COALESCED_MMIO
        assert_eq!(kvm::VCPU_THREAD[15], 0x4008_ae6a); // KVM_SET_GSI_ROUTING
        assert_eq!(kvm::VCPU_THREAD[16], 0x4020_aea5); // KVM_SIGNAL_MSI
    }

    #[test]
    fn every_kind_builds() {
        for kind in ThreadKind::ALL {
            filter(kind, TargetArch::x86_64).unwrap();
        }
    }
}
