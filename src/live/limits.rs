//! What people who have not proved who they are may cost the bridge: connections
//! at once (in all and per address), refused logons per address, and warnings in
//! the log (issue 13.3, 13.8).
//!
//! Every live connection costs a file descriptor, which recordings and the
//! homeserver's transactions need too; a logon costs a homeserver request. So
//! connections are counted from the upgrade on, and at the cap a new connection
//! pushes out the oldest one that has not logged on: idle sockets cannot keep a
//! real client out, and logged-on clients are never pushed out.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{LiveLimits, FAILED_LOGON_WINDOW};

/// Addresses with refused logons remembered at most; beyond, those whose window
/// is over are forgotten first.
const MAX_REMEMBERED_ADDRESSES: usize = 4096;

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `live.max_connections` logged-on clients already.
    Full,
    /// `live.max_connections_per_ip` from this address already.
    PerAddress,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::PerAddress => "per_ip",
        }
    }
}

/// Every live connection of the bridge, by address.
pub(crate) struct Connections {
    limits: LiveLimits,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By id, so in the order they opened: the first anonymous one is the oldest.
    open: BTreeMap<u64, Entry>,
    per_address: HashMap<IpAddr, usize>,
    failed: HashMap<IpAddr, Failures>,
}

struct Entry {
    address: IpAddr,
    anonymous: bool,
    pushed_out: CancellationToken,
}

struct Failures {
    since: Instant,
    count: u32,
}

impl Registry {
    fn forget(&mut self, id: u64) -> bool {
        let Some(entry) = self.open.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_address.get_mut(&entry.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&entry.address);
            }
        }
        true
    }

    fn gauge(&self) {
        metrics::gauge!("walkie_live_connections").set(self.open.len() as f64);
    }
}

impl Connections {
    pub(crate) fn new(limits: LiveLimits) -> Self {
        Self {
            limits,
            registry: Mutex::new(Registry::default()),
        }
    }

    pub(crate) fn limits(&self) -> &LiveLimits {
        &self.limits
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection from `address`, pushing out the oldest anonymous one
    /// when all are taken.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refused> {
        let address = subscriber(address);
        let mut registry = self.registry();
        if registry.per_address.get(&address).copied().unwrap_or(0)
            >= self.limits.max_connections_per_ip
        {
            return Err(Refused::PerAddress);
        }
        if registry.open.len() >= self.limits.max_connections {
            let oldest = registry
                .open
                .iter()
                .find(|(_, entry)| entry.anonymous)
                .map(|(id, entry)| (*id, entry.pushed_out.clone()));
            let Some((id, pushed_out)) = oldest else {
                return Err(Refused::Full);
            };
            registry.forget(id);
            pushed_out.cancel();
            metrics::counter!("walkie_live_connections_pushed_out_total").increment(1);
        }
        registry.next += 1;
        let id = registry.next;
        let pushed_out = CancellationToken::new();
        registry.open.insert(
            id,
            Entry {
                address,
                anonymous: true,
                pushed_out: pushed_out.clone(),
            },
        );
        *registry.per_address.entry(address).or_default() += 1;
        registry.gauge();
        Ok(Permit {
            connections: Arc::clone(self),
            id,
            address,
            pushed_out,
        })
    }

    /// Whether `address` may try another logon (it has not used up its refused
    /// logons of the window).
    pub(crate) fn may_log_on(&self, address: IpAddr, now: Instant) -> bool {
        let address = subscriber(address);
        let registry = self.registry();
        registry.failed.get(&address).is_none_or(|f| {
            now.duration_since(f.since) >= FAILED_LOGON_WINDOW
                || f.count < self.limits.max_failed_logons_per_ip
        })
    }

    /// Counts a refused logon against `address`.
    pub(crate) fn logon_failed(&self, address: IpAddr, now: Instant) {
        let address = subscriber(address);
        let mut registry = self.registry();
        if registry.failed.len() >= MAX_REMEMBERED_ADDRESSES {
            registry
                .failed
                .retain(|_, f| now.duration_since(f.since) < FAILED_LOGON_WINDOW);
        }
        if registry.failed.len() >= MAX_REMEMBERED_ADDRESSES {
            // Still full of live windows: a flood from very many addresses. Start
            // over rather than grow without bound.
            registry.failed.clear();
        }
        let failures = registry.failed.entry(address).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(failures.since) >= FAILED_LOGON_WINDOW {
            *failures = Failures {
                since: now,
                count: 0,
            };
        }
        failures.count = failures.count.saturating_add(1);
    }
}

/// What the limits per address count as one address: an IPv4 address, or an
/// IPv6 /64 — one subscriber's network, in which anyone has addresses to spare.
pub(crate) fn subscriber(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct Permit {
    connections: Arc<Connections>,
    id: u64,
    pub(crate) address: IpAddr,
    /// Cancelled when a newer connection took this one's place.
    pub(crate) pushed_out: CancellationToken,
}

impl Permit {
    /// The connection logged on: it is never pushed out from now on. False when
    /// it was pushed out already.
    pub(crate) fn logged_on(&self) -> bool {
        let mut registry = self.connections.registry();
        match registry.open.get_mut(&self.id) {
            Some(entry) => {
                entry.anonymous = false;
                true
            }
            None => false,
        }
    }

    pub(crate) fn limits(&self) -> &LiveLimits {
        self.connections.limits()
    }

    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut registry = self.connections.registry();
        if registry.forget(self.id) {
            registry.gauge();
        }
    }
}

/// At most `per_window` events per `window`; counts the rest.
pub(crate) struct RateLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    since: Option<Instant>,
    taken: u32,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) const fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(Window {
                since: None,
                taken: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when the event may happen now, `n` being how many were
    /// suppressed since the last one allowed; `None` when over the limit.
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .since
            .is_none_or(|since| now.duration_since(since) >= self.window)
        {
            state.since = Some(now);
            state.taken = 0;
        }
        if state.taken >= self.per_window {
            state.suppressed += 1;
            return None;
        }
        state.taken += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// Warnings about bad messages from live clients, over all connections: anyone
/// can send them, so they must not fill the log.
pub(crate) static BAD_MESSAGE_WARNINGS: RateLimit = RateLimit::new(10, Duration::from_secs(60));

/// At most `max` bytes of `text` (cut at a character boundary), saying how long
/// it was: for what a client said before it is verified.
pub(crate) fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

/// How much of a client's own words goes into a log line or an answer.
pub(crate) const CLIP: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> LiveLimits {
        LiveLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            logon_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_failed_logons: 3,
            max_failed_logons_per_ip: 2,
            max_presses_per_minute: 60,
        }
    }

    #[test]
    fn the_oldest_anonymous_connection_makes_room_and_logged_on_ones_stay() {
        let connections = Arc::new(Connections::new(limits(2, 2)));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = connections.admit(a).unwrap();
        let second = connections.admit(a).unwrap();
        assert_eq!(connections.admit(a).err(), Some(Refused::PerAddress));
        assert!(second.logged_on());
        let third = connections.admit(b).unwrap();
        assert!(first.pushed_out.is_cancelled());
        assert!(!first.logged_on());
        assert!(third.logged_on());
        assert_eq!(connections.admit(b).err(), Some(Refused::Full));
        drop(first);
        drop(second);
        assert!(connections.admit(a).is_ok());
    }

    #[test]
    fn refused_logons_are_counted_per_address_and_window() {
        let connections = Connections::new(limits(2, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::now();
        connections.logon_failed(a, now);
        assert!(connections.may_log_on(a, now));
        connections.logon_failed(a, now);
        assert!(!connections.may_log_on(a, now));
        assert!(connections.may_log_on([10, 0, 0, 2].into(), now));
        assert!(connections.may_log_on(a, now + FAILED_LOGON_WINDOW));
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address() {
        let connections = Arc::new(Connections::new(limits(10, 1)));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _first = connections.admit(one).unwrap();
        assert_eq!(connections.admit(same_net).err(), Some(Refused::PerAddress));
        assert!(connections.admit(other_net).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _v4 = connections.admit(mapped).unwrap();
        assert_eq!(
            connections.admit([10, 0, 0, 1].into()).err(),
            Some(Refused::PerAddress)
        );
    }

    #[test]
    fn rate_limit_reports_what_it_suppressed() {
        let limit = RateLimit::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(limit.allow(now), Some(0));
        assert_eq!(limit.allow(now), Some(0));
        assert_eq!(limit.allow(now), None);
        assert_eq!(limit.allow(now), None);
        assert_eq!(limit.allow(now + Duration::from_secs(60)), Some(2));
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(clip("short", 10), "short");
        let clipped = clip("ééééé", 3);
        assert_eq!(clipped, "é… (10 bytes)");
    }
}
