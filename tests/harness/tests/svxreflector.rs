//! The harness's SvxReflectors: Debian 12's 19.09 and Debian 13's 24.02 start on
//! a free port, say which version they are, stop, come back on the same port, and
//! survive a SIGKILL and restart; and a node's login, byte for byte as
//! docs/protocols/svxreflector.md says, on both.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use hmac::{Hmac, Mac};
use walkie_harness::{SvxReflector, SvxReflectorVersion};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_ok()
}

async fn starts_stops_and_comes_back(version: SvxReflectorVersion) {
    let mut reflector = SvxReflector::builder(version)
        .node("N0CALL", "a shared key")
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} starts: {e}", version.label()));
    let port = reflector.port();
    assert!(accepts(port));
    let log = reflector.log_tail(20);
    assert!(log.contains(version.banner()), "{log}");

    reflector.stop().await.expect("stop");
    assert!(!reflector.is_running());
    assert!(!accepts(port), "nothing listens while it is stopped");
    reflector.start_again().await.expect("start again");
    assert_eq!(reflector.port(), port);
    assert!(accepts(port));

    reflector.kill().expect("kill");
    reflector.start_again().await.expect("start after SIGKILL");
    assert!(accepts(port));
}

#[tokio::test]
async fn svxreflector_19_09_starts_stops_and_comes_back() {
    starts_stops_and_comes_back(SvxReflectorVersion::V19_09).await;
}

#[tokio::test]
async fn svxreflector_24_02_starts_stops_and_comes_back() {
    starts_stops_and_comes_back(SvxReflectorVersion::V24_02).await;
}

// The login as docs/protocols/svxreflector.md §4.2 describes it, byte for byte, so
// the document is checked against both real reflectors: a 4-byte big-endian
// length, a u16 type, then the fields; the digest is HMAC-SHA1 of the 20-byte
// challenge under the shared key.

fn frame(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut payload = kind.to_be_bytes().to_vec();
    payload.extend_from_slice(body);
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn read_frame(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("frame length");
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).expect("frame");
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        payload[2..].to_vec(),
    )
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Logs in as `callsign` with `key`, speaking protocol `major`.0; the frames that
/// follow the response (AuthOk and ServerInfo, or an error).
fn log_in(port: u16, major: u16, callsign: &str, key: &str) -> Vec<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut version = major.to_be_bytes().to_vec();
    version.extend_from_slice(&0u16.to_be_bytes());
    stream.write_all(&frame(5, &version)).expect("ProtoVer");
    let (kind, body) = read_frame(&mut stream);
    if kind == 13 {
        return vec![(kind, body)];
    }
    assert_eq!(kind, 10, "AuthChallenge");
    assert_eq!(&body[..2], &[0, 20], "a 20-byte challenge");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(&body[2..22]);
    let mut response = string(callsign.as_bytes());
    response.extend_from_slice(&string(&mac.finalize().into_bytes()));
    stream
        .write_all(&frame(11, &response))
        .expect("AuthResponse");
    let first = read_frame(&mut stream);
    if first.0 != 12 {
        return vec![first];
    }
    vec![first, read_frame(&mut stream)]
}

fn error_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[2..]).into_owned()
}

async fn a_node_logs_in_with_its_key(version: SvxReflectorVersion) {
    let reflector = SvxReflector::builder(version)
        .node("N0CALL", "a shared key")
        .start()
        .await
        .expect("starts");
    let port = reflector.port();
    let versions: &[u16] = match version {
        SvxReflectorVersion::V19_09 => &[1],
        SvxReflectorVersion::V24_02 => &[1, 2],
    };
    for &major in versions {
        let frames =
            tokio::task::spawn_blocking(move || log_in(port, major, "N0CALL", "a shared key"))
                .await
                .expect("client");
        assert_eq!(frames[0].0, 12, "AuthOk for protocol {major}: {frames:?}");
        let (kind, info) = &frames[1];
        assert_eq!(*kind, 100, "ServerInfo");
        // u32 client id (19.09) = reserved u16 + u16 id (24.02); then the nodes
        // (this one included) and exactly one codec.
        let rest = &info[4..];
        assert_eq!(
            rest,
            [&[0, 1][..], &string(b"N0CALL"), &[0, 1], &string(b"OPUS")].concat()
        );
    }
    // A wrong key, and (19.09 only) protocol 2.0: an error, no login.
    let frames = tokio::task::spawn_blocking(move || log_in(port, 1, "N0CALL", "a wrong key"))
        .await
        .expect("client");
    assert_eq!(frames[0].0, 13, "{frames:?}");
    assert_eq!(error_text(&frames[0].1), "Access denied");
    if version == SvxReflectorVersion::V19_09 {
        let frames = tokio::task::spawn_blocking(move || log_in(port, 2, "N0CALL", "a shared key"))
            .await
            .expect("client");
        assert_eq!(frames[0].0, 13, "{frames:?}");
        assert_eq!(error_text(&frames[0].1), "Unsupported protocol version 2.0");
    }
}

#[tokio::test]
async fn a_node_logs_in_to_svxreflector_19_09_with_protocol_1_only() {
    a_node_logs_in_with_its_key(SvxReflectorVersion::V19_09).await;
}

#[tokio::test]
async fn a_node_logs_in_to_svxreflector_24_02_with_protocol_1_or_2() {
    a_node_logs_in_with_its_key(SvxReflectorVersion::V24_02).await;
}
