//! A real child process keyed mid-transmission, then SIGTERMed or panicking:
//! the last line state it logged must be unkeyed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use walkie_radio::ptt::monotonic_ns;

/// (ns, line, level) records the child's fake lines wrote.
fn read_log(path: &std::path::Path) -> Vec<(u64, String, bool)> {
    std::fs::read_to_string(path)
        .expect("log")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].parse().expect("ns"), f[1].to_owned(), f[2] == "1")
        })
        .collect()
}

fn last_rts(log: &[(u64, String, bool)]) -> Option<(u64, bool)> {
    log.iter()
        .rev()
        .find(|(_, l, _)| l == "RTS")
        .map(|(t, _, v)| (*t, *v))
}

fn spawn(
    mode: &str,
    log: &std::path::Path,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_walkie-radio-ptt-child"))
        .arg(log)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "KEYED");
    (child, out)
}

#[test]
fn sigterm_mid_transmission_leaves_the_line_unkeyed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let log = dir.path().join(format!("lines-{}.log", latencies.len()));
        let (mut child, _out) = spawn("sigterm", &log);
        assert_eq!(
            last_rts(&read_log(&log)).map(|(_, v)| v),
            Some(true),
            "keyed before the signal"
        );
        let sent = monotonic_ns();
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let status = child.wait().expect("wait");
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "ended by the re-raised signal"
        );
        let log = read_log(&log);
        let (at, level) = last_rts(&log).expect("lines logged");
        assert!(!level, "last RTS state must be unkeyed: {log:?}");
        latencies.push(at.saturating_sub(sent));
    }
    latencies.sort_unstable();
    eprintln!("SIGTERM → unkey latency (ns), sorted: {latencies:?}");
}

#[test]
fn panic_mid_transmission_in_a_child_is_unkeyed_by_the_hook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("lines.log");
    let (mut child, _out) = spawn("panic", &log);
    assert_eq!(last_rts(&read_log(&log)).map(|(_, v)| v), Some(true));
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("go");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child panicked");
    let log = read_log(&log);
    assert_eq!(last_rts(&log).map(|(_, v)| v), Some(false), "{log:?}");
}
