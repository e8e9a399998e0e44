//! `!wt` bot commands: MSC4002's permissions, where only people who opted in may
//! talk, for good or until an expiry (DESIGN.md §4).
//!
//! Pure logic over the [`Store`]: [`parse`] reads a message body, [`execute`]
//! applies a command and words the answer, which the room glue posts as the bot's
//! `m.notice`. [`may_transmit`] is the check voice messages in go through.
//!
//! Opt-ins belong to the person, not to one room: `!wt on` in one bridged room
//! lets them talk in every one, and the replies say so. A Matrix message does not
//! tell which device sent it, so commands from a room act user-wide; a caller
//! that knows the device (the live client) passes it and acts on that device only.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::UserId;

use crate::store::{OptIn, Store, StoreError};

/// The word every command starts with.
pub const PREFIX: &str = "!wt";

/// Longest opt-in with an end; longer is almost surely a typo (`8d` for `8h`) and
/// `!wt on` without a duration covers "for good".
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Opt in; `None` until `!wt off`.
    On {
        duration: Option<Duration>,
    },
    Off,
    Status,
    /// Started with `!wt` but is no command; answered with `reason` and the help.
    Invalid {
        reason: String,
    },
}

/// What the bot answers: plain text and, where it has formatting, HTML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub html: Option<String>,
}

/// The command in a message body, or `None` when the body is no `!wt` command.
pub fn parse(body: &str) -> Option<Command> {
    let body = strip_reply_fallback(body).trim();
    let mut words = body.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let Some(verb) = words.next() else {
        return Some(Command::Help);
    };
    let rest: Vec<&str> = words.collect();
    let verb = verb.to_ascii_lowercase();
    let no_arguments = |command: Command| {
        if rest.is_empty() {
            command
        } else {
            Command::Invalid {
                reason: format!("`{PREFIX} {verb}` takes nothing after it."),
            }
        }
    };
    Some(match verb.as_str() {
        "help" => no_arguments(Command::Help),
        "off" => no_arguments(Command::Off),
        "status" => no_arguments(Command::Status),
        "on" => parse_on(&rest),
        _ => Command::Invalid {
            reason: format!("`{PREFIX} {verb}` is not a command I know."),
        },
    })
}

fn parse_on(rest: &[&str]) -> Command {
    if rest.is_empty() {
        return Command::On { duration: None };
    }
    // "8h", "1h 30m" and "8 hours" all read the same.
    let joined = rest.concat().to_ascii_lowercase();
    if matches!(joined.as_str(), "forever" | "permanent" | "permanently") {
        return Command::On { duration: None };
    }
    match parse_duration(&joined) {
        Ok(duration) => Command::On {
            duration: Some(duration),
        },
        Err(reason) => Command::Invalid {
            reason: format!("`{}`: {reason}", rest.join(" ")),
        },
    }
}

/// `90s`, `30m`, `8h`, `2d`, `1w`, and sums such as `1h30m`; unit words
/// (`minutes`, `hours`…) too. Lower case, no spaces.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HELP: &str = "give a duration such as 30m, 8h or 2d";
    if text.is_empty() {
        return Err(HELP.into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(HELP.into());
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| "that number is too large")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "wk" | "week" | "weeks" => 604_800,
            "" => return Err(format!("a number needs a unit (s, m, h, d or w); {HELP}")),
            other => return Err(format!("I do not know the unit \"{other}\"; {HELP}")),
        };
        rest = &rest[unit_len..];
        total = amount
            .checked_mul(seconds_per)
            .and_then(|s| total.checked_add(s))
            .ok_or("that is far too long")?;
    }
    let duration = Duration::from_secs(total);
    if duration.is_zero() {
        return Err(format!("a duration must be longer than zero; {HELP}"));
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "at most 366 days; say `{PREFIX} on` alone to opt in until you opt out"
        ));
    }
    Ok(duration)
}

/// Whether `user` may talk (from `device`, when known) at `now`.
pub async fn may_transmit(
    store: &Store,
    user: &UserId,
    device: Option<&str>,
    now: SystemTime,
) -> Result<bool, StoreError> {
    Ok(store.opted_in(user.as_str(), device, now).await?.is_some())
}

/// Applies `command` for `user` (on `device`, when known) and words the answer.
pub async fn execute(
    command: &Command,
    user: &UserId,
    device: Option<&str>,
    store: &Store,
    now: SystemTime,
) -> Result<Reply, StoreError> {
    let text = match command {
        Command::Help => help(),
        Command::Invalid { reason } => format!("{reason}\n\n{}", help()),
        Command::On { duration } => {
            let until = duration.and_then(|d| now.checked_add(d));
            store.set_opt_in(user.as_str(), device, until).await?;
            let who = match device {
                Some(device) => format!("You can now talk from device {device}"),
                None => "You can now talk".to_owned(),
            };
            match (duration, until) {
                (Some(duration), Some(until)) => format!(
                    "{who} and be heard on the walkie-talkie for {}, until {}. \
                     Say `{PREFIX} off` to stop.",
                    human_duration(*duration),
                    utc(until)
                ),
                _ => {
                    format!("{who} and be heard on the walkie-talkie until you say `{PREFIX} off`.")
                }
            }
        }
        Command::Off => {
            let removed = store.clear_opt_in(user.as_str(), device).await?;
            let still = match device {
                Some(_) => store.opted_in(user.as_str(), device, now).await?,
                None => None,
            };
            match (removed, still) {
                (_, Some(opt_in)) => format!(
                    "This device is no longer opted in on its own, but your opt-in for all \
                     your devices still lets it talk {}. Say `{PREFIX} off` in a bridged room \
                     to end that too.",
                    lasting(&opt_in, now)
                ),
                (0, None) => format!(
                    "You were not opted in, so nothing changed. Say `{PREFIX} on` to opt in."
                ),
                (_, None) => format!(
                    "You can no longer talk on the walkie-talkie. Say `{PREFIX} on` to opt in again."
                ),
            }
        }
        Command::Status => {
            let opt_ins: Vec<OptIn> = store
                .opt_ins(user.as_str(), now)
                .await?
                .into_iter()
                .filter(|o| {
                    device.is_none() || o.device_id.is_none() || o.device_id.as_deref() == device
                })
                .collect();
            if opt_ins.is_empty() {
                format!(
                    "You are not opted in, so you cannot talk on the walkie-talkie. \
                     Say `{PREFIX} on` (or `{PREFIX} on 8h`) to opt in."
                )
            } else {
                let mut text = String::from("You can talk on the walkie-talkie:");
                for opt_in in &opt_ins {
                    let which = match &opt_in.device_id {
                        None => "all your devices".to_owned(),
                        Some(device) => format!("device {device}"),
                    };
                    let _ = write!(text, "\n• {which}, {}", lasting(opt_in, now));
                }
                let _ = write!(text, "\nSay `{PREFIX} off` to stop.");
                text
            }
        }
    };
    Ok(reply(text))
}

fn help() -> String {
    format!(
        "Walkie-talkie commands:\n\
         • `{PREFIX} on` — opt in: your voice messages go out on the walkie-talkie, until you opt out\n\
         • `{PREFIX} on 8h` — opt in for a while (90s, 30m, 8h, 2d, 1w)\n\
         • `{PREFIX} off` — opt out\n\
         • `{PREFIX} status` — show whether you are opted in\n\
         Only people who opted in can talk. An opt-in counts in every room this bridge serves."
    )
}

/// "until you say `!wt off`" or "until 2026-11-26 18:00 UTC (8 hours from now)".
fn lasting(opt_in: &OptIn, now: SystemTime) -> String {
    match opt_in.until {
        None => format!("until you say `{PREFIX} off`"),
        Some(until) => {
            let left = until.duration_since(now).unwrap_or_default();
            format!("until {} ({} from now)", utc(until), human_duration(left))
        }
    }
}

fn reply(text: String) -> Reply {
    let html = (text.contains('`') || text.contains('\n')).then(|| to_html(&text));
    Reply { text, html }
}

/// Escapes HTML, turns `code` spans into `<code>` and line breaks into `<br>`.
fn to_html(text: &str) -> String {
    let mut html = String::with_capacity(text.len() + 32);
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                html.push_str(if in_code { "</code>" } else { "<code>" });
                in_code = !in_code;
            }
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\n' => html.push_str("<br>"),
            c => html.push(c),
        }
    }
    if in_code {
        html.push_str("</code>");
    }
    html
}

/// A reply's quoted fallback (`> <@alice:…> …` lines, then a blank line), which
/// older clients still put before the text of a reply.
fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with('>') {
        return body;
    }
    let mut rest = body;
    while rest.starts_with('>') {
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest
}

/// The two largest units: "8 hours", "1 hour 30 minutes", "90 seconds" →
/// "1 minute 30 seconds". Whole seconds; under one second reads "0 seconds".
pub fn human_duration(duration: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let secs = duration.as_secs();
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0 seconds".to_owned();
    };
    let part = |n: u64, name: &str| format!("{n} {name}{}", if n == 1 { "" } else { "s" });
    let (size, name) = UNITS[first];
    let mut text = part(secs / size, name);
    // The next smaller unit only, and only when not zero: "2 days", not
    // "2 days 0 hours 1 minute".
    if let Some(&(next, next_name)) = UNITS.get(first + 1) {
        let n = secs % size / next;
        if n > 0 {
            text.push(' ');
            text.push_str(&part(n, next_name));
        }
    }
    text
}

/// `2026-11-26 18:00 UTC` (to the minute, truncated).
pub fn utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        let at = |s: u64| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00 UTC");
        // 2026-11-26 18:00:59 UTC
        assert_eq!(at(1_795_716_059), "2026-11-26 18:00 UTC");
        assert_eq!(at(4_107_542_400), "2100-03-01 00:00 UTC");
    }

    #[test]
    fn durations_read_as_two_units_at_most() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(d(8 * 3600)), "8 hours");
        assert_eq!(human_duration(d(90)), "1 minute 30 seconds");
        assert_eq!(human_duration(d(5400)), "1 hour 30 minutes");
        assert_eq!(human_duration(d(2 * 86_400 + 60)), "2 days");
        assert_eq!(human_duration(d(86_400 + 3600 + 1)), "1 day 1 hour");
        assert_eq!(human_duration(d(1)), "1 second");
        assert_eq!(human_duration(Duration::from_millis(300)), "0 seconds");
    }

    #[test]
    fn html_escapes_and_marks_code() {
        assert_eq!(
            to_html("say `!wt off` <now> & \"then\"\nbye"),
            "say <code>!wt off</code> &lt;now&gt; &amp; &quot;then&quot;<br>bye"
        );
    }
}
