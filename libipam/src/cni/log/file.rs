//! The log file, rotated as Calico's (lumberjack/timberjack) is: when the current file reaches
//! `log_file_max_size` MB it is renamed aside, at most `log_file_max_count` rotated files are kept
//! and rotated files older than `log_file_max_age` days are removed.
//!
//! Rotation is `rolling-file`'s: `path` is the current file and `path.1` … `path.N` the older
//! ones, newest first. It reads the current file's size when opening it, which matters here: every
//! plugin invocation is a new process that writes a handful of lines. Two invocations rotating at
//! the same instant can each rename once (one rotation too many, nothing lost but a file's worth
//! of age); Calico's Go plugin shares that race.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};

use super::Settings;

pub(super) type Appender = BasicRollingFileAppender;

const MB: u64 = 1024 * 1024;

/// Open (creating its directory and itself) the file named by `path`, and drop rotated files past
/// the age limit.
pub(super) fn open(path: &Path, settings: &Settings) -> io::Result<Appender> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let condition = RollingConditionBasic::new().max_size(settings.max_size_mb.saturating_mul(MB));
    let keep = usize::try_from(settings.max_count).unwrap_or(usize::MAX);
    let appender = BasicRollingFileAppender::new(path, condition, keep)?;
    remove_older_than(
        path,
        keep,
        Duration::from_secs(settings.max_age_days.saturating_mul(86_400)),
    );
    Ok(appender)
}

/// `path.1` … `path.keep` whose last write is older than `age` are removed (the age limit;
/// rolling-file handles the count).
fn remove_older_than(path: &Path, keep: usize, age: Duration) {
    let Some(cutoff) = SystemTime::now().checked_sub(age) else {
        return;
    };
    for n in 1..=keep {
        let rotated = rotated_name(path, n);
        let Ok(modified) = std::fs::metadata(&rotated).and_then(|m| m.modified()) else {
            // Numbering is contiguous: the first gap ends the list.
            break;
        };
        if modified < cutoff {
            let _ = std::fs::remove_file(&rotated);
        }
    }
}

/// rolling-file's name for the `n`th rotated file.
fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_rotated_files_go_recent_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cni.log");
        for n in 1..=3 {
            std::fs::write(rotated_name(&path, n), "x\n").expect("write");
        }
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        let f = std::fs::File::options()
            .write(true)
            .open(rotated_name(&path, 3))
            .expect("open");
        f.set_modified(old).expect("set mtime");
        remove_older_than(&path, 10, Duration::from_secs(2 * 86_400));
        assert!(rotated_name(&path, 1).exists());
        assert!(rotated_name(&path, 2).exists());
        assert!(!rotated_name(&path, 3).exists());
    }
}
