//! Stamps the binary with the commit it was built from, for `--version`
//! (`walkie-bridge 0.1.0 (commit 1a2b3c4d5e6f)`; `-dirty` when the tree had
//! changes; "unknown" when built outside a git checkout, e.g. from a source
//! tarball or a Debian source package). Written here rather than with vergen:
//! one `git` call is all it takes, and a build dependency tree is not.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    // A packager may set it when there is no .git (the source package's commit).
    println!("cargo:rerun-if-env-changed=WALKIE_BUILD_COMMIT");
    let commit = std::env::var("WALKIE_BUILD_COMMIT").ok().or_else(|| {
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|changes| !changes.is_empty());
        Some(if dirty {
            format!("{commit}-dirty")
        } else {
            commit
        })
    });
    println!(
        "cargo:rustc-env=WALKIE_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
    // A new commit or a checkout: stamp again. Not on the index: git rewrites it
    // whenever it refreshes its stat cache (a plain `git status` does), and each
    // re-run of this script rebuilt the crate and every test binary — with fat
    // LTO a 20-minute release build — for a stamp that had not changed. So
    // "-dirty" says whether the tree had changes when HEAD last moved; builds
    // from a clean checkout (CI, the packages) are stamped right.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        // logs/HEAD (the reflog) is appended at every commit and checkout, also
        // where the branch's ref is packed and there is no loose ref file yet.
        let mut watched = vec![
            "HEAD".to_owned(),
            "logs/HEAD".to_owned(),
            "packed-refs".to_owned(),
        ];
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(head);
        }
        for file in watched {
            // A path that does not exist would make cargo run this every build.
            let path = std::path::Path::new(&git_dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
