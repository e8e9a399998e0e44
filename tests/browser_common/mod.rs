//! A browser driver script (tests/browser/*.mjs: playwright-core driving Debian's
//! headless Chromium) as a child process of a test: its environment in, one JSON
//! event per line out, a line in on stdin when the test has something to tell it.
//! Included with `#[path]` by the tests that drive the live page.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a driver may exit in after its last step.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Longer lines (a page's whole speaker output in base64) are shown cut.
const SHOWN_LINE: usize = 400;

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The drivers' needs, checked up front so a missing install says how to fix it.
pub fn check_tools() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules: run scripts/setup.sh (it runs `npm ci` there)",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.sh (Debian package chromium)"
    );
}

pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The longest the driver may say nothing before the test gives up.
    silence: Duration,
}

impl Driver {
    /// Runs tests/browser/`script` with `vars` in its environment.
    pub fn start(script: &str, vars: &[(&str, String)]) -> Self {
        check_tools();
        let mut command = Command::new("node");
        command
            .arg(browser_dir().join(script))
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .expect("node runs (scripts/setup.sh installs it)");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            silence: Duration::from_secs(90),
        }
    }

    /// For a driver with a step that legitimately says nothing for longer.
    pub fn with_silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// Tells the driver what the test did (the page cannot see it coming).
    pub async fn tell(&mut self, what: &str) {
        self.stdin
            .write_all(format!("{what}\n").as_bytes())
            .await
            .expect("the driver reads its stdin");
        self.stdin.flush().await.expect("flush");
    }

    /// The next `event` from the driver, the events before it shown; panics on
    /// `failed` with its message (and the failure screenshot's line after it).
    pub async fn expect(&mut self, event: &str) -> Value {
        loop {
            let line = self.next_line(event).await;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                eprintln!("driver: {line}");
                continue;
            };
            show(&line);
            if value["event"] == "failed" {
                if let Ok(Ok(Some(next))) =
                    tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await
                {
                    show(&next);
                }
                panic!(
                    "the browser step before {event} failed: {}",
                    value["message"]
                );
            }
            if value["event"] == event {
                return value;
            }
        }
    }

    /// Waits for the driver to exit and checks that every step passed.
    pub async fn finish(mut self) {
        let status = tokio::time::timeout(EXIT_WAIT, self.child.wait())
            .await
            .expect("the driver exits")
            .expect("driver status");
        assert!(status.success(), "the browser driver failed: {status}");
    }

    async fn next_line(&mut self, event: &str) -> String {
        tokio::time::timeout(self.silence, self.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the browser driver said nothing for {:?} (waiting for {event})",
                    self.silence
                )
            })
            .expect("driver output")
            .unwrap_or_else(|| panic!("the browser driver exited before {event}"))
    }
}

fn show(line: &str) {
    if line.len() > SHOWN_LINE {
        let cut = (0..=SHOWN_LINE)
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        eprintln!("driver: {}… ({} bytes)", &line[..cut], line.len());
    } else {
        eprintln!("driver: {line}");
    }
}
