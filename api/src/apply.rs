//! Configuration requests applied onto a [`VmConfig`], and a `VmConfig` written back in
//! Firecracker's `GET /vm/config` shape.
//!
//! How each request maps:
//!
//! - `PUT /boot-source`: `kernel` = `kernel_image_path`, `initrd` = `initrd_path` (cleared when
//!   absent), `cmdline` = `boot_args` (the whole command line, replacing the VMM's default;
//!   absent: the default). `append` is left alone.
//! - `PUT /machine-config`: `vcpus` = `vcpu_count`, `memory` = `mem_size_mib` MiB,
//!   `hugepages` = (`huge_pages` == `Transparent`); absent optional fields reset to defaults.
//!   `track_dirty_pages` = `track_dirty_pages`. `PATCH` changes only what it names.
//! - `PUT /drives/{id}`: a [`DiskConfig`] with `path` = `path_on_host`, `read_only` =
//!   `is_read_only`, `id` = `drive_id` (also the virtio-blk serial the guest reads, so at most
//!   [`MAX_DRIVE_ID_BYTES`]). A drive whose id exists is replaced in place; a new one is added
//!   at the end. A root drive (`is_root_device`) goes first, so that it is `/dev/vda`, and
//!   `append` gets `root=/dev/vda` (or `root=PARTUUID=<partuuid>`) followed by `ro` or `rw`;
//!   those tokens are removed again when that drive stops being root. Only one drive can be
//!   root. The root drive is recognised as the first disk when `append` holds a `root=` token.
//! - `PUT /network-interfaces/{id}`: a [`NetConfig`] with `tap` = `host_dev_name`, `mac` =
//!   `guest_mac`; replaced in place when the id exists (ids kept by [`ApiConfig`]); a tap or
//!   MAC that another interface has is refused.
//! - `PUT /vsock`: `vsock` = `{cid: guest_cid, socket: uds_path}` (replaces any).
//! - `PUT /entropy`: `rng` = true.
//! - `PUT /balloon`: `balloon` = `{target: amount_mib MiB, deflate_on_oom}`; `PATCH /balloon`
//!   changes the target of the configured one.
//!
//! Cross-field checks (duplicate image paths, too many devices, balloon larger than RAM) stay
//! with [`VmConfig::validate`], run before boot.

use std::path::PathBuf;

use crate::device_config::{parse_mac, BalloonConfig, DiskConfig, NetConfig, VsockConfig};
use crate::types::*;
use crate::vm_config::{MemorySize, VmConfig, DEFAULT_CMDLINE};
use crate::ApiError;

/// Longest `drive_id` that can be applied: it becomes the virtio-blk serial (GET_ID), which
/// holds 20 bytes.
pub const MAX_DRIVE_ID_BYTES: usize = 20;

const MIB: u64 = 1 << 20;

fn mib_to_size(field: &'static str, mib: u64) -> Result<MemorySize, ApiError> {
    mib.checked_mul(MIB)
        .map(MemorySize)
        .ok_or_else(|| ApiError::InvalidValue {
            field,
            why: format!("{mib} MiB overflows a byte count"),
        })
}

/// Applies `PUT /boot-source`.
pub fn apply_boot_source(config: &mut VmConfig, boot: &BootSource) -> Result<(), ApiError> {
    boot.validate()?;
    config.kernel = Some(PathBuf::from(&boot.kernel_image_path));
    config.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
    config.cmdline = boot.boot_args.clone();
    Ok(())
}

/// Applies `PUT /machine-config`.
pub fn apply_machine_config(
    config: &mut VmConfig,
    machine: &MachineConfig,
) -> Result<(), ApiError> {
    machine.validate()?;
    let memory = mib_to_size("mem_size_mib", machine.mem_size_mib)?;
    config.vcpus = machine.vcpu_count;
    config.memory = memory;
    config.hugepages = machine.huge_pages == HugePages::Transparent;
    config.track_dirty_pages = machine.track_dirty_pages;
    config.smt = machine.smt;
    Ok(())
}

/// Applies `PATCH /machine-config`.
pub fn apply_machine_config_update(
    config: &mut VmConfig,
    update: &MachineConfigUpdate,
) -> Result<(), ApiError> {
    update.validate()?;
    let memory = update
        .mem_size_mib
        .map(|mib| mib_to_size("mem_size_mib", mib))
        .transpose()?;
    let vcpus = update.vcpu_count.unwrap_or(config.vcpus);
    let smt = update.smt.unwrap_or(config.smt);
    if smt && vcpus > 1 && vcpus % 2 == 1 {
        return Err(ApiError::InvalidValue {
            field: "vcpu_count",
            why: format!("{vcpus} vCPUs with smt: true (1 or an even number are needed)"),
        });
    }
    config.vcpus = vcpus;
    config.smt = smt;
    if let Some(memory) = memory {
        config.memory = memory;
    }
    if let Some(huge_pages) = update.huge_pages {
        config.hugepages = huge_pages == HugePages::Transparent;
    }
    if let Some(track) = update.track_dirty_pages {
        config.track_dirty_pages = track;
    }
    Ok(())
}

/// The `root=` token and the `ro`/`rw` after it, as positions in `append`'s tokens.
fn root_tokens(tokens: &[&str]) -> Option<(usize, usize)> {
    let start = tokens.iter().position(|t| t.starts_with("root="))?;
    let len = match tokens.get(start + 1) {
        Some(&"ro") | Some(&"rw") => 2,
        _ => 1,
    };
    Some((start, len))
}

/// The `root=` value in `append`, if any.
fn root_value(config: &VmConfig) -> Option<String> {
    let append = config.append.as_deref()?;
    let tokens: Vec<&str> = append.split_whitespace().collect();
    let (start, _) = root_tokens(&tokens)?;
    tokens[start].strip_prefix("root=").map(str::to_string)
}

/// Replaces the `root=` tokens of `append` with `new` (none when `None`).
fn set_root_tokens(config: &mut VmConfig, new: Option<String>) {
    let append = config.append.take().unwrap_or_default();
    let mut tokens: Vec<&str> = append.split_whitespace().collect();
    if let Some((start, len)) = root_tokens(&tokens) {
        tokens.drain(start..start + len);
    }
    let mut text = tokens.join(" ");
    if let Some(new) = new {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&new);
    }
    config.append = (!text.is_empty()).then_some(text);
}

/// Applies `PUT /drives/{drive_id}`.
pub fn apply_drive(config: &mut VmConfig, drive: &Drive) -> Result<(), ApiError> {
    drive.validate()?;
    if drive.drive_id.len() > MAX_DRIVE_ID_BYTES {
        return Err(ApiError::InvalidId {
            field: "drive_id",
            id: drive.drive_id.clone(),
            why: format!(
                "it becomes the disk's virtio-blk serial, which holds at most {MAX_DRIVE_ID_BYTES} bytes"
            ),
        });
    }
    let path = drive.path_on_host.as_deref().unwrap_or_default();
    let read_only = drive.is_read_only.unwrap_or(false);
    let has_root = root_value(config).is_some() && !config.disk.is_empty();
    let existing = config
        .disk
        .iter()
        .enumerate()
        .position(|(i, d)| d.api_id(i) == drive.drive_id);
    let was_root = has_root && existing == Some(0);
    if drive.is_root_device && has_root && !was_root {
        return Err(ApiError::RootDriveExists {
            existing: config.disk.first().map(|d| d.api_id(0)).unwrap_or_default(),
        });
    }
    let disk = DiskConfig {
        path: PathBuf::from(path),
        format: drive.format,
        read_only,
        id: Some(drive.drive_id.clone()),
        rate_limiter: drive.rate_limiter,
        cache_type: drive.cache_type.unwrap_or_default(),
        io_engine: drive.io_engine,
        verity: drive.verity()?,
        key_file: drive.key_file.as_ref().map(PathBuf::from),
        passphrase_file: drive.passphrase_file.as_ref().map(PathBuf::from),
        luks_header: drive.luks_header.as_ref().map(PathBuf::from),
    };
    if let Some(index) = existing {
        config.disk.remove(index);
    }
    if drive.is_root_device {
        config.disk.insert(0, disk);
        let device = match &drive.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".to_string(),
        };
        let mode = if read_only { "ro" } else { "rw" };
        set_root_tokens(config, Some(format!("root={device} {mode}")));
    } else {
        if was_root {
            set_root_tokens(config, None);
        }
        // A drive that stops being root moves to the end; any other keeps its place.
        let index = match existing {
            Some(i) if !was_root => i.min(config.disk.len()),
            _ => config.disk.len(),
        };
        config.disk.insert(index, disk);
    }
    Ok(())
}

/// Applies `PUT /vsock`.
pub fn apply_vsock(config: &mut VmConfig, vsock: &Vsock) -> Result<(), ApiError> {
    vsock.validate()?;
    config.vsock = Some(VsockConfig {
        cid: u64::from(vsock.guest_cid),
        socket: PathBuf::from(&vsock.uds_path),
    });
    Ok(())
}

/// Applies `PUT /entropy`.
pub fn apply_entropy(config: &mut VmConfig, entropy: &EntropyDevice) -> Result<(), ApiError> {
    entropy.validate()?;
    config.rng = true;
    config.rng_rate_limiter = entropy.rate_limiter;
    Ok(())
}

/// Applies `PUT /balloon`.
pub fn apply_balloon(config: &mut VmConfig, balloon: &Balloon) -> Result<(), ApiError> {
    balloon.validate()?;
    config.balloon = Some(BalloonConfig {
        target: mib_to_size("amount_mib", balloon.amount_mib)?,
        deflate_on_oom: balloon.deflate_on_oom,
        stats_polling_interval_s: balloon.stats_polling_interval_s.unwrap_or(0),
    });
    Ok(())
}

/// Applies `PATCH /balloon`: a new target for the configured balloon. After boot the VM side
/// also has to tell the running device.
pub fn apply_balloon_update(config: &mut VmConfig, update: &BalloonUpdate) -> Result<(), ApiError> {
    update.validate()?;
    let target = mib_to_size("amount_mib", update.amount_mib)?;
    if target.0 > config.memory.0 {
        return Err(ApiError::InvalidValue {
            field: "amount_mib",
            why: format!(
                "a balloon of {target} is larger than the VM's {} of memory",
                config.memory
            ),
        });
    }
    let balloon = config
        .balloon
        .as_mut()
        .ok_or(ApiError::BalloonNotConfigured)?;
    balloon.target = target;
    Ok(())
}

/// A [`VmConfig`] with what the API configures that `VmConfig` has no field for: network
/// interface ids. The VM side keeps one of these before boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// The VM's configuration.
    pub vm: VmConfig,
    /// The `iface_id` of each entry of `vm.net`, in the same order. Entries that are missing
    /// (a `vm.net` longer than this list) are known by their tap name.
    pub iface_ids: Vec<String>,
    /// Who `GET /` and `GET /version` say this process is.
    pub flavor: Flavor,
}

impl ApiConfig {
    /// Wraps a configuration (from the command line or a file); its network interfaces get
    /// their tap names as ids.
    pub fn new(vm: VmConfig) -> ApiConfig {
        let iface_ids = vm.net.iter().map(|n| n.tap.clone()).collect();
        ApiConfig {
            vm,
            iface_ids,
            flavor: Flavor::Vmm,
        }
    }

    /// The `drive_id` of `vm.disk[index]`: its id, or `disk<N>` for one configured without
    /// (`None` past the end).
    pub fn drive_id(&self, index: usize) -> Option<String> {
        self.vm.disk.get(index).map(|d| d.api_id(index))
    }

    /// The index in `vm.disk` of the drive the API calls `drive_id`.
    pub fn drive_index(&self, drive_id: &str) -> Option<usize> {
        (0..self.vm.disk.len()).find(|&i| self.drive_id(i).as_deref() == Some(drive_id))
    }

    /// The index in `vm.net` of the interface the API calls `iface_id`.
    pub fn iface_index(&self, iface_id: &str) -> Option<usize> {
        (0..self.vm.net.len()).find(|&i| self.iface_id(i) == iface_id)
    }

    /// The `iface_id` of `vm.net[index]` (its tap name when the API gave none; empty past the
    /// end).
    pub fn iface_id(&self, index: usize) -> String {
        match (self.iface_ids.get(index), self.vm.net.get(index)) {
            (Some(id), _) => id.clone(),
            (None, Some(net)) => net.tap.clone(),
            (None, None) => String::new(),
        }
    }

    /// Makes `iface_ids` as long as `vm.net`.
    fn sync_ids(&mut self) {
        let ids: Vec<String> = (0..self.vm.net.len()).map(|i| self.iface_id(i)).collect();
        self.iface_ids = ids;
    }

    /// Applies `PUT /machine-config`.
    pub fn apply_machine_config(&mut self, machine: &MachineConfig) -> Result<(), ApiError> {
        apply_machine_config(&mut self.vm, machine)
    }

    /// Applies `PATCH /machine-config`.
    pub fn apply_machine_config_update(
        &mut self,
        update: &MachineConfigUpdate,
    ) -> Result<(), ApiError> {
        apply_machine_config_update(&mut self.vm, update)
    }

    /// Applies `PUT /network-interfaces/{iface_id}`.
    pub fn apply_network_interface(&mut self, iface: &NetworkInterface) -> Result<(), ApiError> {
        iface.validate()?;
        self.sync_ids();
        let existing = self.iface_ids.iter().position(|id| *id == iface.iface_id);
        let new_mac = iface.guest_mac.as_deref().and_then(parse_mac);
        for (i, net) in self.vm.net.iter().enumerate() {
            if Some(i) == existing {
                continue;
            }
            if net.tap == iface.host_dev_name {
                return Err(ApiError::NetworkConflict {
                    what: "host_dev_name",
                    value: iface.host_dev_name.clone(),
                    other: self.iface_id(i),
                });
            }
            if new_mac.is_some() && net.mac_bytes() == new_mac {
                return Err(ApiError::NetworkConflict {
                    what: "guest_mac",
                    value: iface.guest_mac.clone().unwrap_or_default(),
                    other: self.iface_id(i),
                });
            }
        }
        let net = NetConfig {
            tap: iface.host_dev_name.clone(),
            mac: iface.guest_mac.clone(),
            rx_rate_limiter: iface.rx_rate_limiter,
            tx_rate_limiter: iface.tx_rate_limiter,
        };
        match existing {
            Some(i) => self.vm.net[i] = net,
            None => {
                self.vm.net.push(net);
                self.iface_ids.push(iface.iface_id.clone());
            }
        }
        Ok(())
    }

    /// Applies a configuration request and returns `Ok(true)`; returns `Ok(false)` and
    /// changes nothing for a request that is not one (GETs, actions, pause and resume,
    /// snapshots), which the VM side handles. Whether the VM's state allows the change
    /// ([`ApiRequest::pre_boot_only`]) is the caller's decision.
    pub fn apply(&mut self, request: &ApiRequest) -> Result<bool, ApiError> {
        match request {
            ApiRequest::PutBootSource(boot) => apply_boot_source(&mut self.vm, boot)?,
            ApiRequest::PutMachineConfig(machine) => self.apply_machine_config(machine)?,
            ApiRequest::PatchMachineConfig(update) => self.apply_machine_config_update(update)?,
            ApiRequest::PutDrive(drive) => apply_drive(&mut self.vm, drive)?,
            ApiRequest::PutNetworkInterface(iface) => self.apply_network_interface(iface)?,
            ApiRequest::PutVsock(vsock) => apply_vsock(&mut self.vm, vsock)?,
            ApiRequest::PutEntropy(entropy) => apply_entropy(&mut self.vm, entropy)?,
            ApiRequest::PutBalloon(balloon) => apply_balloon(&mut self.vm, balloon)?,
            ApiRequest::PatchBalloon(update) => apply_balloon_update(&mut self.vm, update)?,
            ApiRequest::GetInstanceInfo
            | ApiRequest::GetVersion
            | ApiRequest::GetVmConfig
            | ApiRequest::GetMachineConfig
            | ApiRequest::GetBalloon
            | ApiRequest::Action(_)
            | ApiRequest::PatchVm(_)
            | ApiRequest::CreateSnapshot(_)
            | ApiRequest::LoadSnapshot(_)
            | ApiRequest::PutLogger(_)
            | ApiRequest::PutMetrics(_)
            | ApiRequest::PatchDrive(_)
            | ApiRequest::PatchNetworkInterface(_)
            | ApiRequest::GetBalloonStats
            | ApiRequest::PatchBalloonStats(_) => return Ok(false),
        }
        Ok(true)
    }

    /// The configuration in `GET /vm/config`'s shape, interface ids included.
    pub fn to_firecracker(&self) -> FullVmConfig {
        let mut full = vm_config_to_firecracker(&self.vm);
        for (i, iface) in full.network_interfaces.iter_mut().enumerate() {
            iface.iface_id = self.iface_id(i);
        }
        full
    }

    /// `GET /machine-config`'s answer.
    pub fn machine_config(&self) -> MachineConfig {
        self.to_firecracker().machine_config
    }

    /// `GET /balloon`'s answer, `None` when no balloon is configured (Firecracker answers 400).
    pub fn balloon(&self) -> Option<Balloon> {
        self.to_firecracker().balloon
    }
}

/// A [`VmConfig`] in Firecracker's `GET /vm/config` shape (a `FullVmConfig` serializes to it).
///
/// - `boot-source`: `null` without a kernel; `boot_args` is the command line as configured:
///   `cmdline` (or, when only `append` is set, the default command line) followed by
///   `append` less the `root=` tokens that the root drive stands for; absent when neither is
///   set (the VMM's default command line).
/// - `machine-config`: `mem_size_mib` rounded down to whole MiB.
/// - `drives`: in order; a disk without an id is `disk<N>`; the first is the root device
///   when `append` holds a `root=` token (with `partuuid` when it is `root=PARTUUID=...`).
/// - `network-interfaces`: ids are the tap names (see [`ApiConfig::to_firecracker`]).
pub fn vm_config_to_firecracker(config: &VmConfig) -> FullVmConfig {
    let root = if config.disk.is_empty() {
        None
    } else {
        root_value(config)
    };
    let extra_append = config.append.as_deref().map(|append| {
        let mut tokens: Vec<&str> = append.split_whitespace().collect();
        if let Some((start, len)) = root_tokens(&tokens) {
            tokens.drain(start..start + len);
        }
        tokens.join(" ")
    });
    let extra_append = extra_append.filter(|a| !a.is_empty());
    let boot_args = match (&config.cmdline, extra_append) {
        (Some(cmdline), None) => Some(cmdline.clone()),
        (cmdline, Some(extra)) => {
            let base = cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
            Some(if base.is_empty() {
                extra
            } else {
                format!("{base} {extra}")
            })
        }
        (None, None) => None,
    };
    let boot_source = config.kernel.as_ref().map(|kernel| BootSource {
        kernel_image_path: kernel.to_string_lossy().into_owned(),
        boot_args,
        initrd_path: config
            .initrd
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
    });
    let drives = config
        .disk
        .iter()
        .enumerate()
        .map(|(i, disk)| {
            let is_root = i == 0 && root.is_some();
            Drive {
                drive_id: disk.api_id(i),
                path_on_host: Some(disk.path.to_string_lossy().into_owned()),
                is_root_device: is_root,
                is_read_only: Some(disk.read_only),
                partuuid: root
                    .as_deref()
                    .filter(|_| is_root)
                    .and_then(|r| r.strip_prefix("PARTUUID="))
                    .map(str::to_string),
                cache_type: Some(disk.cache_type),
                io_engine: Some(disk.io_engine.unwrap_or(IoEngine::Sync)),
                rate_limiter: disk.rate_limiter,
                socket: None,
                format: disk.format,
                verity_hash_file: disk
                    .verity
                    .as_ref()
                    .map(|v| v.hash_file.to_string_lossy().into_owned()),
                verity_root_hash: disk.verity.as_ref().map(|v| v.root_hash.clone()),
                key_file: disk
                    .key_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                passphrase_file: disk
                    .passphrase_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                luks_header: disk
                    .luks_header
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            }
        })
        .collect();
    let network_interfaces = config
        .net
        .iter()
        .map(|net| NetworkInterface {
            iface_id: net.tap.clone(),
            host_dev_name: net.tap.clone(),
            guest_mac: net.mac.clone(),
            mtu: None,
            rx_rate_limiter: net.rx_rate_limiter,
            tx_rate_limiter: net.tx_rate_limiter,
        })
        .collect();
    FullVmConfig {
        balloon: config.balloon.as_ref().map(|b| Balloon {
            amount_mib: b.target.0 / MIB,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: Some(b.stats_polling_interval_s).filter(|&s| s > 0),
            free_page_hinting: None,
            free_page_reporting: None,
        }),
        drives,
        boot_source,
        machine_config: MachineConfig {
            vcpu_count: config.vcpus,
            mem_size_mib: config.memory.0 / MIB,
            smt: config.smt,
            track_dirty_pages: config.track_dirty_pages,
            huge_pages: if config.hugepages {
                HugePages::Transparent
            } else {
                HugePages::None
            },
            cpu_template: None,
        },
        network_interfaces,
        vsock: config.vsock.as_ref().map(|v| Vsock {
            guest_cid: u32::try_from(v.cid).unwrap_or(u32::MAX),
            uds_path: v.socket.to_string_lossy().into_owned(),
            vsock_id: None,
        }),
        entropy: config.rng.then_some(EntropyDevice {
            rate_limiter: config.rng_rate_limiter,
        }),
    }
}
