//! The plugins' log, written the way Calico's CNI plugin writes it (enabled by the `cni-log`
//! feature; the binaries turn it on):
//!
//! ```text
//! 2026-12-02 14:05:31.482 [ERROR][51234] cni-plugin/skel.rs 120: CNI ADD failed: cannot enter the pod network namespace ContainerID="3f1c…" Namespace="default" Pod="web-0" WorkloadEndpoint="node--a-k8s-web--0-eth0" code=4 details="…"
//! ```
//!
//! Local timestamp to the millisecond, level, pid, component/file line, message, then the fields
//! of the event and of its enclosing spans sorted by name (the verb's span carries the pod's
//! identity, so every line of an invocation names it). Lines go to stderr and, with
//! `log_file_path`, to that file, rotated by size (see [`file`]).
//!
//! Only events from this workspace's crates are written: kube and hyper trace requests at debug
//! level, and nothing of theirs has to be vetted for credentials. stdin is never a field.

mod file;
mod line;

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use super::NetConf;
use line::Fields;

/// Calico's rotation defaults (its CNI plugin's `ConfigureLogging`).
pub const DEFAULT_MAX_SIZE_MB: u64 = 100;
pub const DEFAULT_MAX_AGE_DAYS: u64 = 30;
pub const DEFAULT_MAX_COUNT: u64 = 10;

/// What the netconf asks of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub level: Level,
    pub path: Option<PathBuf>,
    pub max_size_mb: u64,
    pub max_age_days: u64,
    /// Rotated files kept besides the current one (lumberjack's MaxBackups).
    pub max_count: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            level: Level::INFO,
            path: None,
            max_size_mb: DEFAULT_MAX_SIZE_MB,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            max_count: DEFAULT_MAX_COUNT,
        }
    }
}

impl Settings {
    /// Calico's reading: `debug`, `info` and `error` (any case) are levels, anything else is
    /// info; a limit of 0 is the default.
    pub fn from_conf(conf: &NetConf) -> Settings {
        let level = match conf
            .log_level
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("debug") => Level::DEBUG,
            Some("error") => Level::ERROR,
            _ => Level::INFO,
        };
        let or = |v: u64, default: u64| if v == 0 { default } else { v };
        Settings {
            level,
            path: conf.log_file_path.clone(),
            max_size_mb: or(conf.log_file_max_size, DEFAULT_MAX_SIZE_MB),
            max_age_days: or(conf.log_file_max_age, DEFAULT_MAX_AGE_DAYS),
            max_count: or(conf.log_file_max_count, DEFAULT_MAX_COUNT),
        }
    }
}

/// Install the process-wide logger; later calls change nothing. `component` is Calico's name for
/// the program (`cni-plugin`, `ipam`), written before the source file name.
pub fn init(component: &'static str, settings: &Settings) {
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let (file, open_error) = match &settings.path {
        Some(path) => match file::open(path, settings) {
            Ok(f) => (Some(Mutex::new(f)), None),
            Err(e) => (None, Some(format!("{}: {e}", path.display()))),
        },
        None => (None, None),
    };
    let layer = CalicoLines {
        component,
        max: settings.level,
        file,
    };
    let installed =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).is_ok();
    if installed && let Some(e) = open_error {
        tracing::warn!(
            error = e.as_str(),
            "cannot open the log file, logging to stderr only"
        );
    }
}

thread_local! {
    /// The component this thread's lines are written under, when not the process's.
    static COMPONENT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Run `f` with this thread's lines written under `component` rather than the component the
/// logger was installed with: calico-cni runs calico-ipam's verbs in its own process, and their
/// lines read `ipam/...` as calico-ipam's own do. Restored when `f` returns or unwinds.
pub fn as_component<R>(component: &'static str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPONENT.set(self.0);
        }
    }
    let _restore = Restore(COMPONENT.replace(Some(component)));
    f()
}

/// True for events of this workspace's crates.
fn ours(target: &str) -> bool {
    ["libipam", "calico_cni", "calico_ipam"]
        .iter()
        .any(|c| target.starts_with(c))
}

/// The layer that formats and writes lines.
struct CalicoLines {
    component: &'static str,
    max: Level,
    file: Option<Mutex<file::Appender>>,
}

impl<S> Layer<S> for CalicoLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        // Spans are always recorded: their fields label the events below them at any level.
        ours(meta.target()) && (meta.is_span() || *meta.level() <= self.max)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    fields.extend(f);
                }
            }
        }
        event.record(&mut fields);
        let text = line::format(
            chrono::Local::now(),
            *event.metadata().level(),
            std::process::id(),
            COMPONENT.get().unwrap_or(self.component),
            event.metadata(),
            &fields,
        );
        // A log that cannot be written must not fail the verb: errors are dropped.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        if let Some(file) = &self.file
            && let Ok(mut f) = file.lock()
        {
            let _ = f.write_all(text.as_bytes()).and_then(|()| f.flush());
        }
    }
}
