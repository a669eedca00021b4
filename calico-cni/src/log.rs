//! Logging to stderr or Calico's `log_file_path`. stdout is the CNI protocol and stdin may hold
//! credentials: neither is ever written here.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Severity, Calico's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

struct Sink {
    min: Level,
    file: Option<Mutex<std::fs::File>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Configure once from the netconf's `log_level` and `log_file_path`. Without a file, only
/// warnings and errors reach stderr (the runtime copies our stderr into its own log).
pub fn init(level: Option<&str>, file: Option<&Path>) {
    let min = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("debug") => Level::Debug,
        Some("info") => Level::Info,
        Some("error") => Level::Error,
        _ => Level::Warn,
    };
    let file = file.and_then(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    let _ = SINK.set(Sink { min, file });
}

/// Write one line if `level` passes the configured minimum.
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let sink = SINK.get_or_init(|| Sink {
        min: Level::Warn,
        file: None,
    });
    if level < sink.min {
        return;
    }
    let line = format!("calico-cni {:?} [{}] {}\n", level, std::process::id(), msg);
    match &sink.file {
        Some(f) => {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// `log!(Info, "...", args)`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, format_args!($($arg)*))
    };
}
