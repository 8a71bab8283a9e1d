//! Firecracker's `--config-file`: the API's bodies under their endpoint names, turned into the
//! configuration requests they stand for and applied onto an [`ApiConfig`].
//!
//! Only the translation lives here (no file is read, no logger or metrics file is opened), so
//! that it can be tested and fuzzed without a process; the `firecracker` front end reads the
//! file, configures `logger` and `metrics` itself and then calls [`FirecrackerConfigFile::apply`].
//!
//! ```
//! use vmm_api::{ApiConfig, FirecrackerConfigFile, VmConfig};
//!
//! let file = FirecrackerConfigFile::parse(
//!     br#"{"boot-source": {"kernel_image_path": "/k"},
//!          "machine-config": {"vcpu_count": 2, "mem_size_mib": 128}}"#,
//! )
//! .unwrap();
//! let mut api = ApiConfig::new(VmConfig::default());
//! file.apply(&mut api).unwrap();
//! assert_eq!(api.vm.vcpus, 2);
//! ```

use serde::{Deserialize, Serialize};

use crate::apply::ApiConfig;
use crate::types::{
    ApiRequest, Balloon, BootSource, Drive, EntropyDevice, Logger, MachineConfig, Metrics,
    NetworkInterface, Vsock,
};
use crate::ApiError;

/// Why a config file was refused. The `Display` texts are what the `firecracker` front end
/// prints after `config file PATH: `.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Not JSON, or not of the config file's shape (unknown keys, wrong types).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// An `mmds-config` section.
    #[error("mmds-config: the microVM metadata service (MMDS) is not supported")]
    Mmds,
    /// No `boot-source` section.
    #[error("boot-source is required")]
    NoBootSource,
    /// A section the API would refuse as a request.
    #[error("{0}")]
    Request(#[from] ApiError),
}

/// Firecracker's `--config-file`, as parsed: each section is the body of the API request of the
/// same name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerConfigFile {
    /// `PUT /boot-source` (required by [`FirecrackerConfigFile::apply`]).
    #[serde(rename = "boot-source", skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
    /// `PUT /machine-config`.
    #[serde(rename = "machine-config", skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<MachineConfig>,
    /// `PUT /drives/{id}`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<Vec<Drive>>,
    /// `PUT /network-interfaces/{id}`, in order.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    /// `PUT /vsock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// `PUT /entropy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// `PUT /balloon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// `PUT /logger`: applied by the caller, before the rest (so that what follows is logged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// `PUT /metrics`: applied by the caller, before the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// MMDS settings: refused by [`FirecrackerConfigFile::parse`] (kept to name the section in
    /// the error instead of calling it an unknown key).
    #[serde(rename = "mmds-config", skip_serializing_if = "Option::is_none")]
    pub mmds_config: Option<serde_json::Value>,
}

impl FirecrackerConfigFile {
    /// Parses a config file's bytes; refuses an `mmds-config` section.
    pub fn parse(bytes: &[u8]) -> Result<FirecrackerConfigFile, ConfigFileError> {
        let file: FirecrackerConfigFile = serde_json::from_slice(bytes)?;
        if file.mmds_config.is_some() {
            return Err(ConfigFileError::Mmds);
        }
        Ok(file)
    }

    /// The configuration requests the file stands for, in the order Firecracker applies them:
    /// boot source, machine, drives, network interfaces, vsock, entropy, balloon (`logger` and
    /// `metrics` are the caller's).
    pub fn requests(&self) -> Result<Vec<ApiRequest>, ConfigFileError> {
        let boot = self
            .boot_source
            .clone()
            .ok_or(ConfigFileError::NoBootSource)?;
        let mut requests = vec![ApiRequest::PutBootSource(boot)];
        requests.extend(
            self.machine_config
                .clone()
                .map(ApiRequest::PutMachineConfig),
        );
        requests.extend(
            self.drives
                .iter()
                .flatten()
                .cloned()
                .map(ApiRequest::PutDrive),
        );
        requests.extend(
            self.network_interfaces
                .iter()
                .flatten()
                .cloned()
                .map(ApiRequest::PutNetworkInterface),
        );
        requests.extend(self.vsock.clone().map(ApiRequest::PutVsock));
        requests.extend(self.entropy.clone().map(ApiRequest::PutEntropy));
        requests.extend(self.balloon.clone().map(ApiRequest::PutBalloon));
        Ok(requests)
    }

    /// Applies [`FirecrackerConfigFile::requests`] onto `api`, stopping at the first refusal
    /// (the requests before it stay applied, as they would through the API).
    pub fn apply(&self, api: &mut ApiConfig) -> Result<(), ConfigFileError> {
        for request in self.requests()? {
            api.apply(&request)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmConfig;

    #[test]
    fn a_config_file_configures_every_device() {
        let file = FirecrackerConfigFile::parse(
            br#"{
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": null},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
              "drives": [
                {"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false},
                {"drive_id": "drive_0", "path_on_host": "/p0", "is_root_device": false, "is_read_only": false}
              ],
              "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}],
              "vsock": {"guest_cid": 3, "uds_path": "/v.sock"},
              "entropy": {},
              "balloon": {"amount_mib": 0, "deflate_on_oom": true},
              "logger": {"level": "Debug"},
              "metrics": {"metrics_path": "/m"}
            }"#,
        )
        .unwrap();
        assert_eq!(file.requests().unwrap().len(), 8);
        let mut api = ApiConfig::new(VmConfig::default());
        file.apply(&mut api).unwrap();
        assert_eq!(api.vm.kernel.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(api.vm.vcpus, 2);
        assert_eq!(api.vm.disk.len(), 2);
        assert_eq!(api.vm.disk[1].id.as_deref(), Some("drive_0"));
        assert_eq!(api.iface_ids, ["eth0"]);
        assert!(api.vm.rng && api.vm.vsock.is_some() && api.vm.balloon.is_some());
        let text = serde_json::to_string(&file).unwrap();
        assert_eq!(FirecrackerConfigFile::parse(text.as_bytes()).unwrap(), file);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |text: &str| {
            FirecrackerConfigFile::parse(text.as_bytes())
                .and_then(|file| file.apply(&mut ApiConfig::default()))
                .unwrap_err()
        };
        let mmds = err(r#"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {}}"#);
        assert!(matches!(mmds, ConfigFileError::Mmds), "{mmds}");
        assert!(mmds.to_string().contains("MMDS"));
        let no_boot = err(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1}}"#);
        assert!(
            matches!(no_boot, ConfigFileError::NoBootSource),
            "{no_boot}"
        );
        assert!(no_boot.to_string().contains("boot-source"));
        assert!(matches!(err(r#"{"boot": {}}"#), ConfigFileError::Json(_)));
        let vcpus = err(r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 0, "mem_size_mib": 1}}"#);
        assert!(matches!(vcpus, ConfigFileError::Request(_)), "{vcpus}");
    }
}
