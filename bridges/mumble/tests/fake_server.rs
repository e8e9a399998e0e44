//! Our client against a scripted fake Mumble server over real TLS and real
//! OCB2-encrypted UDP: a 1.5/1.6 server must get the protobuf voice format
//! (Mumble ≥ 1.5 is not packaged here — Debian ships murmurd 1.3.4), a 1.4
//! server the legacy one. The fake server announces its version, checks the
//! version we announce, and speaks the negotiated format on UDP and in the
//! tunnel using the crate's own codecs (whose bytes the unit tests pin to
//! `MumbleUDP.proto`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use walkie_mumble::crypt::CryptState;
use walkie_mumble::proto::{self, MessageType};
use walkie_mumble::tcp::{self, Decoded, Frame, FrameDecoder};
use walkie_mumble::voice::{AudioPacket, Direction, VoicePacket};
use walkie_mumble::{
    voice_v2, ConnectConfig, Connection, ConnectionHandle, Event, MumbleVersion, Session,
    Transport, VoiceFormat,
};

const WAIT: Duration = Duration::from_secs(10);
const KEY: [u8; 16] = [7; 16];
const CLIENT_NONCE: [u8; 16] = [1; 16];
const SERVER_NONCE: [u8; 16] = [2; 16];

fn acceptor(dir: &tempfile::TempDir) -> TlsAcceptor {
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=fake-mumble", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl CLI (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

struct Control {
    tls: TlsStream<tokio::net::TcpStream>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Control {
    async fn send<M: Message>(&mut self, kind: MessageType, m: &M) {
        self.raw(kind, &m.encode_to_vec()).await;
    }

    async fn raw(&mut self, kind: MessageType, payload: &[u8]) {
        let mut out = BytesMut::new();
        tcp::encode(kind as u16, payload, &mut out);
        self.tls.write_all(&out).await.expect("write");
        self.tls.flush().await.expect("flush");
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(Decoded::Frame(f)) = self.decoder.decode(&mut self.buf) {
                return f;
            }
            self.buf.reserve(4096);
            let n = self.tls.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "client closed the control connection");
        }
    }
}

/// What the server announces: `version_v2` and/or `version_v1`.
#[derive(Clone, Copy)]
struct Announce {
    v1: Option<u32>,
    v2: Option<u64>,
}

/// A client logged in to the fake server, its UDP path confirmed.
struct LoggedIn {
    _dir: tempfile::TempDir,
    ctl: Control,
    udp: UdpSocket,
    crypt: CryptState,
    peer: std::net::SocketAddr,
    handle: ConnectionHandle,
    events: tokio::sync::mpsc::Receiver<Event>,
}

async fn log_in(server: Announce, expect: VoiceFormat) -> LoggedIn {
    let dir = tempfile::tempdir().expect("tempdir");
    let acceptor = acceptor(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // murmurd uses the same port for UDP.
    let udp = UdpSocket::bind(addr).await.expect("udp bind");

    let mut config = ConnectConfig::new(addr.to_string(), "walkie", "Root");
    config.accept_invalid_cert = true;
    let client = tokio::spawn(Connection::connect(config));

    // --- TLS control channel: Version first, as murmurd does. ---
    let (tcp, _) = listener.accept().await.expect("accept");
    let tls = acceptor.accept(tcp).await.expect("TLS accept");
    let mut ctl = Control {
        tls,
        buf: BytesMut::new(),
        decoder: FrameDecoder::default(),
    };
    ctl.send(
        MessageType::Version,
        &proto::Version {
            version: server.v1,
            version_v2: server.v2,
            release: Some("fake".into()),
            ..Default::default()
        },
    )
    .await;
    let mut announced = None;
    loop {
        let f = ctl.frame().await;
        match MessageType::from_u16(f.kind) {
            Some(MessageType::Version) => {
                announced = Some(proto::Version::decode(f.payload).expect("client Version"))
            }
            Some(MessageType::Authenticate) => break,
            _ => {}
        }
    }
    let announced = announced.expect("the client sent its Version before Authenticate");
    let want = expect.announce();
    assert_eq!(announced.version_v2, Some(want.v2()), "{announced:?}");
    assert_eq!(announced.version, Some(want.v1()), "{announced:?}");
    assert_eq!(
        MumbleVersion::of(&announced).map(|v| v >= MumbleVersion::PROTOBUF_INTRODUCTION),
        Some(expect == VoiceFormat::Protobuf)
    );

    ctl.send(
        MessageType::CryptSetup,
        &proto::CryptSetup {
            key: Some(KEY.to_vec()),
            client_nonce: Some(CLIENT_NONCE.to_vec()),
            server_nonce: Some(SERVER_NONCE.to_vec()),
        },
    )
    .await;
    ctl.send(
        MessageType::ChannelState,
        &proto::ChannelState {
            channel_id: Some(0),
            name: Some("Root".into()),
            ..Default::default()
        },
    )
    .await;
    for (session, name) in [(2, "alice"), (1, "walkie")] {
        ctl.send(
            MessageType::UserState,
            &proto::UserState {
                session: Some(session),
                name: Some(name.into()),
                channel_id: Some(0),
                ..Default::default()
            },
        )
        .await;
    }
    ctl.send(
        MessageType::ServerSync,
        &proto::ServerSync {
            session: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (handle, events) = tokio::time::timeout(WAIT, client)
        .await
        .expect("log-in in time")
        .expect("client task")
        .expect("log-in");
    assert_eq!(handle.voice_format(), expect);

    // --- UDP: the first datagram is a ping in the negotiated format. ---
    let mut crypt = CryptState::new(KEY, SERVER_NONCE, CLIENT_NONCE);
    let mut dgram = [0u8; 2048];
    let (n, peer) = tokio::time::timeout(WAIT, udp.recv_from(&mut dgram))
        .await
        .expect("UDP ping in time")
        .expect("recv");
    let plain = crypt.decrypt(&dgram[..n]).expect("decrypts");
    let ping_type = match expect {
        VoiceFormat::Protobuf => voice_v2::TYPE_PING,
        VoiceFormat::Legacy => 1 << 5,
    };
    assert_eq!(plain.first(), Some(&ping_type), "{plain:02x?}");
    let Ok(VoicePacket::Ping { timestamp }) = expect.decode(&plain, Direction::ToServer) else {
        panic!("not a ping: {plain:02x?}");
    };
    let pong = crypt.encrypt(&expect.to_vec(&VoicePacket::Ping { timestamp }));
    udp.send_to(&pong, peer).await.expect("pong");
    let mut w = handle.watch_transport();
    tokio::time::timeout(WAIT, w.wait_for(|t| *t == Transport::Udp))
        .await
        .expect("switches to UDP")
        .expect("watch");

    LoggedIn {
        _dir: dir,
        ctl,
        udp,
        crypt,
        peer,
        handle,
        events,
    }
}

async fn scenario(server: Announce, expect: VoiceFormat) {
    let LoggedIn {
        _dir,
        mut ctl,
        udp,
        mut crypt,
        peer,
        handle,
        mut events,
    } = log_in(server, expect).await;
    let mut dgram = [0u8; 2048];
    // --- Server → client, over UDP and through the tunnel. ---
    let from_alice = |seq: u64, terminator: bool| {
        expect.to_vec(&VoicePacket::Audio(AudioPacket {
            target: 0,
            session: Some(2),
            seq,
            opus: bytes::Bytes::from_static(&[0xF8, 0x11, 0x22]),
            terminator,
            position: None,
        }))
    };
    // One at a time: UDP and the tunnel race each other.
    for (seq, terminator, transport) in [(40, false, Transport::Udp), (42, true, Transport::Tunnel)]
    {
        match transport {
            Transport::Udp => {
                let sealed = crypt.encrypt(&from_alice(seq, terminator));
                udp.send_to(&sealed, peer).await.expect("send");
            }
            Transport::Tunnel => {
                ctl.raw(MessageType::UdpTunnel, &from_alice(seq, terminator))
                    .await
            }
        }
        let ev = loop {
            match tokio::time::timeout(WAIT, events.recv()).await {
                Ok(Some(Event::Voice {
                    session,
                    name,
                    seq,
                    opus,
                    terminator,
                    transport,
                })) => break (session, name, seq, opus, terminator, transport),
                Ok(Some(_)) => continue,
                other => panic!("no voice event: {other:?}"),
            }
        };
        assert_eq!(
            ev,
            (
                Session(2),
                "alice".to_owned(),
                seq,
                bytes::Bytes::from_static(&[0xF8, 0x11, 0x22]),
                terminator,
                transport
            )
        );
    }

    // --- Client → server over UDP (both arrive there), an empty terminator last. ---
    handle.send_voice(&[0xF8, 0xAA], false).await.expect("send");
    handle.send_voice(&[], true).await.expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        let (n, _) = tokio::time::timeout(WAIT, udp.recv_from(&mut dgram))
            .await
            .expect("voice in time")
            .expect("recv");
        let plain = crypt.decrypt(&dgram[..n]).expect("decrypts");
        match expect.decode(&plain, Direction::ToServer) {
            Ok(VoicePacket::Audio(a)) => got.push(a),
            Ok(VoicePacket::Ping { .. }) => {}
            Err(e) => panic!("undecodable voice from the client ({e}): {plain:02x?}"),
        }
    }
    assert_eq!((got[0].seq, &got[0].opus[..]), (0, &[0xF8, 0xAA][..]));
    assert_eq!(
        (got[0].target, got[0].session, got[0].terminator),
        (0, None, false)
    );
    // 0xF8: 20 ms → the sequence steps by 2. A 1.5 server drops protobuf
    // audio without payload, so the empty terminator carries 20 ms of silence.
    let terminator_opus: &[u8] = match expect {
        VoiceFormat::Protobuf => &voice_v2::OPUS_SILENCE,
        VoiceFormat::Legacy => &[],
    };
    assert_eq!(
        (got[1].seq, &got[1].opus[..], got[1].terminator),
        (2, terminator_opus, true)
    );
    let stats = handle.stats();
    assert_eq!(stats.bad_input, 0, "{stats:?}");
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_1_5_gets_protobuf_voice() {
    let v = MumbleVersion::new(1, 5, 735);
    scenario(
        Announce {
            v1: Some(v.v1()),
            v2: Some(v.v2()),
        },
        VoiceFormat::Protobuf,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_1_6_gets_protobuf_voice() {
    let v = MumbleVersion::new(1, 6, 0);
    scenario(
        Announce {
            v1: Some(v.v1()),
            v2: Some(v.v2()),
        },
        VoiceFormat::Protobuf,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_1_4_without_version_v2_gets_legacy_voice() {
    scenario(
        Announce {
            v1: Some(MumbleVersion::new(1, 4, 287).v1()),
            v2: None,
        },
        VoiceFormat::Legacy,
    )
    .await;
}

/// xorshift: reproducible garbage without a dependency.
fn garbage(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// A server (or anyone on the path) sending garbage: random datagrams, sealed
/// datagrams that hold no voice packet, unknown and malformed control messages.
/// Each is counted and dropped, the connection goes on carrying voice; a control
/// stream whose framing is broken ends the connection cleanly, with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_server_is_counted_and_dropped_and_the_connection_lives_on() {
    let expect = VoiceFormat::Legacy;
    let v = MumbleVersion::new(1, 4, 0);
    let LoggedIn {
        _dir,
        mut ctl,
        udp,
        mut crypt,
        peer,
        handle,
        mut events,
    } = log_in(
        Announce {
            v1: Some(v.v1()),
            v2: None,
        },
        expect,
    )
    .await;
    let before = handle.stats();
    for i in 0..50u32 {
        udp.send_to(&garbage(i + 1, (i as usize * 7) % 300), peer)
            .await
            .expect("send");
    }
    for i in 0..20u32 {
        // Sealed with the right key, but no voice packet inside.
        let sealed = crypt.encrypt(&garbage(1000 + i, 1 + (i as usize * 13) % 100));
        udp.send_to(&sealed, peer).await.expect("send");
    }
    ctl.raw(MessageType::UserState, &garbage(7, 64)).await;
    ctl.raw(MessageType::TextMessage, &[0xFF; 16]).await;
    ctl.tls
        .write_all(&{
            let mut frame = BytesMut::new();
            tcp::encode(999, &garbage(9, 32), &mut frame);
            frame
        })
        .await
        .expect("write");
    // Voice after all that still arrives.
    let voice = expect.to_vec(&VoicePacket::Audio(AudioPacket {
        target: 0,
        session: Some(2),
        seq: 80,
        opus: bytes::Bytes::from_static(&[0xF8, 0x01]),
        terminator: false,
        position: None,
    }));
    ctl.raw(MessageType::UdpTunnel, &voice).await;
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Event::Voice { seq, .. })) => {
                assert_eq!(seq, 80);
                break;
            }
            Ok(Some(Event::Disconnected { reason })) => {
                panic!("disconnected by garbage: {reason:?}")
            }
            Ok(Some(_)) => {}
            other => panic!("no voice after the garbage: {other:?}"),
        }
    }
    let after = handle.stats();
    let dropped =
        (after.bad_input + after.decrypt_failures) - (before.bad_input + before.decrypt_failures);
    println!("garbage counted: {after:?}");
    assert!(
        dropped >= 50,
        "only {dropped} of 73 bad inputs counted: {after:?}"
    );
    assert!(after.bad_input > before.bad_input, "{after:?}");

    // A control stream that claims a 4 GiB message cannot be resynchronised:
    // the connection ends, saying why, instead of allocating or hanging.
    ctl.tls
        .write_all(&[0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF])
        .await
        .expect("write");
    ctl.tls.flush().await.expect("flush");
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Event::Disconnected { reason })) => {
                println!("broken framing: disconnected ({reason:?})");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no disconnect after broken framing: {other:?}"),
        }
    }
}
