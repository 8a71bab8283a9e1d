//! The split irqchip's user-space IOAPIC (vmm-devices' [`IoApic`]) wired to KVM: its pins'
//! routes become the VM's MSI routes for GSIs 0-23 (where every device's irqfd is bound), its
//! registers sit on the MMIO bus at [`layout::IOAPIC_START`], and each virtio device's
//! InterruptStatus tells it whether that pin's line is still asserted.

use std::io;
use std::sync::{Arc, Mutex};

use vmm_devices::ioapic::{IoApic, IoApicRoutes, IoApicState, MsiMessage, IOAPIC_MMIO_LEN};
use vmm_devices::Bus;
use vmm_memory::layout;
use vmm_vcpu::{Msi, MsiRouter, Vm};

use crate::error::{Error, Result};
use crate::virtio_devices::AttachedDevice;

// Every IOAPIC pin a device uses is one of the GSIs the split irqchip reserves.
const _: () = {
    assert!(vmm_devices::ioapic::IOAPIC_PINS as u32 == vmm_vcpu::SPLIT_IOAPIC_PINS);
    assert!(layout::IRQ_LAST < vmm_vcpu::SPLIT_IOAPIC_PINS);
};

/// The IOAPIC's routes as KVM's GSI routing (pin `i` is GSI `i`).
struct KvmRoutes(MsiRouter);

fn msi(message: MsiMessage) -> Msi {
    Msi {
        address: message.address,
        data: message.data,
    }
}

impl IoApicRoutes for KvmRoutes {
    fn set_routes(
        &mut self,
        routes: &[Option<MsiMessage>; vmm_devices::ioapic::IOAPIC_PINS],
    ) -> io::Result<()> {
        let table: Vec<(u32, Msi)> = (0u32..)
            .zip(routes)
            .filter_map(|(gsi, route)| route.map(|m| (gsi, msi(m))))
            .collect();
        self.0.set_routes(&table).map_err(io::Error::other)
    }

    fn signal(&mut self, message: MsiMessage) -> io::Result<()> {
        self.0
            .signal(msi(message))
            .map(drop)
            .map_err(io::Error::other)
    }
}

/// With a split irqchip, the IOAPIC on `mmio` (from `state` when restoring, its routes then
/// installed at once); None for a VM with the in-kernel irqchip. Its id is the one the MADT and
/// the MP table give it: the vCPU count.
pub(crate) fn attach(
    vm: &Vm,
    vcpus: u64,
    state: Option<&IoApicState>,
    mmio: &mut Bus,
) -> Result<Option<Arc<Mutex<IoApic>>>> {
    let Some(router) = vm.msi_router() else {
        return match state {
            Some(_) => Err(Error::SnapshotMismatch(
                "the snapshot has a user-space IOAPIC (split irqchip) but this VM has the \
                 in-kernel irqchip"
                    .into(),
            )),
            None => Ok(None),
        };
    };
    let routes = Box::new(KvmRoutes(router));
    let ioapic = match state {
        Some(state) => IoApic::from_state(state, routes).map_err(Error::IoApic)?,
        None => IoApic::new(u8::try_from(vcpus).unwrap_or(u8::MAX), routes),
    };
    let ioapic = Arc::new(Mutex::new(ioapic));
    mmio.insert(ioapic.clone(), layout::IOAPIC_START, IOAPIC_MMIO_LEN)?;
    // The select register's writes could be coalesced MMIO (`Vm::coalesce_mmio_writes`: 273
    // fewer exits in a Linux boot), but a VM with a coalesced zone takes KVM 3-7 ms more to
    // destroy on a PVM host (an SRCU wait), which every VM would pay at exit: left off.
    Ok(Some(ioapic))
}

/// Tells `ioapic` where each virtio device's line level is: its InterruptStatus, nonzero
/// until the driver acknowledges every reason (what a level-triggered pin re-raises on).
pub(crate) fn connect_lines(ioapic: &Mutex<IoApic>, devices: &[AttachedDevice]) {
    let mut ioapic = crate::lock(ioapic);
    for device in devices {
        let interrupt = crate::lock(&device.transport).interrupt().clone();
        ioapic.set_line_level(
            device.slot.irq as usize,
            Box::new(move || interrupt.status() != 0),
        );
    }
}
