//! Against a real murmurd (Debian's mumble-server 1.3.4): two of our clients
//! in one channel, voice over UDP and through the TCP tunnel, users, text,
//! a client certificate, and a clear error for a channel that does not exist.

#[path = "../../endpoint/tests/common/mod.rs"]
mod common;
mod launcher;

use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder, FRAME_SAMPLES};
use walkie_mumble::{
    ConnectConfig, Connection, ConnectionHandle, DisconnectReason, Event, MumbleError, Transport,
    TransportMode, VoiceFormat,
};

use launcher::{MumbleServer, Murmurd};
use walkie_harness::on_every_mumble_server;

const FRAMES: usize = 100;
const WAIT: Duration = Duration::from_secs(15);

fn config(server: &Murmurd, user: &str, mode: TransportMode) -> ConnectConfig {
    let mut c = ConnectConfig::new(server.server(), user, "Root");
    c.accept_invalid_cert = true;
    c.transport = mode;
    c
}

async fn connect(
    server: &Murmurd,
    user: &str,
    mode: TransportMode,
) -> (ConnectionHandle, mpsc::Receiver<Event>) {
    match Connection::connect(config(server, user, mode)).await {
        Ok(c) => c,
        Err(e) => panic!("{user} cannot connect: {e}\nmurmurd log:\n{}", server.log()),
    }
}

async fn wait_for_transport(handle: &ConnectionHandle, want: Transport) {
    let mut w = handle.watch_transport();
    tokio::time::timeout(WAIT, w.wait_for(|t| *t == want))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "transport never became {want:?} (stats {:?})",
                handle.stats()
            )
        })
        .expect("connection task alive");
}

/// Counters are bumped by the connection task as it hands a packet to the socket,
/// which can be a moment after the far side already has it: wait for them to
/// settle on what the test expects (or show what they are).
async fn wait_for_tx(handle: &ConnectionHandle, tunnel: u64, udp: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = handle.stats();
        if (s.voice_tx_tunnel, s.voice_tx_udp) == (tunnel, udp) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {tunnel} tunnelled and {udp} UDP voice packets sent: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first event matching `f`, skipping others.
async fn next_matching<T>(
    rx: &mut mpsc::Receiver<Event>,
    mut f: impl FnMut(Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.expect("event stream ended");
            if let Some(t) = f(ev) {
                return t;
            }
        }
    })
    .await
    .expect("expected event did not arrive")
}

fn speech_packets() -> (Vec<i16>, Vec<Bytes>) {
    let pcm: Vec<i16> = common::speech(48_000)
        .into_iter()
        .take(FRAMES * FRAME_SAMPLES)
        .collect();
    assert_eq!(pcm.len(), FRAMES * FRAME_SAMPLES);
    let mut enc = OpusEncoder::new().expect("encoder");
    let packets = frames_of(&pcm)
        .map(|f| enc.encode(&f).expect("encode"))
        .collect();
    (pcm, packets)
}

struct Received {
    session: u32,
    name: String,
    seq: u64,
    opus: Bytes,
    terminator: bool,
    transport: Transport,
}

/// A talks, B listens: 100 frames paced in real time (murmurd enforces a
/// bandwidth limit), terminator on the last.
async fn talk_and_listen(
    a: &ConnectionHandle,
    b_rx: &mut mpsc::Receiver<Event>,
) -> (Vec<i16>, Vec<Bytes>, Vec<Received>) {
    let (pcm, packets) = speech_packets();
    let sender = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, p) in packets.iter().enumerate() {
            tick.tick().await;
            a.send_voice(p, i + 1 == packets.len())
                .await
                .expect("send voice");
        }
    };
    let receiver = async {
        let mut got = Vec::new();
        loop {
            let r = next_matching(b_rx, |ev| match ev {
                Event::Voice {
                    session,
                    name,
                    seq,
                    opus,
                    terminator,
                    transport,
                } => Some(Received {
                    session: session.0,
                    name,
                    seq,
                    opus,
                    terminator,
                    transport,
                }),
                Event::Disconnected { reason } => panic!("B disconnected: {reason}"),
                _ => None,
            })
            .await;
            let last = r.terminator;
            got.push(r);
            if last {
                return got;
            }
        }
    };
    let ((), got) = tokio::join!(sender, receiver);
    (pcm, packets, got)
}

fn check_stream(
    a: &ConnectionHandle,
    sent: &[Bytes],
    got: &[Received],
    pcm: &[i16],
    via: Transport,
) {
    assert_eq!(got.len(), sent.len(), "packets received");
    for (i, (r, s)) in got.iter().zip(sent).enumerate() {
        assert_eq!(r.session, a.our_session().0, "packet {i} sender");
        assert_eq!(r.name, "alice");
        assert_eq!(&r.opus, s, "packet {i} passed through untouched");
        assert_eq!(
            r.terminator,
            i + 1 == sent.len(),
            "terminator only on the last"
        );
        assert_eq!(r.transport, via, "packet {i} transport");
    }
    // 20 ms packets advance the sequence by two 10 ms units.
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 2, "sequence numbers");
    }

    let mut dec = OpusDecoder::new().expect("decoder");
    let decoded: Vec<i16> = got
        .iter()
        .flat_map(|r| dec.decode(&r.opus).expect("decode"))
        .collect();
    let (lag, corr) = common::best_lag(pcm, &decoded, 0..=1200);
    assert!(
        corr > 0.8,
        "decoded audio correlates with the source: {corr:.3} at lag {lag}"
    );
    let (src_db, out_db) = (common::energy_db(pcm), common::energy_db(&decoded));
    assert!(
        (src_db - out_db).abs() < 3.0,
        "energy {src_db:.1} dB in, {out_db:.1} dB out"
    );
}

/// Relays TCP from `front` to `upstream`; UDP to the same port goes nowhere
/// until [`udp_relay`] is started on it.
async fn tcp_relay(front: tokio::net::TcpListener, upstream: String) {
    while let Ok((mut inbound, _)) = front.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Relays datagrams between one client on `front` and `upstream`. murmurd
/// sees them from another port, and finds the user by trial decryption, as
/// it does for clients behind NAT.
async fn udp_relay(front: tokio::net::UdpSocket, upstream: String) {
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    back.connect(upstream).await.expect("connect");
    let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut client = None;
    loop {
        tokio::select! {
            Ok((n, from)) = front.recv_from(&mut a) => {
                client = Some(from);
                let _ = back.send(&a[..n]).await;
            }
            Ok(n) = back.recv(&mut b) => {
                if let Some(c) = client {
                    let _ = front.send_to(&b[..n], c).await;
                }
            }
        }
    }
}

/// Sends `n` paced frames from `a`; returns how many `b_rx` received and
/// through which transport.
async fn burst(a: &ConnectionHandle, b_rx: &mut mpsc::Receiver<Event>, n: usize) -> Vec<Transport> {
    let (_, packets) = speech_packets();
    let sender = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, p) in packets.iter().take(n).enumerate() {
            tick.tick().await;
            a.send_voice(p, i + 1 == n).await.expect("send voice");
        }
    };
    let receiver = async {
        let mut via = Vec::new();
        loop {
            let (t, last) = next_matching(b_rx, |ev| match ev {
                Event::Voice {
                    transport,
                    terminator,
                    ..
                } => Some((transport, terminator)),
                _ => None,
            })
            .await;
            via.push(t);
            if last {
                return via;
            }
        }
    };
    tokio::join!(sender, receiver).1
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    voice_over_udp_reaches_the_other_client,
    voice_through_the_tcp_tunnel,
    users_text_comment_and_disconnect,
    client_certificate_is_presented,
    unknown_channel_and_untrusted_certificate_are_refused,
    falls_back_to_the_tunnel_and_back_to_udp,
    transmissions_one_after_another_all_arrive,
);

async fn voice_over_udp_reaches_the_other_client(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let (alice, _alice_rx) = connect(&server, "alice", TransportMode::Auto).await;
    let (bob, mut bob_rx) = connect(&server, "bob", TransportMode::Auto).await;
    // murmurd 1.3.4 announces 1.3.4: we stay with the legacy format. 1.5
    // announces 1.5.x: protobuf voice both ways (the server would translate
    // for a legacy client, so this is the format really on the wire).
    let announced = alice
        .server_version()
        .expect("the server announced a version");
    let kind = server.kind();
    let want = match kind {
        MumbleServer::Murmur1_3 => VoiceFormat::Legacy,
        MumbleServer::Mumble1_5 => VoiceFormat::Protobuf,
    };
    assert_eq!(
        (announced.major, announced.minor),
        (kind.version().0 as u16, kind.version().1 as u16),
        "{announced:?}"
    );
    assert_eq!(alice.voice_format(), want);
    assert_eq!(bob.voice_format(), want);
    // Only after both have heard a UDP pong does the server know where to
    // send, and do we send, over UDP.
    wait_for_transport(&alice, Transport::Udp).await;
    wait_for_transport(&bob, Transport::Udp).await;

    let (pcm, sent, got) = talk_and_listen(&alice, &mut bob_rx).await;
    check_stream(&alice, &sent, &got, &pcm, Transport::Udp);

    wait_for_tx(&alice, 0, FRAMES as u64).await;
    let (sa, sb) = (alice.stats(), bob.stats());
    assert_eq!(sa.voice_tx_udp, FRAMES as u64, "{sa:?}");
    assert_eq!(sa.voice_tx_tunnel, 0, "{sa:?}");
    assert_eq!(sb.voice_rx_udp, FRAMES as u64, "{sb:?}");
    assert_eq!(sb.voice_rx_tunnel, 0, "{sb:?}");
    assert!(sb.udp_pongs > 0 && sa.udp_pongs > 0);
    assert_eq!(sa.decrypt_failures + sb.decrypt_failures, 0);
    assert_eq!(sa.bad_input + sb.bad_input, 0);
}

async fn voice_through_the_tcp_tunnel(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let (alice, _alice_rx) = connect(&server, "alice", TransportMode::TcpOnly).await;
    let (bob, mut bob_rx) = connect(&server, "bob", TransportMode::TcpOnly).await;
    assert_eq!(alice.transport(), Transport::Tunnel);

    let (pcm, sent, got) = talk_and_listen(&alice, &mut bob_rx).await;
    check_stream(&alice, &sent, &got, &pcm, Transport::Tunnel);

    wait_for_tx(&alice, FRAMES as u64, 0).await;
    let (sa, sb) = (alice.stats(), bob.stats());
    assert_eq!(sa.voice_tx_tunnel, FRAMES as u64, "{sa:?}");
    assert_eq!(sa.voice_tx_udp, 0, "{sa:?}");
    assert_eq!(sb.voice_rx_tunnel, FRAMES as u64, "{sb:?}");
    assert_eq!(sb.udp_pongs, 0, "no UDP socket in TcpOnly mode");
}

async fn users_text_comment_and_disconnect(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let (bob, mut bob_rx) = connect(&server, "bob", TransportMode::Auto).await;
    assert!(bob.users_in_channel().is_empty());

    let (alice, mut alice_rx) = connect(&server, "alice", TransportMode::Auto).await;
    let joined = next_matching(&mut bob_rx, |ev| match ev {
        Event::UserJoined {
            session,
            name,
            channel_path,
            ..
        } => Some((session, name, channel_path)),
        _ => None,
    })
    .await;
    assert_eq!(
        joined,
        (alice.our_session(), "alice".to_owned(), "Root".to_owned())
    );
    let names: Vec<String> = bob.users_in_channel().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice"]);
    let names: Vec<String> = alice
        .users_in_channel()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["bob"]);

    alice
        .send_text_to_user(bob.our_session(), "the floor is taken by carol")
        .await
        .expect("send text");
    let text = next_matching(&mut bob_rx, |ev| match ev {
        Event::TextMessage {
            from_session,
            from_name,
            message,
        } => Some((from_session, from_name, message)),
        _ => None,
    })
    .await;
    assert_eq!(
        text,
        (
            alice.our_session(),
            "alice".to_owned(),
            "the floor is taken by carol".to_owned()
        )
    );

    // The server applies bob's messages in order and relays the comment
    // before the text: once alice has the text, her roster has the comment.
    bob.set_comment("talker: carol").await.expect("set comment");
    bob.send_text_to_user(alice.our_session(), "done")
        .await
        .expect("text");
    next_matching(&mut alice_rx, |ev| {
        matches!(ev, Event::TextMessage { .. }).then_some(())
    })
    .await;
    let bob_seen = alice
        .users()
        .into_iter()
        .find(|u| u.session == bob.our_session())
        .expect("alice sees bob");
    assert_eq!(bob_seen.comment.as_deref(), Some("talker: carol"));

    let alice_session = alice.our_session();
    alice.disconnect().await;
    let left = next_matching(&mut alice_rx, |ev| match ev {
        Event::Disconnected { reason } => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(left, DisconnectReason::Requested);
    let gone = next_matching(&mut bob_rx, |ev| match ev {
        Event::UserLeft { session, name, .. } => Some((session, name)),
        _ => None,
    })
    .await;
    assert_eq!(gone, (alice_session, "alice".to_owned()));
    assert!(bob.users_in_channel().is_empty());
}

async fn client_certificate_is_presented(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("cert.der"),
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl CLI (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req".as_ref(),
        "-x509".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:prime256v1".as_ref(),
        "-nodes".as_ref(),
        "-days".as_ref(),
        "2".as_ref(),
        "-subj".as_ref(),
        "/CN=walkie-test".as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    run(&[
        "x509".as_ref(),
        "-in".as_ref(),
        cert.as_os_str(),
        "-outform".as_ref(),
        "DER".as_ref(),
        "-out".as_ref(),
        der.as_os_str(),
    ]);
    let expected: String = Sha1::digest(std::fs::read(&der).expect("der"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let mut c = config(&server, "certified", TransportMode::Auto);
    c.client_cert = Some((cert, key));
    let (alice, _rx) = Connection::connect(c)
        .await
        .expect("connect with client certificate");
    let (bob, _bob_rx) = connect(&server, "bob", TransportMode::Auto).await;
    let seen = bob
        .users()
        .into_iter()
        .find(|u| u.session == alice.our_session())
        .expect("bob sees alice");
    assert_eq!(seen.cert_hash.as_deref(), Some(expected.as_str()));
}

async fn unknown_channel_and_untrusted_certificate_are_refused(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let mut c = config(&server, "lost", TransportMode::Auto);
    c.channel = "Root/Nowhere".into();
    match Connection::connect(c).await {
        Err(MumbleError::NoSuchChannel { wanted, known }) => {
            assert_eq!(wanted, "Root/Nowhere");
            assert!(known.contains("Root"), "{known}");
        }
        other => panic!("expected NoSuchChannel, got {other:?}"),
    }
    // murmurd's self-signed certificate is refused unless explicitly accepted.
    let mut c = config(&server, "careful", TransportMode::Auto);
    c.accept_invalid_cert = false;
    match Connection::connect(c).await {
        Err(MumbleError::Tls { .. }) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

async fn falls_back_to_the_tunnel_and_back_to_udp(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = front.local_addr().expect("addr").port();
    tokio::spawn(tcp_relay(front, server.server()));

    // Alice reaches the server only by TCP: her UDP pings go to a closed port.
    let mut c = config(&server, "alice", TransportMode::Auto);
    c.server = format!("127.0.0.1:{port}");
    let (alice, _alice_rx) = Connection::connect(c).await.expect("alice via relay");
    let (bob, mut bob_rx) = connect(&server, "bob", TransportMode::Auto).await;
    wait_for_transport(&bob, Transport::Udp).await;

    let via = burst(&alice, &mut bob_rx, 10).await;
    assert_eq!(via.len(), 10, "all frames arrive");
    wait_for_tx(&alice, 10, 0).await;
    assert_eq!(alice.stats().udp_pongs, 0, "{:?}", alice.stats());
    assert_eq!(alice.transport(), Transport::Tunnel);

    // UDP starts getting through: alice's next pings are answered.
    let udp_front = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .expect("bind udp");
    let relay = tokio::spawn(udp_relay(udp_front, server.server()));
    wait_for_transport(&alice, Transport::Udp).await;
    let via = burst(&alice, &mut bob_rx, 10).await;
    assert_eq!(via.len(), 10);
    wait_for_tx(&alice, 10, 10).await;

    // And stops again: alice notices within the UDP timeout and tunnels.
    relay.abort();
    let _ = relay.await;
    wait_for_transport(&alice, Transport::Tunnel).await;
    let via = burst(&alice, &mut bob_rx, 10).await;
    assert_eq!(via.len(), 10, "frames still arrive after UDP died");
    wait_for_tx(&alice, 20, 10).await;
}

/// Short transmissions back to back (each ending with a terminator), as a radio
/// net has them: every frame of every one arrives, whatever the transport.
async fn transmissions_one_after_another_all_arrive(server: MumbleServer) {
    let server = Murmurd::start(server).await;
    let (alice, _alice_rx) = connect(&server, "alice", TransportMode::Auto).await;
    let (_bob, mut bob_rx) = connect(&server, "bob", TransportMode::Auto).await;
    let (_, packets) = speech_packets();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for tx in 0..10 {
        for (i, p) in packets.iter().skip(tx * 10).take(10).enumerate() {
            tick.tick().await;
            alice.send_voice(p, i == 9).await.expect("send voice");
        }
        let mut frames = 0;
        loop {
            let terminator = next_matching(&mut bob_rx, |ev| match ev {
                Event::Voice { terminator, .. } => Some(terminator),
                Event::Disconnected { reason } => panic!("bob disconnected: {reason}"),
                _ => None,
            })
            .await;
            frames += 1;
            if terminator {
                break;
            }
        }
        assert_eq!(frames, 10, "transmission {tx}: {:?}", alice.stats());
    }
}
