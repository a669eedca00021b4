//! One surface fuzzed in this process: run every seed, then mutants of the corpus until the
//! time is up, stopping at the first finding.
//!
//! Coverage-free, but outcome-guided: a mutant whose outcome signature (the target's summary
//! of what happened, e.g. "ok" or an error code and message prefix) was never seen before
//! joins the corpus, so later mutants start from inputs that got further.
//!
//! Findings: a panic is caught and reported (exit [`EXIT_PANIC`]); an input that uses more CPU
//! time than the hang bound is reported by a watchdog thread (exit [`EXIT_HANG`]); anything that
//! kills the process (abort, stack overflow, allocation failure under the supervisor's
//! RLIMIT_AS) is seen by the supervisor. Before each execution the input is written to the
//! "current input" file, so the supervisor can save the input that killed us.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::mutate::Mutator;
use crate::surfaces::Surface;

/// Exit status of a run that caught a panic.
pub const EXIT_PANIC: i32 = 3;
/// Exit status of a run whose watchdog saw one input run past the hang bound.
pub const EXIT_HANG: i32 = 4;

/// Discovered inputs kept in memory at most (the seeds always stay).
const MAX_DISCOVERED: usize = 4096;
/// Discovered inputs larger than this are not kept (they slow every later mutant down).
const MAX_KEPT_LEN: usize = 64 * 1024;

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Stats {
    pub execs: u64,
    pub seeds: usize,
    pub discovered: usize,
    pub elapsed: Duration,
    /// Inputs that panicked (with `keep_going`, all of them; else at most one).
    pub panics: u64,
    /// One saved input per distinct panic location, with its message.
    pub saved: Vec<(PathBuf, String)>,
}

/// How to run.
pub struct RunConfig<'a> {
    pub seconds: u64,
    pub seed: u64,
    pub hang: Duration,
    /// The "current input" file for the supervisor, if any.
    pub current: Option<&'a Path>,
    /// Where panicking inputs are saved (one per distinct panic location).
    pub findings: Option<&'a Path>,
    /// Go on after a panic (a long run reports every distinct finding, not just the first).
    pub keep_going: bool,
}

/// Reads every non-hidden regular file of `dir`, sorted by name.
pub fn load_corpus(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        files.push((name, std::fs::read(entry.path())?));
    }
    files.sort();
    Ok(files)
}

/// The last panic's message and location, recorded by our panic hook.
fn last_panic() -> &'static Mutex<Option<String>> {
    static LAST: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(None))
}

/// Replaces the default panic hook (which prints every caught panic) with one that records it.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        if let Ok(mut last) = last_panic().lock() {
            *last = Some(msg);
        }
    }));
}

/// Runs one input; `Err` carries the panic message.
pub fn execute(target: &mut dyn FnMut(&[u8]) -> String, input: &[u8]) -> Result<String, String> {
    panic::catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|payload| {
        last_panic()
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// The "current input" file: `[execs: u64 LE][len: u64 LE][input]`, rewritten in place before
/// each execution (one `pwrite`, no fsync: the supervisor reads it after we die, and the
/// page cache survives a process death).
struct Current {
    file: File,
    buf: Vec<u8>,
}

impl Current {
    fn record(&mut self, execs: u64, input: &[u8]) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&execs.to_le_bytes());
        self.buf
            .extend_from_slice(&(input.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(input);
        self.file.write_all_at(&self.buf, 0)
    }
}

/// Decodes a "current input" file: the execution count and the input being run.
pub fn read_current(path: &Path) -> Option<(u64, Vec<u8>)> {
    let data = std::fs::read(path).ok()?;
    let execs = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let len = usize::try_from(u64::from_le_bytes(data.get(8..16)?.try_into().ok()?)).ok()?;
    Some((execs, data.get(16..16 + len)?.to_vec()))
}

/// Which input is running: its execution number + 1, or 0 between inputs.
struct Watch {
    running: AtomicU64,
}

/// How much longer than the CPU bound an input may sit without using CPU (blocked) before it
/// counts as hung too.
const BLOCKED_FACTOR: u32 = 30;

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default()
}

/// The hang bound is CPU time, so a starved process on a loaded machine is not mistaken for a
/// hung one; an input that blocks without using CPU is caught at `BLOCKED_FACTOR` times the
/// bound of wall-clock time.
fn spawn_watchdog(watch: Arc<Watch>, hang: Duration) {
    std::thread::spawn(move || {
        let mut current = 0;
        let mut cpu_start = cpu_time();
        let mut wall_start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let running = watch.running.load(Ordering::Acquire);
            if running != current {
                current = running;
                cpu_start = cpu_time();
                wall_start = Instant::now();
                continue;
            }
            if running == 0 {
                continue;
            }
            let cpu = cpu_time().saturating_sub(cpu_start);
            let wall = wall_start.elapsed();
            if cpu > hang || wall > hang * BLOCKED_FACTOR {
                eprintln!(
                    "FINDING hang: one input used {:.1} s of CPU in {:.1} s (bound: {} s of CPU, or {} s blocked)",
                    cpu.as_secs_f64(),
                    wall.as_secs_f64(),
                    hang.as_secs(),
                    (hang * BLOCKED_FACTOR).as_secs()
                );
                std::process::exit(EXIT_HANG);
            }
        }
    });
}

/// A stable name for an input.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Saves a panicking input and its message as `<dir>/panic-<hash>` and `.txt`.
fn save_panic(dir: &Path, input: &[u8], msg: &str) -> PathBuf {
    let path = dir.join(format!("panic-{:016x}", fnv1a(input)));
    let saved = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, input))
        .and_then(|()| std::fs::write(path.with_extension("txt"), format!("{msg}\n")));
    if let Err(e) = saved {
        eprintln!("cannot save {}: {e}", path.display());
    }
    path
}

/// Fuzzes `surface` from `corpus` for `cfg.seconds`, stopping at the first panic unless
/// `cfg.keep_going`. Panicking inputs are saved under `cfg.findings`; `Stats::panics` counts
/// them.
pub fn run(surface: &Surface, corpus: Vec<Vec<u8>>, cfg: &RunConfig) -> Stats {
    install_panic_hook();
    let mut target = (surface.make)();
    let mut current = cfg.current.map(|p| Current {
        file: File::create(p).unwrap_or_else(|e| {
            eprintln!("cannot create {}: {e}", p.display());
            std::process::exit(2)
        }),
        buf: Vec::new(),
    });
    let watch = Arc::new(Watch {
        running: AtomicU64::new(0),
    });
    spawn_watchdog(watch.clone(), cfg.hang);

    let seeds = corpus.len();
    let mut mutator = Mutator::new(cfg.seed, surface.tokens, &corpus);
    let mut pool = corpus;
    let mut signatures: HashSet<String> = HashSet::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(cfg.seconds);
    let mut execs: u64 = 0;
    let mut panics: u64 = 0;
    let mut saved: Vec<(PathBuf, String)> = Vec::new();
    let mut places: HashSet<String> = HashSet::new();
    loop {
        let input = if (execs as usize) < seeds {
            pool[execs as usize].clone()
        } else {
            if Instant::now() >= deadline {
                break;
            }
            let base = mutator.rng().usize(..pool.len());
            mutator.mutate(&pool[base], &pool)
        };
        if let Some(c) = current.as_mut()
            && let Err(e) = c.record(execs, &input)
        {
            eprintln!("cannot write the current input: {e}");
            std::process::exit(2);
        }
        watch.running.store(execs + 1, Ordering::Release);
        let outcome = execute(&mut *target, &input);
        watch.running.store(0, Ordering::Release);
        execs += 1;
        match outcome {
            Ok(sig) => {
                if signatures.insert(sig)
                    && (execs as usize) > seeds
                    && pool.len() < seeds + MAX_DISCOVERED
                    && input.len() <= MAX_KEPT_LEN
                {
                    pool.push(input);
                }
            }
            Err(msg) => {
                panics += 1;
                // "panicked at file:line:col:" says where; one input per place is enough.
                let place = msg.lines().next().unwrap_or_default().to_string();
                if places.insert(place) {
                    let path = match cfg.findings {
                        Some(dir) => save_panic(dir, &input, &msg),
                        None => PathBuf::new(),
                    };
                    saved.push((path, msg));
                }
                if !cfg.keep_going {
                    break;
                }
            }
        }
    }
    Stats {
        execs,
        seeds,
        discovered: pool.len() - seeds,
        elapsed: start.elapsed(),
        panics,
        saved,
    }
}

/// Shortens an error message into an outcome signature: its first words, digits dropped (so
/// that "line 3" and "line 4" are one outcome).
pub fn signature(prefix: &str, detail: &str) -> String {
    let short: String = detail
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(48)
        .collect();
    format!("{prefix}:{short}")
}
