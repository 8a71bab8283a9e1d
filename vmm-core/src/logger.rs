//! The process's `log` sink: `vmm`'s short stderr lines (`vmm: message`), or Firecracker's
//! line format (`<timestamp> [<id>:<thread>:<LEVEL>:<file>:<line>] message`, level and origin
//! optional) once the `firecracker` mode or `PUT /logger` asks for it, written to stdout or to
//! a file or named pipe opened non-blocking.
//!
//! A full pipe or a missing reader never blocks a thread that logs: the record is dropped and
//! counted in the `logger` metrics (`missed_log_count`).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use vmm_api::LogLevel;

/// How lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `vmm: message` on stderr, warnings and errors only (the `vmm` command line).
    Vmm,
    /// Firecracker's format on stdout (or the configured file), level `Info` by default.
    Firecracker,
}

/// Where lines go and what they show.
struct Sink {
    style: LogStyle,
    file: Option<File>,
    instance_id: String,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct VmmLogger {
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<VmmLogger> = OnceLock::new();

fn logger() -> &'static VmmLogger {
    LOGGER.get_or_init(|| VmmLogger {
        sink: Mutex::new(Sink {
            style: LogStyle::Vmm,
            file: None,
            instance_id: vmm_api::DEFAULT_INSTANCE_ID.to_string(),
            show_level: false,
            show_origin: false,
            module: None,
        }),
    })
}

/// Installs the process's logger with `style`; the first call wins (later ones only change the
/// style). `instance_id` names the VM in Firecracker's lines.
pub fn init(style: LogStyle, instance_id: &str) {
    let logger = logger();
    {
        let mut sink = crate::lock(&logger.sink);
        sink.style = style;
        sink.instance_id = instance_id.to_string();
    }
    let _ = log::set_logger(logger);
    log::set_max_level(match style {
        LogStyle::Vmm => LevelFilter::Warn,
        LogStyle::Firecracker => LevelFilter::Info,
    });
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::Off,
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warning => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    }
}

/// Applies `PUT /logger` (or the `--log-path`/`--level`/`--show-*` flags): switches to
/// Firecracker's format; fields left out keep their value, the level defaults to `Info`.
pub fn configure(config: &vmm_api::Logger) -> io::Result<()> {
    let file = config
        .log_path
        .as_deref()
        .map(|path| crate::output_file::open_nonblocking(Path::new(path)))
        .transpose()?;
    let logger = logger();
    {
        let mut sink = crate::lock(&logger.sink);
        sink.style = LogStyle::Firecracker;
        if let Some(file) = file {
            sink.file = Some(file);
        }
        if let Some(show) = config.show_level {
            sink.show_level = show;
        }
        if let Some(show) = config.show_log_origin {
            sink.show_origin = show;
        }
        if let Some(module) = &config.module {
            sink.module = Some(module.clone());
        }
    }
    let _ = log::set_logger(logger);
    log::set_max_level(level_filter(config.level.unwrap_or_default()));
    Ok(())
}

/// Local wall-clock time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`.
///
/// The time zone is the C library's: `TZ`, else /etc/localtime. In a jail with neither (no
/// environment, no /etc) that is UTC, read once and never an error.
fn timestamp() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads one time_t and writes one tm, both valid for the call.
    unsafe { libc::localtime_r(&now.tv_sec, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.tv_nsec
    )
}

impl Sink {
    fn line(&self, record: &Record) -> String {
        match self.style {
            LogStyle::Vmm => format!("vmm: {}\n", record.args()),
            LogStyle::Firecracker => {
                let thread = std::thread::current();
                let mut tag = format!("{}:{}", self.instance_id, thread.name().unwrap_or("-"));
                if self.show_level {
                    tag.push(':');
                    tag.push_str(record.level().as_str());
                }
                if self.show_origin {
                    let line = record.line().map_or("?".to_string(), |l| l.to_string());
                    tag.push_str(&format!(":{}:{line}", record.file().unwrap_or("?")));
                }
                format!("{} [{tag}] {}\n", timestamp(), record.args())
            }
        }
    }

    fn wants(&self, record: &Record) -> bool {
        if self.style == LogStyle::Vmm && record.level() > Level::Warn {
            return false;
        }
        match (&self.module, record.module_path()) {
            (Some(module), Some(path)) => path.starts_with(module.as_str()),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

impl Log for VmmLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = crate::lock(&self.sink);
        if !sink.wants(record) {
            return;
        }
        let line = sink.line(record);
        // One write per line: lines from several threads never interleave in a pipe.
        let style = sink.style;
        let written = match (&mut sink.file, style) {
            (Some(file), _) => file.write_all(line.as_bytes()),
            (None, LogStyle::Vmm) => io::stderr().write_all(line.as_bytes()),
            (None, LogStyle::Firecracker) => io::stdout().write_all(line.as_bytes()),
        };
        if written.is_err() {
            crate::metrics::metrics().logger.missed_log_count.inc();
        }
    }

    fn flush(&self) {
        if let Some(file) = &mut crate::lock(&self.sink).file {
            let _ = file.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_line(sink: &Sink, level: Level, module: &str) -> Option<String> {
        let args = format_args!("hello");
        let record = Record::builder()
            .level(level)
            .module_path(Some(module))
            .file(Some("src/x.rs"))
            .line(Some(7))
            .args(args)
            .build();
        sink.wants(&record).then(|| sink.line(&record))
    }

    fn sink(style: LogStyle) -> Sink {
        Sink {
            style,
            file: None,
            instance_id: "vm-1".into(),
            show_level: true,
            show_origin: true,
            module: None,
        }
    }

    #[test]
    fn firecracker_lines_carry_id_thread_level_and_origin() {
        let line = record_line(&sink(LogStyle::Firecracker), Level::Info, "vmm_core::x").unwrap();
        let thread = std::thread::current().name().unwrap_or("-").to_string();
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(time.len(), "2026-12-04T14:55:01.123456789".len(), "{line}");
        assert_eq!(&time[10..11], "T");
        assert_eq!(rest, format!("[vm-1:{thread}:INFO:src/x.rs:7] hello\n"));
    }

    #[test]
    fn the_module_filter_and_the_vmm_style_drop_records() {
        let mut fc = sink(LogStyle::Firecracker);
        fc.module = Some("vmm_devices".into());
        assert!(record_line(&fc, Level::Error, "vmm_core::x").is_none());
        assert!(record_line(&fc, Level::Error, "vmm_devices::virtio").is_some());
        let vmm = sink(LogStyle::Vmm);
        assert!(record_line(&vmm, Level::Info, "vmm_core").is_none());
        assert_eq!(
            record_line(&vmm, Level::Warn, "vmm_core").unwrap(),
            "vmm: hello\n"
        );
    }
}
