//! Daemons from Debian's packages (murmurd, mosquitto) drop root for their own
//! system user: when the tests run as root, every file such a daemon opens must
//! belong to that user.

use std::path::Path;

use crate::{Error, Result};

/// The user a daemon switches to, when we run as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServiceUser {
    /// `None` when we are not root (the daemon then keeps our user). `package`
    /// names the Debian package that creates `name`, for the error message.
    pub fn for_daemon(name: &str, package: &str) -> std::result::Result<Option<Self>, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let c_name = std::ffi::CString::new(name)
            .map_err(|_| format!("user name {name:?} contains a NUL byte"))?;
        // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
        // Tests run in threads, but nothing else in the harness calls getpw*.
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        if entry.is_null() {
            return Err(format!(
                "running as root, but there is no user {name:?} for the daemon to switch to; \
                 install Debian's {package} (scripts/setup.sh)"
            ));
        }
        // SAFETY: non-null, points to a valid passwd record.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        Ok(Some(Self { uid, gid }))
    }

    /// As [`ServiceUser::for_daemon`], for a daemon that runs chrooted in `root`:
    /// the user of that root's `/etc/passwd` (its ids differ from this machine's).
    pub fn for_daemon_in(
        root: &Path,
        name: &str,
        package: &str,
    ) -> std::result::Result<Option<Self>, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "{package} runs chrooted in {}, which needs root",
                root.display()
            ));
        }
        let passwd_path = root.join("etc/passwd");
        let passwd = std::fs::read_to_string(&passwd_path)
            .map_err(|e| format!("reading {}: {e}", passwd_path.display()))?;
        let fields = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 4 && fields[0] == name)
            .ok_or_else(|| {
                format!(
                    "no user {name:?} in {}; install {package} into that root (scripts/setup.sh)",
                    passwd_path.display()
                )
            })?;
        let id = |i: usize| {
            fields[i].parse::<u32>().map_err(|_| {
                format!(
                    "bad id {:?} for {name} in {}",
                    fields[i],
                    passwd_path.display()
                )
            })
        };
        Ok(Some(Self {
            uid: id(2)?,
            gid: id(3)?,
        }))
    }

    /// Gives `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))
    }
}
