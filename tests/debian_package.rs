//! Issue 19 item 1: the Debian package. `scripts/build-deb.sh` packages this
//! build's binary with cargo-deb; the package is installed, upgraded, removed and
//! purged with dpkg inside a scratch copy of a minimal Debian 12 root (the
//! release this machine builds for, so `$auto`'s library versions hold), made by
//! debootstrap in scripts/setup.sh at `.package-root` (or `$WALKIE_PACKAGE_ROOT`).
//! The maintainer scripts run there for real: systemd-sysusers, systemd-tmpfiles,
//! deb-systemd-helper (chroot, in a mount namespace with its own /proc). No systemd runs in a chroot, so whether an upgrade
//! restarts a running bridge is read from the installed postinst.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target folder of this build (the script packages `<it>/debug/walkie-bridge`).
fn target_dir() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    binary
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/debug")
        .to_path_buf()
}

fn run(what: &str, command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn build_deb(version: &str, output: &Path) {
    run(
        &format!("scripts/build-deb.sh {version}"),
        Command::new(repo().join("scripts/build-deb.sh"))
            .args(["--profile", "dev", "--no-build", "--fast"])
            .args(["--deb-version", version])
            .arg("--output")
            .arg(output)
            .env("CARGO_TARGET_DIR", target_dir()),
    );
}

/// A scratch Debian root: a copy of the one setup made, thrown away after.
struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn copy() -> Root {
        let made = std::env::var_os("WALKIE_PACKAGE_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".package-root"));
        assert!(
            made.join("usr/bin/dpkg").exists(),
            "no Debian 12 root at {} (scripts/setup.sh makes it)",
            made.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("root");
        run(
            "copying the Debian root",
            Command::new("cp").arg("-a").arg(&made).arg(&path),
        );
        Root { _dir: dir, path }
    }

    fn file(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// Runs `args` inside the root, with a /proc of its own (systemd-tmpfiles
    /// and systemd-analyze want one) in a mount namespace that ends with it.
    fn chroot(&self, what: &str, args: &[&str]) -> Output {
        run(
            what,
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#)
                .arg(&self.path)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("LANG", "C.UTF-8"),
        )
    }

    fn install(&self, deb: &Path) -> String {
        let inside = format!(
            "/tmp/{}",
            deb.file_name().and_then(|n| n.to_str()).expect("deb name")
        );
        std::fs::copy(deb, self.file(&inside)).expect("deb copied into the root");
        text(&self.chroot("dpkg -i", &["dpkg", "-i", &inside]))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

fn mode_and_group(root: &Root, path: &str) -> String {
    text(&root.chroot("stat", &["stat", "-c", "%a %U:%G", path]))
        .trim()
        .to_owned()
}

#[test]
fn the_package_installs_upgrades_and_purges_in_a_debian_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = dir.path().join("walkie-bridge_0.1.0-1_amd64.deb");
    let second = dir.path().join("walkie-bridge_0.1.0-2_amd64.deb");
    build_deb("0.1.0-1", &first);
    build_deb("0.1.0-2", &second);
    let root = Root::copy();

    // Installed, configured, not started (nor enabled) before the admin edits the config.
    let said = root.install(&first);
    assert!(
        said.contains("installed but not started"),
        "dpkg -i said:\n{said}"
    );
    for file in [
        "/usr/bin/walkie-bridge",
        "/lib/systemd/system/walkie-bridge.service",
        "/usr/lib/sysusers.d/walkie-bridge.conf",
        "/usr/lib/tmpfiles.d/walkie-bridge.conf",
        "/usr/share/man/man1/walkie-bridge.1.gz",
        "/usr/share/bash-completion/completions/walkie-bridge",
        "/usr/share/zsh/vendor-completions/_walkie-bridge",
        "/usr/share/fish/vendor_completions.d/walkie-bridge.fish",
        "/usr/share/doc/walkie-bridge/copyright",
    ] {
        assert!(root.file(file).is_file(), "{file} not installed");
    }
    assert!(
        !root
            .file("/etc/systemd/system/multi-user.target.wants/walkie-bridge.service")
            .exists(),
        "the service was enabled before it was configured"
    );
    let conffiles = text(&root.chroot(
        "dpkg-query",
        &["dpkg-query", "-W", "-f=${Conffiles}", "walkie-bridge"],
    ));
    assert!(
        conffiles.contains("/etc/walkie-bridge/config.toml"),
        "not a conffile: {conffiles}"
    );
    // The user with its groups, its folders, and a config only it may read.
    let groups = text(&root.chroot("id", &["id", "-nG", "walkie-bridge"]));
    assert!(
        groups.contains("dialout") && groups.contains("audio"),
        "walkie-bridge's groups: {groups}"
    );
    assert_eq!(
        mode_and_group(&root, "/etc/walkie-bridge/config.toml"),
        "640 root:walkie-bridge"
    );
    assert_eq!(
        mode_and_group(&root, "/var/lib/walkie-bridge/spool"),
        "750 walkie-bridge:walkie-bridge"
    );
    assert_eq!(
        root.read("/etc/walkie-bridge/config.toml"),
        std::fs::read_to_string(repo().join("config/example.toml")).expect("example config")
    );

    // The installed binary runs, and its unit, completions and man page are good.
    let version = text(&root.chroot("--version", &["walkie-bridge", "--version"]));
    assert!(
        version.starts_with(&format!(
            "walkie-bridge {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    let unit = root.read("/lib/systemd/system/walkie-bridge.service");
    assert!(
        unit.contains("ExecStart=/usr/bin/walkie-bridge run") && !unit.contains("/usr/local"),
        "{unit}"
    );
    let verify = root.chroot(
        "systemd-analyze verify",
        &[
            "systemd-analyze",
            "verify",
            "/lib/systemd/system/walkie-bridge.service",
        ],
    );
    let complaints: Vec<String> = text(&verify)
        .lines()
        .filter(|l| l.contains("walkie-bridge"))
        .map(str::to_owned)
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:?}"
    );
    let man = text(&root.chroot(
        "man",
        &["env", "MANWIDTH=80", "man", "-P", "cat", "walkie-bridge"],
    ));
    for words in ["walkie-bridge", "SUBCOMMANDS", "doctor", "check-config"] {
        assert!(
            man.contains(words),
            "man walkie-bridge lacks {words}:\n{man}"
        );
    }
    let bash = root.read("/usr/share/bash-completion/completions/walkie-bridge");
    assert!(
        bash.contains("complete -F") && bash.contains("check-config"),
        "{bash}"
    );

    // An upgrade keeps the admin's config and restarts a running bridge only.
    let config = root.read("/etc/walkie-bridge/config.toml");
    let edited = format!("{config}\n# the admin's own change\n");
    std::fs::write(root.file("/etc/walkie-bridge/config.toml"), &edited).expect("config edited");
    std::fs::write(root.file("/var/lib/walkie-bridge/walkie.db"), "state").expect("state");
    let said = root.install(&second);
    assert!(!said.contains("installed but not started"), "{said}");
    assert_eq!(root.read("/etc/walkie-bridge/config.toml"), edited);
    let installed = text(&root.chroot(
        "dpkg-query",
        &["dpkg-query", "-W", "-f=${Version}", "walkie-bridge"],
    ));
    assert_eq!(installed, "0.1.0-2");
    let postinst = root.read("/var/lib/dpkg/info/walkie-bridge.postinst");
    assert!(
        postinst.contains("deb-systemd-invoke try-restart walkie-bridge.service"),
        "{postinst}"
    );

    // Remove keeps the state and the config; purge takes both.
    root.chroot("dpkg -r", &["dpkg", "-r", "walkie-bridge"]);
    assert!(!root.file("/usr/bin/walkie-bridge").exists());
    assert!(root.file("/var/lib/walkie-bridge/walkie.db").exists());
    assert_eq!(root.read("/etc/walkie-bridge/config.toml"), edited);
    root.chroot("dpkg -P", &["dpkg", "-P", "walkie-bridge"]);
    assert!(!root.file("/var/lib/walkie-bridge").exists());
    assert!(!root.file("/etc/walkie-bridge/config.toml").exists());
}
