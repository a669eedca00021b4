//! Test hooks of the local store, compiled into debug builds only (release builds get empty
//! functions). They let the crash tests stop a writer at every step of a commit:
//!
//! - `CALICO_IPAM_CRASH_AT=<point>[:<n>]` kills the process with SIGKILL the `n`-th time
//!   (default: the first) it reaches `<point>`; `CALICO_IPAM_STOP_AT` stops it with SIGSTOP
//!   instead, so a test can look at a live writer and then continue or kill it;
//! - `CALICO_IPAM_SYNC_LOG=<file>` appends `<journal id> <length>` to `<file>` each time a
//!   journal is durable up to `<length>`: what a power loss at that moment would keep;
//! - `CALICO_IPAM_COMPACT_BYTES=<n>` compacts the journal once it is longer than `n` bytes.
//!
//! The points, in the order a commit passes them: `before-append`, `mid-append` (half the
//! record written), `after-append`, `after-sync`, `after-tmp-write` (an object's temporary
//! file written, not yet renamed; once per object), `mid-apply` (after the first object),
//! `after-apply`, `after-view-state`; and when compacting `compact-written`,
//! `compact-renamed`.

#[cfg(debug_assertions)]
mod imp {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};

    use nix::sys::signal::{Signal, raise};

    fn matches(var: &str, point: &str, seen: &AtomicU32) -> bool {
        let Ok(spec) = std::env::var(var) else {
            return false;
        };
        let (name, nth) = match spec.split_once(':') {
            Some((name, n)) => (name, n.parse::<u32>().unwrap_or(1)),
            None => (spec.as_str(), 1),
        };
        name == point && seen.fetch_add(1, Ordering::Relaxed) + 1 == nth
    }

    pub fn point(name: &str) {
        static KILL: AtomicU32 = AtomicU32::new(0);
        static STOP: AtomicU32 = AtomicU32::new(0);
        if matches("CALICO_IPAM_CRASH_AT", name, &KILL) {
            let _ = raise(Signal::SIGKILL);
        }
        if matches("CALICO_IPAM_STOP_AT", name, &STOP) {
            let _ = raise(Signal::SIGSTOP);
        }
    }

    pub fn synced(id: &str, len: u64) {
        if let Ok(path) = std::env::var("CALICO_IPAM_SYNC_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = writeln!(f, "{id} {len}");
        }
    }

    pub fn compact_bytes() -> Option<u64> {
        std::env::var("CALICO_IPAM_COMPACT_BYTES")
            .ok()?
            .parse()
            .ok()
    }
}

#[cfg(not(debug_assertions))]
mod imp {
    #[inline(always)]
    pub fn point(_: &str) {}
    #[inline(always)]
    pub fn synced(_: &str, _: u64) {}
    #[inline(always)]
    pub fn compact_bytes() -> Option<u64> {
        None
    }
}

pub(super) use imp::{compact_bytes, point, synced};
