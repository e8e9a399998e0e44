//! Integration-test harness for walkie-bridge.
//!
//! Starts a real Synapse on 127.0.0.1 (see [`SynapseBuilder`]) and gives tests a small
//! Matrix client ([`MatrixClient`]) to create rooms, send and await events, and move
//! media. Starts a real murmurd (see [`MurmurBuilder`]) and drives pymumble clients
//! ([`MumbleTestClient`]) that send, record and message on it. Starts a real
//! mosquitto (see [`MosquittoBuilder`]) with `mosquitto_sub`/`mosquitto_pub` test
//! clients ([`MqttSubscriber`], [`mqtt_publish`]). Gives tests an end-to-end-encrypting
//! Matrix client, matrix-nio ([`E2eeTestClient`]), and a second one that reports
//! Element's trust verdicts, matrix-js-sdk with its Rust crypto ([`JsTrustClient`]).
//! Processes started here are owned by guards ([`ChildGuard`]) and die with the test. See `README.md`
//! beside this crate for environment variables and logs.

mod appservice;
mod client;
mod e2ee_client;
mod js_trust_client;
mod json_lines;
mod mosquitto;
mod mumble_client;
mod murmur;
mod ports;
mod process;
mod rigctld;
mod service_user;
mod svxlink;
mod svxreflector;
mod synapse;

pub use appservice::{AppserviceRegistration, Namespace, Namespaces, Registration};
pub use client::{CreateRoom, MatrixClient, OpenIdToken, Preset, SyncEvent, SyncEventKind, Whoami};
pub use e2ee_client::{
    AudioInfo, CrossSigningKeys, DeviceKeys, E2eeLogin, E2eeRoomState, E2eeTestClient,
    EncryptedFileRef, HeldRoomKey, MessageFilter, Msc1767Audio, NewRoom, ReceivedAudio,
    ReceivedMessage, Rotation, SenderDevice, SentText, SentVoice, Undecryptable, UserKeys,
    VoiceContent, WithheldNotice, E2EE_CLIENT_TIMEOUT,
};
pub use js_trust_client::{
    matrix_js_dir, node_path, DeviceVerification, JsLogin, JsRoomState, JsSenderDevice,
    JsTrustClient, JsUndecryptable, Shield, ShieldColour, ShieldReason, TrustReport,
    UserVerification, JS_TRUST_CLIENT_TIMEOUT,
};
pub use mosquitto::{
    mosquitto_path, mosquitto_tool, mqtt_publish, mqtt_publish_with, Mosquitto, MosquittoBuilder,
    MqttClientOptions, MqttMessage, MqttSubscriber, MOSQUITTO_READY_TIMEOUT, MOSQUITTO_STOP_GRACE,
    MOSQUITTO_SYSTEM_USER, MQTT_CLIENT_TIMEOUT, PROBE_PREFIX,
};
pub use mumble_client::{
    MumbleEvent, MumbleTestClient, MumbleUser, RecordedStream, Recording, SentAudio, TextMessage,
    CLIENT_TIMEOUT,
};
pub use murmur::{
    murmurd_path, test_python, trixie_root, MumbleServer, Murmur, MurmurBuilder,
    MURMUR_READY_TIMEOUT, MURMUR_STOP_GRACE, MURMUR_SYSTEM_USER, PERMISSION_SPEAK,
};
pub use ports::{free_port, free_tcp_udp_port};
pub use process::{log_tail, ChildGuard};
pub use rigctld::Rigctld;
pub use svxlink::{
    Capture, PttState, SvxLinkNode, SvxLinkNodeBuilder, Talked, SVXLINK_READY_TIMEOUT,
    SVXLINK_SAMPLE_RATE,
};
pub use svxreflector::{
    SvxReflector, SvxReflectorBuilder, SvxReflectorVersion, SVXREFLECTOR_READY_TIMEOUT,
};
pub use synapse::{
    default_experimental_features, synapse_python, workspace_root, Synapse, SynapseBuilder,
    TestUser,
};

/// Errors of the harness. Matrix errors keep the HTTP status and `errcode`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The homeserver answered with a non-success status.
    #[error("{method} {path}: HTTP {status} {errcode}: {message}", errcode = errcode.as_deref().unwrap_or("(no errcode)"))]
    Matrix {
        method: String,
        path: String,
        status: u16,
        errcode: Option<String>,
        message: String,
    },
    /// The request did not get an answer (connection refused, timeout, bad body).
    #[error("{method} {path}: {source}")]
    Http {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer lacked a field the harness needs.
    #[error("{what}: unexpected answer: {body}")]
    Unexpected { what: String, body: String },
    /// Waiting for something timed out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    /// Synapse failed to start, stop or answer; carries the tail of its logs.
    #[error("{message}\n{log_tail}")]
    Synapse { message: String, log_tail: String },
    /// murmurd failed to start or stop; carries the tail of its log.
    #[error("{message}\n{log_tail}")]
    Murmur { message: String, log_tail: String },
    /// svxreflector failed to start or stop; carries the tail of its log.
    #[error("{message}\n{log_tail}")]
    SvxReflector { message: String, log_tail: String },
    /// mosquitto failed to start or stop; carries the tail of its log.
    #[error("{message}\n{log_tail}")]
    Mosquitto { message: String, log_tail: String },
    /// An MQTT test client (mosquitto_sub / mosquitto_pub) failed; carries its output.
    #[error("MQTT test client {client}: {message}\n{log_tail}")]
    MqttClient {
        client: String,
        message: String,
        log_tail: String,
    },
    /// A Mumble test client failed a command or died; carries the tail of its log.
    #[error("mumble test client {client}: {message}\n{log_tail}")]
    MumbleClient {
        client: String,
        message: String,
        log_tail: String,
    },
    /// An E2EE (matrix-nio) test client failed a command or died; carries the tail
    /// of its log.
    #[error("E2EE test client {client}: {message}\n{log_tail}")]
    E2eeClient {
        client: String,
        message: String,
        log_tail: String,
    },
    /// A js-sdk trust client (Node.js) failed a command or died; carries the tail of
    /// its log.
    #[error("js-sdk trust client {client}: {message}\n{log_tail}")]
    JsTrustClient {
        client: String,
        message: String,
        log_tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The HTTP status of a homeserver answer, if this error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Matrix { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Matrix `errcode` of a homeserver answer, if any.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Error::Matrix { errcode, .. } => errcode.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Random alphanumeric string (secrets, passwords, transaction ids).
pub(crate) fn random_string(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Tests run against every Mumble server ([`MumbleServer::ALL`]): for each
/// `async fn NAME(server: MumbleServer)` listed, a module `NAME` with one test per
/// server, `murmur_1_3` and `mumble_1_5`, so both are seen (and fail) apart. The
/// functions stay ordinary items, formatted by rustfmt.
///
/// ```ignore
/// walkie_harness::on_every_mumble_server!(
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     a_client_joins,
/// );
///
/// async fn a_client_joins(server: MumbleServer) {
///     let murmur = Murmur::builder().server(server).start().await.unwrap();
/// }
/// ```
#[macro_export]
macro_rules! on_every_mumble_server {
    (#[$test:meta] $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[$test]
                async fn murmur_1_3() {
                    super::$name($crate::MumbleServer::Murmur1_3).await
                }

                #[$test]
                async fn mumble_1_5() {
                    super::$name($crate::MumbleServer::Mumble1_5).await
                }
            }
        )*
    };
}
