//! The UDP voice socket: OCB2-encrypted legacy voice packets, connectivity
//! pings, and the bookkeeping that decides between UDP and the TCP tunnel and
//! when to ask the server for a nonce resync.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::crypt::{CryptError, CryptState};

/// UDP counts as working while a datagram from the server decrypted within
/// this window. Pings go out every second, so this is three lost in a row.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(3);
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// When to send an empty CryptSetup (a resync request): decryption keeps
/// failing, nothing decrypted recently, and we have not just asked. The same
/// rule as the Mumble client, with shorter windows since voice is at stake.
#[derive(Debug, Clone)]
pub struct ResyncPolicy {
    pub quiet_for: Duration,
    pub min_failures: u32,
    pub request_every: Duration,
    failures: u32,
    last_good: Option<Instant>,
    last_request: Option<Instant>,
    started: Instant,
}

impl ResyncPolicy {
    pub fn new(now: Instant) -> Self {
        ResyncPolicy {
            quiet_for: Duration::from_secs(2),
            min_failures: 5,
            request_every: Duration::from_secs(5),
            failures: 0,
            last_good: None,
            last_request: None,
            started: now,
        }
    }

    pub fn on_good(&mut self, now: Instant) {
        self.failures = 0;
        self.last_good = Some(now);
    }

    /// Records a failed decryption; true when a resync should be requested now.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        let quiet = now.duration_since(self.last_good.unwrap_or(self.started)) >= self.quiet_for;
        if !quiet {
            // Right after a good packet a failure is reordering or noise, not
            // lost sync.
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        let may_ask = self
            .last_request
            .is_none_or(|t| now.duration_since(t) >= self.request_every);
        if may_ask && self.failures >= self.min_failures {
            self.last_request = Some(now);
            self.failures = 0;
            true
        } else {
            false
        }
    }

    pub fn last_good(&self) -> Option<Instant> {
        self.last_good
    }
}

pub(crate) struct UdpLink {
    pub socket: UdpSocket,
    pub crypt: CryptState,
    pub policy: ResyncPolicy,
    pub resync_requests: u32,
}

pub(crate) enum Opened {
    Plain(Vec<u8>),
    /// Undecryptable; `resync` says whether to ask the server for its nonce.
    Failed {
        error: CryptError,
        resync: bool,
    },
}

impl UdpLink {
    pub async fn open(server: SocketAddr, crypt: CryptState, now: Instant) -> io::Result<Self> {
        let bind: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await?;
        // Connected: the kernel filters out datagrams from anyone else.
        socket.connect(server).await?;
        Ok(UdpLink {
            socket,
            crypt,
            policy: ResyncPolicy::new(now),
            resync_requests: 0,
        })
    }

    pub fn usable(&self, now: Instant) -> bool {
        self.policy
            .last_good()
            .is_some_and(|t| now.duration_since(t) < UDP_TIMEOUT)
    }

    pub async fn send(&mut self, plain: &[u8]) -> io::Result<()> {
        let datagram = self.crypt.encrypt(plain);
        self.socket.send(&datagram).await.map(drop)
    }

    pub fn decrypt(&mut self, datagram: &[u8], now: Instant) -> Opened {
        match self.crypt.decrypt(datagram) {
            Ok(plain) => {
                self.policy.on_good(now);
                Opened::Plain(plain)
            }
            Err(error) => {
                let resync = self.policy.on_failure(now);
                if resync {
                    self.resync_requests += 1;
                }
                Opened::Failed { error, resync }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_only_after_repeated_failures_and_quiet() {
        let t0 = Instant::now();
        let mut p = ResyncPolicy::new(t0);
        p.on_good(t0);
        // Failures right after a good packet: reordering, not lost sync.
        for _ in 0..10 {
            assert!(!p.on_failure(t0 + Duration::from_millis(100)));
        }
        let t1 = t0 + Duration::from_secs(3);
        for _ in 0..4 {
            assert!(!p.on_failure(t1));
        }
        assert!(p.on_failure(t1), "fifth failure after 3 s of nothing good");
        // Rate-limited: not again within 5 s…
        for _ in 0..10 {
            assert!(!p.on_failure(t1 + Duration::from_secs(1)));
        }
        // …but again after.
        let t2 = t1 + Duration::from_secs(6);
        let asked = (0..5).any(|_| p.on_failure(t2));
        assert!(asked);
    }

    #[test]
    fn good_packet_resets_failures() {
        let t0 = Instant::now();
        let mut p = ResyncPolicy::new(t0);
        let t = t0 + Duration::from_secs(10);
        for _ in 0..4 {
            assert!(!p.on_failure(t));
        }
        p.on_good(t);
        let t = t + Duration::from_secs(3);
        for _ in 0..4 {
            assert!(!p.on_failure(t));
        }
        assert!(p.on_failure(t));
    }

    #[tokio::test]
    async fn link_tracks_usability_and_asks_for_resync() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let key = [7; 16];
        let (civ, siv) = ([1; 16], [2; 16]);
        let t0 = Instant::now();
        let mut link = UdpLink::open(addr, CryptState::new(key, civ, siv), t0)
            .await
            .expect("open");
        let mut server_crypt = CryptState::new(key, siv, civ);
        assert!(!link.usable(t0));

        link.send(b"ping").await.expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).await.expect("recv");
        assert_eq!(server_crypt.decrypt(&buf[..n]).as_deref(), Ok(&b"ping"[..]));

        let reply = server_crypt.encrypt(b"pong");
        assert!(matches!(link.decrypt(&reply, t0), Opened::Plain(p) if p == b"pong"));
        assert!(link.usable(t0));
        assert!(!link.usable(t0 + UDP_TIMEOUT));

        // The server's nonce jumps (as after a server-side reset): packets stop
        // decrypting and, after a while, we ask for a resync.
        let mut other = CryptState::new(key, [9; 16], civ);
        let late = t0 + Duration::from_secs(5);
        let resynced = (0..10).any(|_| {
            matches!(
                link.decrypt(&other.encrypt(b"x"), late),
                Opened::Failed { resync: true, .. }
            )
        });
        assert!(resynced);
        assert_eq!(link.resync_requests, 1);
    }
}
