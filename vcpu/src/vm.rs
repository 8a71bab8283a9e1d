//! The KVM VM: /dev/kvm, the VM fd, irqchip, PIT, memory slots, irqfd and ioeventfd. (vCPUs
//! come from [`Vm::create_vcpu`] in [`crate::run`], the VM's state from [`crate::state`].)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_pit_config, kvm_userspace_memory_region,
    CpuId, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES,
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

/// Which interrupt controllers KVM emulates for a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irqchip {
    /// None at all: no LAPIC, and HLT exits to user space. Only for tests and examples.
    None,
    /// Everything in the kernel (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2): the LAPICs, the IOAPIC,
    /// both 8259 PICs and the PIT. What guests that program the PIC or the PIT need.
    Kernel,
    /// KVM_CAP_SPLIT_IRQCHIP: the LAPICs in the kernel, the IOAPIC in user space. Its
    /// [`SPLIT_IOAPIC_PINS`] pins are GSIs whose routes are MSIs ([`MsiRouter::set_routes`]),
    /// programmed from the user-space IOAPIC's redirection table; an EOI of a level-triggered
    /// vector exits with KVM_EXIT_IOAPIC_EOI. No PIC and no PIT. Destroying such a VM is much
    /// cheaper than one with the in-kernel irqchip (which waits for RCU grace periods).
    Split,
}

/// IOAPIC pins a [`Irqchip::Split`] VM reserves as its first GSIs (the in-kernel IOAPIC's
/// count).
pub const SPLIT_IOAPIC_PINS: u32 = 24;

/// A message-signalled interrupt: what is written where (the LAPICs' window at 0xfee00000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    /// The address: destination APIC id and mode.
    pub address: u64,
    /// The data: vector, delivery mode, trigger mode.
    pub data: u32,
}

/// VM creation options.
#[derive(Clone, Copy, Debug)]
pub struct VmOptions {
    /// The interrupt controllers. [`Irqchip::None`] only for tests that want HLT to exit to
    /// user space.
    pub irqchip: Irqchip,
    /// Where the VM's TSS and the boot vCPU's structures go in guest physical memory.
    pub layout: GuestLayout,
}

impl VmOptions {
    /// Options for a VM with the in-kernel irqchip and the given layout.
    pub fn new(layout: GuestLayout) -> Self {
        VmOptions {
            irqchip: Irqchip::Kernel,
            layout,
        }
    }
}

/// Whether a VM has coalesced MMIO zones, shared by its vCPUs, which drain the one ring of the
/// VM (mapped through each vCPU's fd) one at a time.
#[derive(Debug, Default)]
pub(crate) struct CoalescedMmio {
    pub(crate) enabled: AtomicBool,
    pub(crate) drain: Mutex<()>,
    /// The zones (address, length), unregistered when the VM goes.
    zones: Mutex<Vec<(u64, u32)>>,
}

/// A KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    supported_cpuid: CpuId,
    irqchip: Irqchip,
    irqchip_created: Mutex<bool>,
    state_caps: Arc<StateCaps>,
    coalesced_mmio: Arc<CoalescedMmio>,
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
        match options.irqchip {
            Irqchip::None => {}
            Irqchip::Kernel => required.extend([
                (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
                (Cap::Pit2, "KVM_CAP_PIT2"),
                (Cap::Irqfd, "KVM_CAP_IRQFD"),
                (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            ]),
            Irqchip::Split => required.extend([
                (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
                (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
                (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
                (Cap::Irqfd, "KVM_CAP_IRQFD"),
                (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            ]),
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
        let lapic = options.irqchip != Irqchip::None;
        let state_caps = StateCaps::new(&kvm, &fd, &supported_cpuid, lapic);
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            supported_cpuid,
            irqchip: options.irqchip,
            irqchip_created: Mutex::new(false),
            state_caps: Arc::new(state_caps),
            coalesced_mmio: Arc::default(),
            dirty_log: AtomicBool::new(false),
            layout: options.layout,
        })
    }

    /// Creates the interrupt controllers of the [`Irqchip`] option, once: the in-kernel irqchip
    /// (IOAPIC, PIC, LAPICs) and PIT, or the split irqchip (in-kernel LAPICs); a no-op with
    /// [`Irqchip::None`]. Call it after [`Vm::register_memory`]: once an irqchip exists, KVM
    /// makes every memory slot update wait for a grace period (measured on a PVM host: 7-10 ms
    /// for the first slot instead of 0.4 ms). vCPU creation and irqfds create it if still
    /// missing.
    pub fn create_irqchip(&self) -> Result<()> {
        let mut created = self
            .irqchip_created
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *created {
            return Ok(());
        }
        match self.irqchip {
            Irqchip::None => return Ok(()),
            Irqchip::Split => {
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_SPLIT_IRQCHIP,
                    ..Default::default()
                };
                cap.args[0] = u64::from(SPLIT_IOAPIC_PINS);
                self.fd
                    .enable_cap(&cap)
                    .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
                *created = true;
                return Ok(());
            }
            Irqchip::Kernel => {}
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

    /// The interrupt controllers this VM was created with.
    pub fn irqchip(&self) -> Irqchip {
        self.irqchip
    }

    /// Whether the vCPUs have in-kernel LAPICs (a [`Irqchip::Kernel`] or [`Irqchip::Split`]
    /// VM).
    pub fn has_lapic(&self) -> bool {
        self.irqchip != Irqchip::None
    }

    /// A handle that programs and signals this VM's MSI routes, for a user-space IOAPIC; None
    /// unless the VM has the [`Irqchip::Split`] option.
    pub fn msi_router(&self) -> Option<MsiRouter> {
        (self.irqchip == Irqchip::Split).then(|| MsiRouter {
            fd: self.fd.clone(),
        })
    }

    /// The guest layout the VM was created with.
    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// The VM's coalesced MMIO zones, for its vCPUs.
    pub(crate) fn coalesced_mmio(&self) -> &Arc<CoalescedMmio> {
        &self.coalesced_mmio
    }

    /// Makes guest writes to `len` bytes of MMIO at `addr` not exit: KVM appends them to the
    /// VM's coalesced MMIO ring, and each vCPU hands the ring's writes to its
    /// [`ExitHandler::coalesced_mmio_write`] before it serves its next MMIO exit, and when it
    /// stops. Only for registers whose writes have no effect a guest could see before its next
    /// access to the same device (an index register, for one); reads still exit.
    ///
    /// Returns false, and changes nothing, when the host's KVM has no coalesced MMIO.
    ///
    /// The price is at the end: KVM destroys a VM with a coalesced zone ~12 ms slower (measured
    /// on a PVM host), and dropping the [`Vm`] unregisters its zones first, which costs 3-7 ms
    /// there (an SRCU wait) instead.
    ///
    /// [`ExitHandler::coalesced_mmio_write`]: crate::ExitHandler::coalesced_mmio_write
    pub fn coalesce_mmio_writes(&self, addr: u64, len: u32) -> Result<bool> {
        if !self.kvm.check_extension(Cap::CoalescedMmio) {
            return Ok(false);
        }
        self.fd
            .register_coalesced_mmio(IoEventAddress::Mmio(addr), len)
            .map_err(kvm_err("KVM_REGISTER_COALESCED_MMIO"))?;
        self.coalesced_mmio
            .zones
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((addr, len));
        self.coalesced_mmio.enabled.store(true, Ordering::Release);
        Ok(true)
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

impl Drop for Vm {
    /// Unregisters the coalesced MMIO zones before the VM fd closes: a VM destroyed with a
    /// zone still registered makes that close() wait ~12 ms (measured on a PVM host; without
    /// zones it takes ~0.2 ms), one unregister costs far less.
    fn drop(&mut self) {
        let zones = std::mem::take(
            &mut *self
                .coalesced_mmio
                .zones
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (addr, len) in zones {
            let _ = self
                .fd
                .unregister_coalesced_mmio(IoEventAddress::Mmio(addr), len);
        }
    }
}

/// Programs and signals the MSI routes of a [`Irqchip::Split`] VM ([`Vm::msi_router`]): what a
/// user-space IOAPIC needs from KVM. Cheap to keep and usable from any thread.
#[derive(Clone, Debug)]
pub struct MsiRouter {
    fd: Arc<VmFd>,
}

impl MsiRouter {
    /// Replaces the VM's GSI routing (KVM_SET_GSI_ROUTING) with `routes`: GSI `gsi` raises
    /// `msi`. An irqfd bound to a GSI without a route raises nothing until one is set.
    pub fn set_routes(&self, routes: &[(u32, Msi)]) -> Result<()> {
        let mut table = KvmIrqRouting::new(0).map_err(|_| Error::TooManyRoutes(routes.len()))?;
        for &(gsi, msi) in routes {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = msi.address as u32;
            entry.u.msi.address_hi = (msi.address >> 32) as u32;
            entry.u.msi.data = msi.data;
            table
                .push(entry)
                .map_err(|_| Error::TooManyRoutes(routes.len()))?;
        }
        self.fd
            .set_gsi_routing(&table)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING"))
    }

    /// Raises `msi` once (KVM_SIGNAL_MSI). Returns whether a LAPIC took it (false: the
    /// guest blocked it, e.g. no APIC has the destination id).
    pub fn signal(&self, msi: Msi) -> Result<bool> {
        let message = kvm_msi {
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            ..Default::default()
        };
        let delivered = self
            .fd
            .signal_msi(message)
            .map_err(kvm_err("KVM_SIGNAL_MSI"))?;
        Ok(delivered > 0)
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
