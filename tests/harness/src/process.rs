//! Child processes owned by a test: own process group, output captured to a log file,
//! terminated (SIGTERM, then SIGKILL) when the guard is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Grace period between SIGTERM and SIGKILL when a guard is dropped.
pub const DROP_GRACE: Duration = Duration::from_secs(3);

const POLL: Duration = Duration::from_millis(20);

/// A child process that is ended when this guard is dropped.
///
/// The child runs in its own process group (so a signal reaches everything it
/// started), with stdin from `/dev/null` and stdout + stderr appended to a log file.
/// On Linux the child also gets SIGTERM when the test process dies without running
/// destructors (a killed `cargo test`), so no server outlives its test run.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    print_log_on_panic: bool,
}

impl ChildGuard {
    /// Starts `command`, appending its stdout and stderr to `log_path` (created if
    /// missing). `name` appears in messages about the process.
    pub fn spawn(
        name: impl Into<String>,
        command: Command,
        log_path: impl Into<PathBuf>,
    ) -> io::Result<ChildGuard> {
        Self::spawn_with(name, command, log_path.into(), false)
    }

    /// Like [`ChildGuard::spawn`], but the child's stdin and stdout are pipes, handed
    /// back to talk to it; only stderr goes to the log file.
    pub fn spawn_piped(
        name: impl Into<String>,
        command: Command,
        log_path: impl Into<PathBuf>,
    ) -> io::Result<(ChildGuard, ChildStdin, ChildStdout)> {
        let mut guard = Self::spawn_with(name, command, log_path.into(), true)?;
        let stdin = guard.child.stdin.take().expect("stdin is piped");
        let stdout = guard.child.stdout.take().expect("stdout is piped");
        Ok((guard, stdin, stdout))
    }

    fn spawn_with(
        name: impl Into<String>,
        mut command: Command,
        log_path: PathBuf,
        piped: bool,
    ) -> io::Result<ChildGuard> {
        let name = name.into();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(log, "=== walkie-harness: starting {name}: {command:?}")?;
        if piped {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?));
        }
        command.stderr(Stdio::from(log)).process_group(0);
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid,
        // _exit) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(command)?;
        Ok(ChildGuard {
            name,
            child,
            status: None,
            log_path,
            print_log_on_panic: true,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file that receives the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the child's output.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Whether dropping the guard while the thread panics prints the log tail
    /// (default: yes). Owners that print logs themselves turn it off.
    pub fn set_print_log_on_panic(&mut self, print: bool) {
        self.print_log_on_panic = print;
    }

    /// The exit status, if the child has exited (reaps it without blocking).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for the child to exit
    /// (polling, without blocking the async runtime), then SIGKILLs the group.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(POLL).await;
        }
        self.kill()
    }

    /// Like [`ChildGuard::stop`], but blocking the current thread.
    pub fn stop_blocking(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        self.kill()
    }

    /// SIGKILLs the process group and reaps the child.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    fn signal(&self, signal: libc::c_int) {
        // Only called while the child is not reaped: the process group id is still
        // the child's and cannot belong to anything else.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let running = self.is_running();
        if running {
            let _ = self.stop_blocking(DROP_GRACE);
        }
        if self.print_log_on_panic && std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: {} output ({}), last 40 lines ---\n{}\n--- end of {} output ---",
                self.name,
                self.log_path.display(),
                self.log_tail(40),
                self.name
            );
        }
    }
}

/// The last `lines` lines of a text file (at most its last 256 KiB are read); a
/// note instead when the file cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the test process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the
/// process; tests spawn from runtime worker or blocking-pool threads that may end
/// long before the server should. A dedicated thread that never exits ties the
/// signal to the death of the whole test process.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("walkie-harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the walkie-harness spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("walkie-harness spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("walkie-harness spawner thread dropped the request"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(dir: &Path, script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).current_dir(dir);
        command
    }

    #[test]
    fn output_goes_to_the_log_and_drop_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        // The shell starts a grandchild; both must die with the group.
        let guard = ChildGuard::spawn(
            "sleeper",
            shell(
                dir.path(),
                "echo hello-out; echo hello-err >&2; sleep 300 & echo $! > grandchild; wait",
            ),
            &log,
        )
        .unwrap();
        let pid = guard.id() as libc::pid_t;
        let grandchild_file = dir.path().join("grandchild");
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            let text = std::fs::read_to_string(&grandchild_file).unwrap_or_default();
            if text.ends_with('\n') {
                break text.trim().parse::<libc::pid_t>().unwrap();
            }
            assert!(Instant::now() < deadline, "grandchild pid never written");
            std::thread::sleep(POLL);
        };
        drop(guard);
        // SAFETY: signal 0 only checks for existence.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "child still alive");
        let alive = |pid| unsafe { libc::kill(pid, 0) } == 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(Instant::now() < deadline, "grandchild survived its group");
            std::thread::sleep(POLL);
        }
        let tail = log_tail(&log, 10);
        assert!(tail.contains("hello-out"), "{tail}");
        assert!(tail.contains("hello-err"), "{tail}");
    }

    #[test]
    fn stop_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = ChildGuard::spawn(
            "stubborn",
            shell(
                dir.path(),
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            ),
            dir.path().join("child.log"),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The header line quotes the command, so look for the echoed line itself.
        while !guard.log_tail(5).lines().any(|line| line == "ready") {
            assert!(Instant::now() < deadline, "child never got ready");
            std::thread::sleep(POLL);
        }
        let started = Instant::now();
        let status = guard.stop_blocking(Duration::from_millis(200)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!guard.is_running());
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert!(log_tail(&dir.path().join("missing"), 3).contains("cannot read"));
    }
}
