//! One log line in Calico's format (its `logrusr.Formatter`):
//! `2006-01-02 15:04:05.000 [LEVEL][pid] component/file.rs line: message key=value ...`.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, TimeZone};
use tracing::field::{Field, Visit};
use tracing::{Level, Metadata};

/// The message and the named fields of an event and its spans. Strings are kept quoted, as
/// Calico quotes them; numbers and other values are written bare.
#[derive(Debug, Default, Clone)]
pub(super) struct Fields {
    message: String,
    values: BTreeMap<&'static str, String>,
}

impl Fields {
    /// Add `other`'s fields, replacing same-named ones (inner spans and the event win).
    pub(super) fn extend(&mut self, other: &Fields) {
        for (k, v) in &other.values {
            self.values.insert(k, v.clone());
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.values.insert(field.name(), format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.values.insert(field.name(), text);
        }
    }
}

/// Calico's level names (logrus's, upper-cased).
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// The whole line, newline included.
pub(super) fn format<Tz: TimeZone>(
    now: DateTime<Tz>,
    level: Level,
    pid: u32,
    component: &str,
    meta: &Metadata<'_>,
    fields: &Fields,
) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let file = meta
        .file()
        .and_then(|f| f.rsplit('/').next())
        .unwrap_or("<nil>");
    let mut out = format!(
        "{} [{}][{}] {}/{} ",
        now.format("%Y-%m-%d %H:%M:%S%.3f"),
        level_name(level),
        pid,
        component,
        file
    );
    match meta.line() {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("<nil>"),
    }
    out.push_str(": ");
    // One event is one line, whatever the message holds.
    out.push_str(&fields.message.replace('\n', " "));
    for (k, v) in &fields.values {
        let _ = write!(out, " {k}={}", v.replace('\n', " "));
    }
    out.push('\n');
    out
}
