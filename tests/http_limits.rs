//! The HTTP listener on `appservice.listen` against people who never finish a
//! request: raw sockets that send nothing, slowloris headers and idle keep-alive
//! connections (issue 13.3). They must not take the descriptors the homeserver's
//! transactions and the live clients need, and each is closed at the header
//! deadline.
//!
//! Runs the real binary under a 1024-descriptor limit (the soft limit a process
//! gets without the unit's `LimitNOFILE`), with the `[http]` defaults.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bridge_common::{
    metric, raise_own_descriptor_limit, setup, spawn_under_default_nofile, Setup, WAIT,
};
use live_common::LiveClient;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use walkie_harness::free_port;

/// The defaults of `[http]` this test relies on.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 256;

/// More than the bridge's 1024 descriptors.
const SILENT: usize = 1100;
const PER_ADDRESS: usize = 10;
const SLOW: usize = 16;
const PER_IP: usize = 16;
const ONE_ADDRESS: usize = 20;

/// Registered with Synapse by the test setup (bridge_common::config_text).
const HS_TOKEN: &str = "hs-token-for-the-matrix-bridge-test";

fn child_config(setup: &Setup, status: u16) -> String {
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!("\n[status]\nlisten = \"127.0.0.1:{status}\"\n"));
    text
}

/// A TCP connection to the bridge's listener from `source` (any 127.0.0.0/8
/// address reaches it on loopback). `None` when the kernel did not even complete
/// the handshake in time (the bridge's accept queue is full).
async fn connect_from(listen: u16, source: IpAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind to a loopback address");
    let target = SocketAddr::from(([127, 0, 0, 1], listen));
    match tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await {
        Ok(Ok(stream)) => Some(stream),
        _ => None,
    }
}

/// Reads until the bridge closes `stream`; how long after `opened` that was, or
/// `None` when it was still open at `limit`.
async fn closed_after(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        let until = tokio::time::Instant::from_std(opened + limit);
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Sends a request head one byte every 200 ms, never finishing it; how long
/// after opening the bridge closed the connection.
async fn slowloris(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let head = b"GET /live/ HTTP/1.1\r\nHost: bridge\r\nX-Slow: ";
    if stream.write_all(head).await.is_err() {
        return Some(opened.elapsed());
    }
    let (mut read, mut write) = stream.into_split();
    let drip = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    let until = tokio::time::Instant::from_std(opened + limit);
    tokio::select! {
        took = closed => Some(took),
        () = drip => Some(opened.elapsed()),
        () = tokio::time::sleep_until(until) => None,
    }
}

fn descriptors(child: &walkie_harness::ChildGuard) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(Iterator::count)
        .unwrap_or(0)
}

fn source(n: usize, subnet: u8) -> IpAddr {
    let address = n / PER_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(
        127,
        subnet + (address / 200) as u8,
        1 + (address % 200) as u8,
        1,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_http_connections_do_not_starve_the_homeserver() {
    raise_own_descriptor_limit(4096);
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let status = free_port();
    let mut child = spawn_under_default_nofile(
        env!("CARGO_BIN_EXE_walkie-bridge"),
        &setup,
        &child_config(&setup, status),
        status,
    )
    .await;
    let limit = HEADER_TIMEOUT + Duration::from_secs(10);

    // Slowloris: heads that never end, from their own addresses.
    let mut slow = JoinSet::new();
    for n in 0..SLOW {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + n as u8));
        let stream = connect_from(setup.listen, from)
            .await
            .expect("a slow client connects");
        let opened = Instant::now();
        slow.spawn(slowloris(stream, opened, limit));
    }

    // From one address, more than its share: the rest closed at once.
    let mut one_address = JoinSet::new();
    for _ in 0..ONE_ADDRESS {
        let stream = connect_from(setup.listen, IpAddr::V4(Ipv4Addr::new(127, 0, 9, 1)))
            .await
            .expect("connects");
        one_address.spawn(closed_after(stream, Instant::now(), limit));
    }

    // Silent sockets, more than the bridge has descriptors, from many addresses
    // (never 127.0.0.1, the homeserver's).
    let flood = Instant::now();
    let mut silent = JoinSet::new();
    let mut not_connected = None;
    for n in 0..SILENT {
        match connect_from(setup.listen, source(n, 2)).await {
            Some(stream) => {
                let opened = Instant::now();
                silent.spawn(closed_after(stream, opened, limit));
            }
            None => {
                // The bridge no longer accepts: on to the homeserver's turn.
                not_connected = Some(n);
                break;
            }
        }
    }
    eprintln!(
        "{} silent sockets opened in {:?}",
        silent.len(),
        flood.elapsed()
    );

    // The homeserver's transaction is still taken, from its address (127.0.0.1).
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(HEADER_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let put = http
        .put(format!(
            "http://127.0.0.1:{}/_matrix/app/v1/transactions/flood-1",
            setup.listen
        ))
        .bearer_auth(HS_TOKEN)
        .json(&json!({ "events": [] }))
        .send()
        .await;
    match put {
        Ok(response) => assert_eq!(
            response.status(),
            reqwest::StatusCode::OK,
            "the transaction was refused"
        ),
        Err(error) => panic!(
            "the homeserver's transaction got no answer during the flood: {error}\n\
             (the bridge holds {} descriptors)\n{}",
            descriptors(&child),
            child.log_tail(20)
        ),
    }

    // A real live client still logs on.
    let talker = tokio::time::timeout(
        WAIT,
        LiveClient::logon_ok(setup.listen, &setup.synapse, &bob),
    )
    .await
    .unwrap_or_else(|_| panic!("no live logon during the flood\n{}", child.log_tail(20)));

    assert_eq!(
        not_connected, None,
        "the bridge stopped accepting connections"
    );
    let open = tokio::time::timeout(WAIT, metric(status, "walkie_http_connections"))
        .await
        .ok()
        .flatten();
    let descriptors = descriptors(&child);
    eprintln!("the bridge holds {descriptors} descriptors, {open:?} HTTP connections");
    assert!(
        open.is_some_and(|open| open <= MAX_CONNECTIONS as f64),
        "open HTTP connections: {open:?} (cap {MAX_CONNECTIONS})"
    );
    assert!(
        descriptors < 900,
        "the bridge holds {descriptors} of its 1024 descriptors"
    );

    // Each silent socket is closed: at once over the cap, else at the deadline.
    let mut at_once = 0;
    let mut at_deadline = Vec::new();
    while let Some(closed) = silent.join_next().await {
        match closed.expect("reader task") {
            Some(took) if took < Duration::from_secs(2) => at_once += 1,
            Some(took) => at_deadline.push(took),
            None => panic!(
                "a silent socket was still open {limit:?} after it opened\n{}",
                child.log_tail(20)
            ),
        }
    }
    let earliest = at_deadline.iter().min().copied();
    let latest = at_deadline.iter().max().copied();
    eprintln!(
        "silent sockets: {at_once} closed at once, {} at the deadline ({earliest:?}..{latest:?})",
        at_deadline.len()
    );
    assert!(
        !at_deadline.is_empty(),
        "no silent socket was served at all"
    );
    assert!(
        earliest.is_some_and(|t| t >= HEADER_TIMEOUT - Duration::from_millis(500))
            && latest.is_some_and(|t| t <= HEADER_TIMEOUT + Duration::from_secs(5)),
        "silent sockets closed after {earliest:?}..{latest:?}, not at the {HEADER_TIMEOUT:?} deadline"
    );
    let mut from_one = Vec::new();
    while let Some(closed) = one_address.join_next().await {
        from_one.push(closed.expect("reader task").expect("closed in time"));
    }
    let refused = from_one
        .iter()
        .filter(|t| **t < Duration::from_secs(2))
        .count();
    assert_eq!(
        refused,
        ONE_ADDRESS - PER_IP,
        "one address gets {PER_IP} connections: {from_one:?}"
    );
    while let Some(closed) = slow.join_next().await {
        let took = closed
            .expect("slowloris task")
            .unwrap_or_else(|| panic!("a slow header was still being read after {limit:?}"));
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(500)
                && took <= HEADER_TIMEOUT + Duration::from_secs(5),
            "a slow header was cut after {took:?}, not at the {HEADER_TIMEOUT:?} deadline"
        );
    }

    // An idle keep-alive connection is closed at the same deadline.
    let mut kept = TcpStream::connect(("127.0.0.1", setup.listen))
        .await
        .expect("connects");
    kept.write_all(b"GET /nowhere HTTP/1.1\r\nHost: bridge\r\n\r\n")
        .await
        .expect("request sent");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("M_UNRECOGNIZED") {
        let n = tokio::time::timeout(WAIT, kept.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let took = closed_after(kept, answered, limit)
        .await
        .expect("the idle keep-alive connection was closed");
    eprintln!("idle keep-alive connection closed {took:?} after its answer");
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed after {took:?}"
    );

    assert!(child.is_running(), "{}", child.log_tail(20));
    talker.close().await;
}

/// Shutting down closes connections that have not sent a byte at once, instead
/// of waiting for their header deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_silent_sockets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("walkie.db").display());
    let store = walkie_bridge::store::Store::connect(&url)
        .await
        .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("bound");
    let config = bridge_common::load(&bridge_common::config_text(
        "http://127.0.0.1:1",
        address.port(),
        dir.path(),
    ));
    let (tx, _events) = tokio::sync::mpsc::channel(8);
    let server = walkie_bridge::matrix::AppserviceServer::new(
        &config.appservice,
        bridge_common::SERVER,
        store,
        tx,
    )
    .expect("server");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));

    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(address).await.expect("connects"));
    }
    // One accept loop takes connections in order: once a later one is answered,
    // the silent ones are being served.
    let answered = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
        .get(format!("http://{address}/nowhere"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answered.status(), reqwest::StatusCode::NOT_FOUND);

    let stopping = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(HEADER_TIMEOUT / 2, task)
        .await
        .expect("the server stopped before the silent sockets' deadline")
        .expect("server task")
        .expect("the server stopped cleanly");
    for stream in silent {
        closed_after(stream, stopping, Duration::from_secs(1))
            .await
            .expect("a silent socket is closed at shutdown");
    }
    eprintln!("stopped in {:?}", stopping.elapsed());
}
