//! Running a plugin (or any program) with its input on stdin, bounded in time: the one copy of
//! that pattern for the tests of calico-ipam and of calico-cni (whose tests/common includes this
//! file by path). A test whose plugin hangs fails after [`RUN_TIMEOUT`] instead of hanging the
//! whole run.

use std::io::{ErrorKind, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one run may take before the test kills it and fails (a plugin's own verb timeout
/// is 30 s).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Spawns `cmd` with a piped stdin, writes `stdin` to it and closes it. A plugin that refuses
/// early may close its stdin before reading all of it: a broken pipe is not an error. Where
/// stdout and stderr go is the caller's choice ([`run_with_stdin`] pipes both).
pub fn spawn_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    child
}

/// Waits for `child` and collects whatever of its stdout and stderr is piped; after
/// [`RUN_TIMEOUT`] kills it and fails the test.
pub fn wait_within(mut child: Child) -> Output {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not finish within {RUN_TIMEOUT:?}: killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `cmd` with `stdin` on its stdin, stdout and stderr piped: its output, within
/// [`RUN_TIMEOUT`].
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_within(spawn_with_stdin(cmd, stdin))
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never blocks the child).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}
