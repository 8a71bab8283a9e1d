//! Control API requests mapped onto the VMM, in one place: before boot onto the configuration
//! (and `InstanceStart` or a snapshot load), on a running VM onto [`Vmm`]'s typed methods. This
//! module alone decides HTTP status codes for what the VMM did.

use vmm_api::{
    ActionType, ApiConfig, ApiRequest, ApiResponse, Flavor, InstanceInfo, InstanceState,
    VersionInfo, VmState,
};

use crate::builder::BuiltVm;
use crate::error::{chain, Error, Result};
use crate::persist::RestoreSource;
use crate::vmm::Vmm;

/// The answer to a request on a running VM.
pub(crate) fn handle_running(vmm: &mut Vmm, request: ApiRequest) -> ApiResponse {
    if let Some(answer) = describe(vmm.config(), vmm.state(), &request) {
        return answer;
    }
    match request {
        ApiRequest::PatchVm(VmState::Paused) => respond(vmm.pause()),
        ApiRequest::PatchVm(VmState::Resumed) => respond(vmm.resume()),
        ApiRequest::Action(ActionType::SendCtrlAltDel) => {
            vmm.send_ctrl_alt_del();
            // Firecracker's guests often lack a keyboard handler (CONFIG_VT): its front end
            // presses the power button too, which an ACPI guest's init may handle.
            if vmm.config().flavor == Flavor::Firecracker {
                if let Err(e) = vmm.press_power_button() {
                    log::debug!("SendCtrlAltDel: no power button press: {e}");
                }
            }
            ApiResponse::no_content()
        }
        ApiRequest::Action(ActionType::PressPowerButton) => respond(vmm.press_power_button()),
        ApiRequest::Action(ActionType::FlushMetrics) => flush_metrics(),
        ApiRequest::Action(ActionType::InstanceStart) => {
            ApiResponse::bad_request("the VM is already running")
        }
        ApiRequest::CreateSnapshot(params) => respond(vmm.snapshot(&params)),
        ApiRequest::PatchBalloon(update) => respond(vmm.set_balloon_target(&update)),
        ApiRequest::GetBalloonStats => match vmm.balloon_stats() {
            Ok(stats) => ApiResponse::ok_json(&stats),
            Err(e) => respond(Err(e)),
        },
        ApiRequest::PatchBalloonStats(update) => {
            respond(vmm.set_balloon_stats_interval(update.stats_polling_interval_s))
        }
        ApiRequest::PatchDrive(drive) => respond(vmm.update_drive(&drive)),
        ApiRequest::PatchNetworkInterface(iface) => respond(vmm.update_network_interface(&iface)),
        other if other.pre_boot_only() => ApiResponse::bad_request(
            "this request is only allowed before the VM starts (the VM is running)",
        ),
        _ => ApiResponse::bad_request("request not supported on a running VM"),
    }
}

/// The answer to a request that only reads the configuration or the state, before boot and
/// after alike; `None` for every other request.
fn describe(api: &ApiConfig, state: InstanceState, request: &ApiRequest) -> Option<ApiResponse> {
    Some(match request {
        ApiRequest::GetInstanceInfo => {
            ApiResponse::ok_json(&InstanceInfo::new(api.vm.instance_id(), state, api.flavor))
        }
        ApiRequest::GetVersion => ApiResponse::ok_json(&VersionInfo::new(api.flavor)),
        ApiRequest::GetVmConfig => ApiResponse::ok_json(&api.to_firecracker()),
        ApiRequest::GetMachineConfig => ApiResponse::ok_json(&api.machine_config()),
        ApiRequest::GetBalloon => match api.balloon() {
            Some(balloon) => ApiResponse::ok_json(&balloon),
            None => ApiResponse::bad_request("no balloon device is configured"),
        },
        _ => return None,
    })
}

/// What a request before boot leads to.
pub(crate) enum PreBoot {
    /// Answer it and keep waiting.
    Answer(ApiResponse),
    /// `InstanceStart` built the VM: answer 204 and boot it.
    Boot(Box<BuiltVm>),
    /// `PUT /snapshot/load` rebuilt a VM: answer 204 and run it, resumed when the flag says so.
    Restored(Box<BuiltVm>, bool),
}

/// Handles a request before the VM exists: configuration changes go to `api`.
pub(crate) fn handle_pre_boot(api: &mut ApiConfig, request: ApiRequest) -> PreBoot {
    if let Some(answer) = describe(api, InstanceState::NotStarted, &request) {
        return PreBoot::Answer(answer);
    }
    let not_started = || ApiResponse::bad_request("the VM is not started yet");
    PreBoot::Answer(match request {
        ApiRequest::Action(ActionType::InstanceStart) => match BuiltVm::build(&api.vm) {
            Ok(built) => return PreBoot::Boot(Box::new(built)),
            Err(e) => ApiResponse::bad_request(&chain(&e)),
        },
        ApiRequest::LoadSnapshot(load) => {
            let source = RestoreSource {
                state: load.snapshot_path.into(),
                mem: load.mem_file_path.into(),
                mem_diffs: Vec::new(),
                track_dirty_pages: load.track_dirty_pages,
                network_overrides: load
                    .network_overrides
                    .into_iter()
                    .map(|o| (o.iface_id, o.host_dev_name))
                    .collect(),
                vsock_override: load.vsock_override.map(Into::into),
                // Clones of sealed disks go next to their sealed layers.
                disk_clone_dir: None,
                key_file: load.key_file.map(Into::into),
            };
            match BuiltVm::restore(&source) {
                Ok(built) => return PreBoot::Restored(Box::new(built), load.resume_vm),
                Err(e) => ApiResponse::bad_request(&chain(&e)),
            }
        }
        ApiRequest::Action(ActionType::FlushMetrics) => flush_metrics(),
        ApiRequest::PutLogger(config) => match crate::logger::configure(&config) {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::bad_request(&format!("cannot open the log: {e}")),
        },
        ApiRequest::PutMetrics(config) => {
            match crate::metrics::configure(std::path::Path::new(&config.metrics_path)) {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::bad_request(&format!("cannot open the metrics file: {e}")),
            }
        }
        ApiRequest::Action(_) | ApiRequest::PatchVm(_) | ApiRequest::CreateSnapshot(_) => {
            not_started()
        }
        other => match api.apply(&other) {
            Ok(true) => ApiResponse::no_content(),
            Ok(false) => not_started(),
            Err(e) => ApiResponse::from(e),
        },
    })
}

/// 204 on success; 400 for what the client asked wrongly or at the wrong time; 500 for what the
/// VMM failed to do.
fn respond(result: Result<()>) -> ApiResponse {
    match result {
        Ok(()) => ApiResponse::no_content(),
        Err(Error::Request(e)) => ApiResponse::from(e),
        Err(
            e @ (Error::NotPaused
            | Error::DirtyTrackingOff
            | Error::NoBalloon
            | Error::BalloonStatsOff
            | Error::UnknownDevice { .. }
            | Error::NoPowerButton
            | Error::Disk { .. }),
        ) => ApiResponse::bad_request(&chain(&e)),
        Err(e) => ApiResponse::internal_error(&chain(&e)),
    }
}

/// `FlushMetrics`: one metrics line now; refused while no metrics file is configured, as
/// Firecracker does (a 204 would say something was written).
fn flush_metrics() -> ApiResponse {
    match crate::metrics::flush() {
        Ok(true) => ApiResponse::no_content(),
        Ok(false) => ApiResponse::bad_request(
            "FlushMetrics: no metrics file is configured (PUT /metrics or --metrics-path)",
        ),
        Err(e) => ApiResponse::bad_request(&format!("FlushMetrics: cannot write the metrics: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_mistakes_are_400_the_vmms_failures_500() {
        let response = respond(Err(Error::DirtyTrackingOff));
        assert_eq!(response.status, 400);
        let body = response.body.unwrap_or_default();
        assert!(body.contains("track_dirty_pages"), "{body}");
        assert_eq!(respond(Err(Error::NotPaused)).status, 400);
        assert_eq!(respond(Err(Error::NoBalloon)).status, 400);
        assert_eq!(respond(Err(Error::EventChannelLost)).status, 500);
        assert_eq!(respond(Ok(())).status, 204);
    }

    #[test]
    fn flush_metrics_is_refused_not_faked() {
        let mut api = ApiConfig::new(vmm_api::VmConfig::default());
        let request = ApiRequest::Action(ActionType::FlushMetrics);
        let PreBoot::Answer(response) = handle_pre_boot(&mut api, request) else {
            panic!("FlushMetrics before boot must be answered");
        };
        assert_eq!(response.status, 400);
    }
}
