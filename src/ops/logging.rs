//! Logging under systemd: plain lines on stderr, which journald files with the
//! unit. When stderr *is* the journal (`JOURNAL_STREAM` names it), each line starts
//! with a syslog priority `<N>` (journald's SyslogLevelPrefix), so `journalctl -p
//! warning -u walkie-bridge` works, and carries no timestamp or colour, which
//! journald adds or does not want. Span fields (channel, endpoint, tx) stay on the
//! line as `key=value`, where `journalctl -g` finds them.

use std::fmt;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` is
/// `device:inode` of that stream, and a child started from a shell inside the
/// service may inherit the variable without the stream, so both are compared.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => {
            dev.parse::<u64>().ok() == Some(meta.dev())
                && ino.parse::<u64>().ok() == Some(meta.ino())
        }
        Err(_) => false,
    }
}

/// The usual line format, without time, behind a syslog priority.
pub struct JournalFormat {
    inner: Format<tracing_subscriber::fmt::format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        Self {
            inner: Format::default().without_time().with_ansi(false),
        }
    }
}

/// sd-daemon(3) priorities.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn priorities_follow_sd_daemon() {
        use tracing::Level;
        assert_eq!(super::priority(&Level::ERROR), 3);
        assert_eq!(super::priority(&Level::WARN), 4);
        assert_eq!(super::priority(&Level::INFO), 6);
        assert_eq!(super::priority(&Level::DEBUG), 7);
    }
}
