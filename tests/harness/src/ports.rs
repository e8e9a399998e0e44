//! Free loopback ports for servers started by tests.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0`, reading the port the kernel chose and
/// releasing it again. Another process may take it before the caller binds it; servers
/// started by this crate retry with a new port when they fail with "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Returns a port on 127.0.0.1 that was free a moment ago for both TCP and UDP
/// (murmurd serves control on TCP and voice on UDP under one number).
pub fn free_tcp_udp_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
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
    fn free_tcp_udp_port_can_be_bound_for_both() {
        let port = free_tcp_udp_port();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("TCP is free");
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("UDP is free");
    }
}
