//! `calico-fuzz`: runs the fuzz surfaces.
//!
//! ```text
//! calico-fuzz all --seconds N [--corpus DIR] [--findings DIR] [--mem-mb M] [--hang-secs H]
//!                 [--only a,b] [--seed S]
//! calico-fuzz run --surface NAME --seconds N --corpus DIR [--current FILE] [--mem-mb M]
//!                 [--hang-secs H] [--seed S]
//! calico-fuzz replay --surface NAME FILE...
//! calico-fuzz list
//! ```
//! `all` is the supervisor: it splits the time over the surfaces and runs each in a child
//! process (`run`) whose address space is capped at M MiB (RLIMIT_AS) and whose inputs may each
//! take H seconds. A panic, a broken oracle, an input running past H, an abort, a stack
//! overflow or an allocation failing under the cap is a finding: the input is saved under the
//! findings directory and the exit status is 1.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use calico_fuzz::engine::{self, EXIT_HANG, EXIT_PANIC, RunConfig};
use calico_fuzz::surfaces::{self, Surface};

/// Default address-space cap of a surface process.
const DEFAULT_MEM_MB: u64 = 1024;
/// Default bound on one input's run time.
const DEFAULT_HANG_SECS: u64 = 10;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first() else {
        return usage();
    };
    let opts = match Opts::parse(&argv[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("calico-fuzz: {e}");
            return usage();
        }
    };
    let result = match cmd.as_str() {
        "all" => supervise(&opts),
        "run" => run_one(&opts),
        "replay" => replay(&opts),
        "list" => {
            for s in surfaces::ALL {
                println!(
                    "{:<14} {}",
                    s.name,
                    s.about.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => return usage(),
    };
    result.unwrap_or_else(|e| {
        eprintln!("calico-fuzz: {e}");
        ExitCode::from(2)
    })
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: calico-fuzz all --seconds N [--corpus DIR] [--findings DIR] [--mem-mb M] [--hang-secs H] [--only a,b] [--seed S]\n       calico-fuzz run --surface NAME --seconds N --corpus DIR [--current FILE] [--mem-mb M] [--hang-secs H] [--seed S]\n       calico-fuzz replay --surface NAME FILE...\n       calico-fuzz list"
    );
    ExitCode::from(2)
}

/// `--key value` options and positional files.
struct Opts {
    values: HashMap<String, String>,
    files: Vec<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut values = HashMap::new();
        let mut files = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                let v = it.next().ok_or(format!("--{key} needs a value"))?;
                values.insert(key.to_string(), v.clone());
            } else {
                files.push(PathBuf::from(a));
            }
        }
        Ok(Opts { values, files })
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key} {v:?} is not a number")),
        }
    }

    fn surface(&self) -> Result<&'static Surface, String> {
        let name = self.str("surface").ok_or("--surface is required")?;
        surfaces::find(name).ok_or_else(|| {
            let names: Vec<&str> = surfaces::ALL.iter().map(|s| s.name).collect();
            format!("unknown surface {name:?} (known: {})", names.join(", "))
        })
    }
}

/// A surface process: cap the address space, load the corpus, fuzz, report.
fn run_one(opts: &Opts) -> Result<ExitCode, String> {
    let surface = opts.surface()?;
    let mem_mb = opts.num("mem-mb", DEFAULT_MEM_MB)?;
    if mem_mb > 0 {
        let bytes = mem_mb * 1024 * 1024;
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, bytes, bytes)
            .map_err(|e| format!("setrlimit RLIMIT_AS: {e}"))?;
    }
    let dir = PathBuf::from(opts.str("corpus").ok_or("--corpus is required")?);
    let corpus: Vec<Vec<u8>> = engine::load_corpus(&dir)
        .map_err(|e| format!("corpus {}: {e}", dir.display()))?
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    if corpus.is_empty() {
        return Err(format!("corpus {} holds no input", dir.display()));
    }
    let current = opts.str("current").map(PathBuf::from);
    let findings = opts.str("findings").map(PathBuf::from);
    let cfg = RunConfig {
        seconds: opts.num("seconds", 10)?,
        seed: opts.num("seed", fastrand::u64(..))?,
        hang: Duration::from_secs(opts.num("hang-secs", DEFAULT_HANG_SECS)?),
        current: current.as_deref(),
        findings: findings.as_deref(),
        keep_going: opts.str("keep-going") == Some("true"),
    };
    let stats = engine::run(surface, corpus, &cfg);
    let saved: Vec<serde_json::Value> = stats
        .saved
        .iter()
        .map(|(p, m)| serde_json::json!({"path": p, "message": m}))
        .collect();
    println!(
        "STATS {}",
        serde_json::json!({
            "surface": surface.name,
            "execs": stats.execs,
            "seeds": stats.seeds,
            "discovered": stats.discovered,
            "seconds": stats.elapsed.as_secs_f64(),
            "seed": cfg.seed,
            "max_rss_kib": peak_rss_kib(),
            "panics": stats.panics,
            "saved": saved,
        })
    );
    if stats.panics == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    for (_, msg) in &stats.saved {
        eprintln!("FINDING panic: {msg}");
    }
    std::process::exit(EXIT_PANIC)
}

/// This process's peak resident set size.
fn peak_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss())
        .unwrap_or(0)
}

/// Runs files once each, in-process; non-zero if any panics.
fn replay(opts: &Opts) -> Result<ExitCode, String> {
    let surface = opts.surface()?;
    engine::install_panic_hook();
    let mut target = (surface.make)();
    let mut failed = 0;
    for f in &opts.files {
        let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        match engine::execute(&mut *target, &data) {
            Ok(sig) => println!("{}: ok ({sig})", f.display()),
            Err(msg) => {
                failed += 1;
                println!("{}: PANIC {msg}", f.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one surface's child process did.
struct Report {
    execs: u64,
    discovered: u64,
    seconds: f64,
    max_rss_kib: u64,
    result: String,
    /// Where the inputs of this surface's findings were saved.
    saved: Vec<PathBuf>,
}

fn supervise(opts: &Opts) -> Result<ExitCode, String> {
    let total = opts.num("seconds", 60)?;
    let corpus_root = PathBuf::from(opts.str("corpus").unwrap_or("testdata/fuzz"));
    let findings = PathBuf::from(opts.str("findings").unwrap_or("fuzz-findings"));
    let mem_mb = opts.num("mem-mb", DEFAULT_MEM_MB)?;
    let hang = opts.num("hang-secs", DEFAULT_HANG_SECS)?;
    let keep_going = opts.str("keep-going") == Some("true");
    let selected: Vec<&'static Surface> = match opts.str("only") {
        None => surfaces::ALL.iter().collect(),
        Some(list) => list
            .split(',')
            .map(|n| surfaces::find(n).ok_or(format!("unknown surface {n:?}")))
            .collect::<Result<_, _>>()?,
    };
    let share = (total / selected.len() as u64).max(1);
    let seed = opts.num("seed", fastrand::u64(..))?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    println!(
        "fuzzing {} surfaces for {share} s each (seed {seed}; address space <= {mem_mb} MiB, one input <= {hang} s of CPU)",
        selected.len()
    );
    let mut failed = 0;
    let mut total_execs = 0;
    println!(
        "{:<14} {:>10} {:>8} {:>6} {:>8}  result",
        "surface", "execs", "exec/s", "new", "peak MiB"
    );
    for (i, surface) in selected.iter().enumerate() {
        let r = supervise_one(
            &exe,
            surface,
            &corpus_root,
            &findings,
            share,
            mem_mb,
            hang,
            seed.wrapping_add(i as u64),
            keep_going,
        )?;
        let rate = if r.seconds > 0.0 {
            r.execs as f64 / r.seconds
        } else {
            0.0
        };
        println!(
            "{:<14} {:>10} {:>8.0} {:>6} {:>8}  {}",
            surface.name,
            r.execs,
            rate,
            r.discovered,
            r.max_rss_kib / 1024,
            r.result
        );
        total_execs += r.execs;
        if !r.result.starts_with("no finding") {
            failed += 1;
        }
        for p in &r.saved {
            println!("{:<14} input saved to {}", "", p.display());
        }
    }
    println!("{:<14} {:>10}", "total", total_execs);
    if failed == 0 {
        println!("result: no finding");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "result: {failed} surface(s) with a finding (inputs under {})",
            findings.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

#[allow(clippy::too_many_arguments)]
fn supervise_one(
    exe: &Path,
    surface: &Surface,
    corpus_root: &Path,
    findings: &Path,
    seconds: u64,
    mem_mb: u64,
    hang: u64,
    seed: u64,
    keep_going: bool,
) -> Result<Report, String> {
    let base = surfaces::scratch_base();
    let current = base.join(format!(
        "calico-fuzz-current-{}-{}",
        std::process::id(),
        surface.name
    ));
    let stderr_path = base.join(format!(
        "calico-fuzz-stderr-{}-{}",
        std::process::id(),
        surface.name
    ));
    let stderr_file = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let mut child = Command::new(exe)
        .args(["run", "--surface", surface.name, "--seconds"])
        .arg(seconds.to_string())
        .arg("--corpus")
        .arg(corpus_root.join(surface.name))
        .arg("--current")
        .arg(&current)
        .args([
            "--mem-mb",
            &mem_mb.to_string(),
            "--hang-secs",
            &hang.to_string(),
        ])
        .args(["--seed", &seed.to_string()])
        .arg("--findings")
        .arg(findings.join(surface.name))
        .args(["--keep-going", if keep_going { "true" } else { "false" }])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_file))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    // The child stops itself after `seconds`; past that plus its watchdog's wall-clock bound
    // (30 times the CPU bound) and a margin it is stuck somewhere the watchdog cannot see.
    let limit = Instant::now() + Duration::from_secs(seconds + hang * 30 + 60);
    let mut overran = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > limit => {
                overran = true;
                let _ = child.kill();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {}: {e}", surface.name)),
        }
    };
    let out = reader.join().unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    remove_scratch(pid);

    let stats: Option<serde_json::Value> = out
        .lines()
        .find_map(|l| l.strip_prefix("STATS "))
        .and_then(|j| serde_json::from_str(j).ok());
    let recorded = engine::read_current(&current);
    let _ = std::fs::remove_file(&current);
    let mut report = Report {
        execs: stats
            .as_ref()
            .and_then(|s| s["execs"].as_u64())
            .or(recorded.as_ref().map(|(n, _)| *n))
            .unwrap_or(0),
        discovered: stats
            .as_ref()
            .and_then(|s| s["discovered"].as_u64())
            .unwrap_or(0),
        seconds: stats
            .as_ref()
            .and_then(|s| s["seconds"].as_f64())
            .unwrap_or(seconds as f64),
        max_rss_kib: stats
            .as_ref()
            .and_then(|s| s["max_rss_kib"].as_u64())
            .unwrap_or(0),
        result: "no finding".into(),
        saved: Vec::new(),
    };
    use std::os::unix::process::ExitStatusExt;
    let finding = if overran {
        Some((
            "hang",
            format!(
                "the process overran its {seconds} s by {} s",
                hang * 30 + 60
            ),
        ))
    } else if status.success() {
        None
    } else if status.code() == Some(EXIT_PANIC) {
        // The child saved one input per panic location itself.
        let saved = stats
            .as_ref()
            .and_then(|s| s["saved"].as_array().cloned())
            .unwrap_or_default();
        let panics = stats
            .as_ref()
            .and_then(|s| s["panics"].as_u64())
            .unwrap_or(0);
        report.saved = saved
            .iter()
            .filter_map(|v| v["path"].as_str().map(PathBuf::from))
            .collect();
        let first = saved
            .first()
            .and_then(|v| v["message"].as_str())
            .map(|m| m.lines().collect::<Vec<_>>().join(" | "))
            .unwrap_or_else(|| finding_line(&stderr));
        report.result = format!(
            "FINDING panic: {panics} input(s) panicked at {} place(s); first: {first}",
            saved.len()
        );
        return Ok(report);
    } else if status.code() == Some(EXIT_HANG) {
        Some(("hang", finding_line(&stderr)))
    } else if let Some(sig) = status.signal() {
        let (kind, what) = if let Some(l) = stderr
            .lines()
            .find(|l| l.starts_with("memory allocation of"))
        {
            ("oom", format!("{l} (address space capped at {mem_mb} MiB)"))
        } else if let Some(l) = stderr.lines().find(|l| l.contains("overflowed its stack")) {
            ("stack-overflow", l.to_string())
        } else {
            ("signal", tail(&stderr, 3))
        };
        Some((kind, format!("killed by signal {sig}: {what}")))
    } else {
        // Exit status 2 and the like: the harness itself failed (bad corpus, scratch dir).
        return Err(format!(
            "surface {} failed to run ({status}): {}",
            surface.name,
            tail(&stderr, 6)
        ));
    };
    if let Some((kind, detail)) = finding {
        report.result = format!("FINDING {kind}: {detail}");
        let input = recorded.map(|(_, d)| d).unwrap_or_default();
        let dir = findings.join(surface.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{kind}-{:016x}", engine::fnv1a(&input)));
        std::fs::write(&path, &input).map_err(|e| format!("{}: {e}", path.display()))?;
        let note = format!(
            "{}\n\nstderr (last lines):\n{}\n",
            report.result,
            last_lines(&stderr, 60)
        );
        let _ = std::fs::write(path.with_extension("txt"), note);
        report.saved.push(path);
    }
    Ok(report)
}

/// What a child printed after `FINDING <kind>: `, else the end of its stderr.
fn finding_line(stderr: &str) -> String {
    let found = ["FINDING panic: ", "FINDING hang: "]
        .iter()
        .find_map(|m| stderr.rfind(m).map(|at| at + m.len()));
    match found {
        Some(at) => stderr[at..].trim().lines().collect::<Vec<_>>().join(" | "),
        None => tail(stderr, 6),
    }
}

/// The last `n` lines of `s`, on one line.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes the scratch directories a (possibly killed) surface process left.
fn remove_scratch(pid: u32) {
    let prefix = surfaces::scratch_prefix(pid);
    if let Ok(entries) = std::fs::read_dir(surfaces::scratch_base()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
