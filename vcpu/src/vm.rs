//! The KVM VM: /dev/kvm, the VM fd, irqchip, PIT, memory slots, irqfd and ioeventfd. (vCPUs
//! come from [`Vm::create_vcpu`] in [`crate::run`], the VM's state from [`crate::state`].)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::GuestLayout;
use crate::caps::StateCaps;
use crate::error::{kvm_err, Error, Result};

/// True when /dev/kvm comes from the kvm_pvm module: KVM without VT-x/AMD-V, which runs guest
/// supervisor code through its instruction emulator and so cannot run an unmodified kernel.
/// Looked up once per process and kept (a confined thread may not be able to look).
///
/// It asks /sys. In a jail without /sys (the jailer's chroot) it cannot tell and says false:
/// only the explanation of a PVM emulation failure is lost (the failure itself is still
/// reported), nothing that a VM needs.
pub fn is_pvm_host() -> bool {
    static PVM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PVM.get_or_init(|| Path::new("/sys/module/kvm_pvm").exists())
}

/// VM creation options.
#[derive(Clone, Copy, Debug)]
pub struct VmOptions {
    /// Create the in-kernel irqchip (IOAPIC, PIC, LAPICs) and PIT. Off only for tests that want
    /// HLT to exit to user space.
    pub irqchip: bool,
    /// Where the VM's TSS and the boot vCPU's structures go in guest physical memory.
    pub layout: GuestLayout,
}

impl VmOptions {
    /// Options for a VM with the in-kernel irqchip and the given layout.
    pub fn new(layout: GuestLayout) -> Self {
        VmOptions {
            irqchip: true,
            layout,
        }
    }
}

/// A KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    supported_cpuid: CpuId,
    irqchip: bool,
    irqchip_created: Mutex<bool>,
    state_caps: Arc<StateCaps>,
    dirty_log: AtomicBool,
    layout: GuestLayout,
}

/// KVM's dirty log of one memory slot (one guest memory region): one bit per 4 KiB page that
/// the guest wrote since the previous read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// The KVM memory slot: the region's position in the guest memory.
    pub slot: u32,
    /// Guest physical address of the slot's first byte.
    pub guest_addr: u64,
    /// The slot's size in bytes.
    pub size: u64,
    /// Bit `i % 64` of word `i / 64` is set when page `i` of the slot is dirty.
    pub bits: Vec<u64>,
}

impl DirtyBitmap {
    /// Bytes per bit.
    pub const PAGE_SIZE: u64 = 4096;

    /// Whether page `page` (counted from the slot's start) is dirty.
    pub fn is_dirty(&self, page: u64) -> bool {
        let Ok(word) = usize::try_from(page / 64) else {
            return false;
        };
        self.bits
            .get(word)
            .is_some_and(|bits| bits & (1 << (page % 64)) != 0)
    }

    /// How many pages are dirty.
    pub fn dirty_count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Guest physical addresses of the dirty pages, in ascending order.
    pub fn dirty_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(move |(word, &bits)| {
            (0..64u64)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| self.guest_addr + (word as u64 * 64 + bit) * Self::PAGE_SIZE)
        })
    }
}

impl Vm {
    /// Opens /dev/kvm and creates a VM; the irqchip and PIT follow in [`Vm::create_irqchip`].
    /// The layout of `options` is checked first ([`GuestLayout::validate`]).
    pub fn new(options: VmOptions) -> Result<Vm> {
        options.layout.validate()?;
        let kvm = open_kvm()?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        let mut required = vec![
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ];
        if options.irqchip {
            required.extend([
                (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
                (Cap::Pit2, "KVM_CAP_PIT2"),
                (Cap::Irqfd, "KVM_CAP_IRQFD"),
                (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            ]);
        }
        for (cap, name) in required {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // x86-64: usize and u64 have the same width.
        fd.set_tss_address(options.layout.tss as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let state_caps = StateCaps::new(&kvm, &fd, &supported_cpuid, options.irqchip);
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            supported_cpuid,
            irqchip: options.irqchip,
            irqchip_created: Mutex::new(false),
            state_caps: Arc::new(state_caps),
            dirty_log: AtomicBool::new(false),
            layout: options.layout,
        })
    }

    /// Creates the in-kernel irqchip (IOAPIC, PIC, LAPICs) and PIT, once; a no-op without the
    /// irqchip option. Call it after [`Vm::register_memory`]: once an irqchip exists, KVM makes
    /// every memory slot update wait for a grace period (measured on a PVM host: 7-10 ms for
    /// the first slot instead of 0.4 ms). vCPU creation and irqfds create it if still missing.
    pub fn create_irqchip(&self) -> Result<()> {
        let mut created = self
            .irqchip_created
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !self.irqchip || *created {
            return Ok(());
        }
        self.fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // The dummy speaker port keeps port 0x61 in the kernel, as guests poke it while
        // calibrating timers.
        let pit = kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        *created = true;
        Ok(())
    }

    /// The most vCPUs this VM can have: KVM's maximum (not its recommendation, which is the
    /// host's CPU count: overcommitting vCPUs is the user's call), and below 255 APIC ids so the
    /// IOAPIC id and the broadcast id stay free.
    pub fn max_vcpus(&self) -> u64 {
        (self.kvm.get_max_vcpus().max(1) as u64).min(254)
    }

    /// Checks a vCPU count against [`Vm::max_vcpus`].
    pub fn check_vcpu_count(&self, count: u64) -> Result<()> {
        let max = self.max_vcpus();
        if count == 0 || count > max {
            return Err(Error::VcpuCount {
                requested: count,
                max,
            });
        }
        Ok(())
    }

    /// The CPUID KVM supports on this host, before per-vCPU normalization.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Whether the in-kernel irqchip exists.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// The guest layout the VM was created with.
    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// What the host's KVM offers for state save/restore, for the VM's vCPUs.
    pub(crate) fn state_caps(&self) -> &Arc<StateCaps> {
        &self.state_caps
    }

    /// Registers every guest memory region as a KVM memory slot (slot `i` for region `i`).
    ///
    /// # Safety
    ///
    /// KVM reads and writes the regions' host memory behind Rust's back, whenever a vCPU of this
    /// VM runs (and where a vCPU ioctl reads guest memory). The caller must make sure that
    /// every region of `mem`:
    /// - is one contiguous host mapping of `region.len()` bytes starting at the host address
    ///   `mem` gives for the region's first byte (true of vm-memory's `GuestRegionMmap`);
    /// - is memory that may change under the process at any time, never accessed through Rust
    ///   references (vm-memory's regions are accessed through volatile slices);
    /// - stays mapped there, with nothing else mapped in its place, for as long as a vCPU of
    ///   this VM may run: until every vCPU is dropped or has run for the last time, or until
    ///   the slots are registered again with other memory.
    pub unsafe fn register_memory<M: GuestMemoryBackend + ?Sized>(&self, mem: &M) -> Result<()> {
        let flags = if self.dirty_log.load(Ordering::SeqCst) {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        // SAFETY: the caller upholds this function's contract, which is set_memory_slots'.
        unsafe { self.set_memory_slots(mem, flags) }
    }

    /// Starts KVM's dirty log on every slot of `mem` (the memory given to
    /// [`Vm::register_memory`]): re-registers the slots with KVM_MEM_LOG_DIRTY_PAGES. From then
    /// on KVM notes each 4 KiB page the guest writes (vCPU stores and in-kernel devices; not
    /// writes by the VMM itself through its own mapping); [`Vm::dirty_pages`] reads the log.
    ///
    /// # Safety
    ///
    /// The slots are registered again with the host addresses of `mem`: the caller must uphold
    /// the contract of [`Vm::register_memory`] for `mem` (normally by passing the memory
    /// registered there, which it keeps mapped anyway).
    pub unsafe fn enable_dirty_log<M: GuestMemoryBackend + ?Sized>(&self, mem: &M) -> Result<()> {
        // SAFETY: the caller upholds register_memory's contract for `mem`.
        unsafe { self.set_memory_slots(mem, KVM_MEM_LOG_DIRTY_PAGES) }?;
        self.dirty_log.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the dirty log: re-registers the slots of `mem` without KVM_MEM_LOG_DIRTY_PAGES.
    ///
    /// # Safety
    ///
    /// As for [`Vm::enable_dirty_log`]: the caller must uphold the contract of
    /// [`Vm::register_memory`] for `mem`.
    pub unsafe fn disable_dirty_log<M: GuestMemoryBackend + ?Sized>(&self, mem: &M) -> Result<()> {
        // SAFETY: the caller upholds register_memory's contract for `mem`.
        unsafe { self.set_memory_slots(mem, 0) }?;
        self.dirty_log.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Reads and clears KVM's dirty log (KVM_GET_DIRTY_LOG): one bitmap per slot of `mem`, in
    /// slot order, with the pages the guest wrote since the previous call (or since
    /// [`Vm::enable_dirty_log`]). Reading while vCPUs run is allowed; a page written during the
    /// read shows up in this bitmap or the next one.
    pub fn dirty_pages<M: GuestMemoryBackend + ?Sized>(&self, mem: &M) -> Result<Vec<DirtyBitmap>> {
        if !self.dirty_log.load(Ordering::SeqCst) {
            return Err(Error::DirtyLogNotEnabled);
        }
        mem.iter()
            .enumerate()
            .map(|(slot, region)| {
                let slot = slot as u32;
                let size = region.len();
                // x86-64: usize and the u64 region length have the same width.
                let bits = self
                    .fd
                    .get_dirty_log(slot, size as usize)
                    .map_err(|source| Error::DirtyLog { slot, source })?;
                Ok(DirtyBitmap {
                    slot,
                    guest_addr: region.start_addr().0,
                    size,
                    bits,
                })
            })
            .collect()
    }

    /// Registers region `i` of `mem` as slot `i` with `flags`.
    ///
    /// # Safety
    ///
    /// The contract of [`Vm::register_memory`].
    unsafe fn set_memory_slots<M: GuestMemoryBackend + ?Sized>(
        &self,
        mem: &M,
        flags: u32,
    ) -> Result<()> {
        let slots = self.kvm.get_nr_memslots();
        if mem.num_regions() > slots {
            return Err(Error::TooManyMemorySlots(mem.num_regions()));
        }
        for (slot, region) in mem.iter().enumerate() {
            let host =
                mem.get_host_address(region.start_addr())
                    .map_err(|_| Error::GuestMemory {
                        what: "memory slot",
                    })?;
            let entry = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: by this function's contract (register_memory's), the region is one host
            // mapping of exactly `memory_size` bytes at `host`, which KVM may change at any time
            // and which stays mapped for as long as a vCPU of this VM may run.
            unsafe { self.fd.set_user_memory_region(entry) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Makes a write to `fd` raise guest interrupt line `gsi` (KVM_IRQFD).
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.create_irqchip()?;
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Makes a guest write to MMIO address `addr` signal `fd` without leaving KVM (KVM_IOEVENTFD).
    ///
    /// With `datamatch`, only 32-bit writes of that value signal `fd` (a virtio-mmio QueueNotify
    /// register gets one EventFd per queue index); other writes still exit to user space.
    pub fn register_mmio_ioeventfd(
        &self,
        fd: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<()> {
        let addr = IoEventAddress::Mmio(addr);
        match datamatch {
            Some(value) => self.fd.register_ioevent(fd, &addr, value),
            None => self.fd.register_ioevent(fd, &addr, kvm_ioctls::NoDatamatch),
        }
        .map_err(kvm_err("KVM_IOEVENTFD"))
    }
}

fn open_kvm() -> Result<Kvm> {
    let path = Path::new("/dev/kvm");
    if !path.exists() {
        return Err(Error::NoKvmDevice);
    }
    Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => Error::KvmPermission,
        libc::ENOENT => Error::NoKvmDevice,
        _ => Error::OpenKvm(std::io::Error::from_raw_os_error(e.errno())),
    })
}
