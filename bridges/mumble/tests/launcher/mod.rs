//! A minimal murmurd launcher private to this crate's tests: a temp dir, an
//! ini on a free loopback port, `murmurd -fg`. The project-wide harness
//! (tests/harness) replaces it.

#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub struct Murmurd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Murmurd {
    pub async fn start() -> Murmurd {
        let dir = tempfile::Builder::new()
            .prefix("walkie-murmurd-")
            .tempdir()
            .expect("temp dir");
        // murmurd started as root switches to its own user, which must be
        // able to write its database here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
        let port = free_port();
        let as_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let ini = dir.path().join("murmur.ini");
        let mut text = format!(
            "database={db}\nlogfile=\npidfile=\nice=\"\"\nhost=127.0.0.1\nport={port}\n\
             autobanAttempts=0\nopusthreshold=0\nbandwidth=558000\nusers=100\n\
             welcometext=\"walkie test\"\n",
            db = dir.path().join("murmur.sqlite").display(),
        );
        if as_root {
            text.push_str("uname=mumble-server\n");
        }
        std::fs::write(&ini, text).expect("write murmur.ini");

        let binary = which_murmurd();
        let mut child = Command::new(&binary)
            .arg("-fg")
            .arg("-ini")
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));

        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        let needle = format!("Server listening on 127.0.0.1:{port}");
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (log, ready_tx, needle) = (log.clone(), ready_tx.clone(), needle.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains(&needle) {
                        if let Some(tx) = ready_tx.lock().expect("lock").take() {
                            let _ = tx.send(());
                        }
                    }
                    log.lock().expect("lock").push(line);
                }
            });
        }
        // murmurd listens before its event loop runs; connections made now
        // wait in the backlog, so the log line is a sufficient signal.
        if tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .is_err()
        {
            let lines = log.lock().expect("lock").join("\n");
            panic!("murmurd did not start listening within 30 s:\n{lines}");
        }
        Murmurd {
            child,
            port,
            dir,
            log,
        }
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").join("\n")
    }
}

impl Drop for Murmurd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn which_murmurd() -> PathBuf {
    for p in [
        "/usr/sbin/murmurd",
        "/usr/bin/murmurd",
        "/usr/local/bin/murmurd",
    ] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("murmurd not found — these tests need a real Mumble server (Debian: apt-get install mumble-server)");
}

/// A port free for both TCP and UDP on loopback right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}
