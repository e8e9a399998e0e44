//! Free loopback ports for servers started by tests.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Lowest port handed out: above the registered ports most daemons use.
const LOWEST: u16 = 20_000;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// Ports come from outside the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default). A port the
/// kernel picked for `bind(0)` is one it also hands to outgoing connections: a test
/// that stopped a server and starts it again on the same port could find a
/// concurrent test's client connection sitting on it ("Address already in use").
/// Outside that range only another explicit bind can take the port, and each call
/// in this process gets a different one (a cursor that starts at a place of its
/// own per process walks the range). Servers started by this crate still retry
/// with a new port when they fail with "address in use".
pub fn free_port() -> u16 {
    next_free(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
}

/// Returns a port on 127.0.0.1 that was free a moment ago for both TCP and UDP
/// (murmurd serves control on TCP and voice on UDP under one number).
pub fn free_tcp_udp_port() -> u16 {
    next_free(|port| {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        tcp.is_ok() && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    })
}

fn next_free(is_free: impl Fn(u16) -> bool) -> u16 {
    let Some((low, high)) = *outside_ephemeral() else {
        return kernel_pick(&is_free);
    };
    let span = u32::from(high - low) + 1;
    static CURSOR: OnceLock<AtomicU32> = OnceLock::new();
    // Spread processes over the range so that two test binaries running at once
    // rarely walk the same ports.
    let cursor = CURSOR.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919)));
    for _ in 0..span {
        let offset = cursor.fetch_add(1, Ordering::Relaxed) % span;
        let port = low + offset as u16;
        if is_free(port) {
            return port;
        }
    }
    kernel_pick(&is_free)
}

/// Ports below the ephemeral range (or above it, when it starts low), if there
/// are at least a thousand of them.
fn outside_ephemeral() -> &'static Option<(u16, u16)> {
    static RANGE: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
        let (first, last) = (numbers.next()??, numbers.next()??);
        if first > LOWEST.saturating_add(1000) {
            Some((LOWEST, first - 1))
        } else if last < u16::MAX - 1000 {
            Some((last + 1, u16::MAX))
        } else {
            None
        }
    })
}

/// The old way: whatever `bind(0)` gets, inside the ephemeral range.
fn kernel_pick(is_free: &impl Fn(u16) -> bool) -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        drop(listener);
        if is_free(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound_again() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        let Some((low, high)) = *outside_ephemeral() else {
            return; // nothing outside it on this machine: the kernel's pick is used
        };
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (low..=high).contains(p)), "{ports:?}");
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "each call a new port: {ports:?}"
        );
    }

    #[test]
    fn free_tcp_udp_port_can_be_bound_for_both() {
        let port = free_tcp_udp_port();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("TCP is free");
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("UDP is free");
    }
}
