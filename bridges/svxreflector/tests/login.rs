//! This crate's messages against Debian's real reflectors (19.09.2 and 24.02):
//! a node logs in with its key and reads the server info; a wrong key, and
//! protocol 2.0 on 19.09.2, are refused with the reflector's own words.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use walkie_harness::{SvxReflector, SvxReflectorVersion};
use walkie_svxreflector::{auth_digest, TcpMsg};

fn next(stream: &mut TcpStream, v2: bool) -> TcpMsg {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("frame length");
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).expect("frame");
    TcpMsg::decode(&payload, v2).expect("a message this crate reads")
}

/// Logs in as N0CALL with `key` speaking protocol `major`.0: what follows the
/// response (AuthOk and ServerInfo), or the error that came instead.
fn log_in(port: u16, major: u16, key: &str) -> Vec<TcpMsg> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(&TcpMsg::ProtoVer { major, minor: 0 }.to_frame())
        .expect("send");
    let challenge = match next(&mut stream, major >= 2) {
        TcpMsg::AuthChallenge { challenge } => challenge,
        other => return vec![other],
    };
    let response = TcpMsg::AuthResponse {
        callsign: "N0CALL".into(),
        digest: auth_digest(key, &challenge),
    };
    stream.write_all(&response.to_frame()).expect("send");
    match next(&mut stream, major >= 2) {
        TcpMsg::AuthOk => vec![TcpMsg::AuthOk, next(&mut stream, major >= 2)],
        other => vec![other],
    }
}

async fn logs_in(version: SvxReflectorVersion, major: u16) {
    let reflector = SvxReflector::builder(version)
        .node("N0CALL", "a shared key")
        .start()
        .await
        .expect("starts");
    let port = reflector.port();
    let attempt =
        |major, key: &'static str| tokio::task::spawn_blocking(move || log_in(port, major, key));
    let got = attempt(major, "a shared key").await.expect("client");
    assert_eq!(got[0], TcpMsg::AuthOk, "{got:?}");
    match &got[1] {
        TcpMsg::ServerInfo { nodes, codecs, .. } => {
            assert_eq!(nodes, &["N0CALL"]);
            assert_eq!(codecs, &["OPUS"]);
        }
        other => panic!("expected ServerInfo, got {other:?}"),
    }
    let denied = attempt(major, "a wrong key").await.expect("client");
    assert_eq!(
        denied,
        [TcpMsg::Error {
            message: "Access denied".into()
        }]
    );
    if version == SvxReflectorVersion::V19_09 {
        // 19.09.2 knows protocol 1.0 only, and says so.
        let refused = attempt(2, "a shared key").await.expect("client");
        assert_eq!(
            refused,
            [TcpMsg::Error {
                message: "Unsupported protocol version 2.0".into()
            }]
        );
    }
}

#[tokio::test]
async fn protocol_1_logs_in_to_19_09() {
    logs_in(SvxReflectorVersion::V19_09, 1).await;
}

#[tokio::test]
async fn protocol_2_logs_in_to_24_02() {
    logs_in(SvxReflectorVersion::V24_02, 2).await;
}
