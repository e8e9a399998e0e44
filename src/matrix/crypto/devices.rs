//! [`CryptoDevices`]: every bridge user's device, opened on demand, kept open
//! while used, closed when idle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_sdk_crypto::store::types::RoomKeyInfo;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use tokio::sync::{broadcast, OnceCell};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::device::CryptoDevice;
use super::error::CryptoError;
use super::store;
use crate::config::Secret;
use crate::matrix::appservice::BridgeUsers;
use crate::matrix::client::Homeserver;

/// How [`CryptoDevices`] runs.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// One subdirectory per user (`[encryption] store_dir`).
    pub store_dir: PathBuf,
    /// Encrypts the values in every store (`[encryption] passphrase_file`).
    pub passphrase: Option<Secret>,
    /// A machine unused this long, and held by nobody, is closed.
    pub idle_close: Duration,
}

impl DeviceOptions {
    /// Default [`Self::idle_close`]: long enough that a conversation (a few
    /// transmissions minutes apart) keeps its talkers' machines open, short enough
    /// that a bridge with hundreds of occasional talkers keeps few open.
    pub const IDLE_CLOSE: Duration = Duration::from_secs(15 * 60);

    pub fn new(store_dir: impl Into<PathBuf>, passphrase: Option<Secret>) -> Self {
        Self {
            store_dir: store_dir.into(),
            passphrase,
            idle_close: Self::IDLE_CLOSE,
        }
    }
}

/// What the devices did, for whoever waits on it (the room paths wait for room
/// keys; tests wait for uploads).
#[derive(Clone, Debug)]
pub enum CryptoEvent {
    /// A device uploaded keys; the homeserver now holds `one_time_keys` of its
    /// signed Curve25519 one-time keys.
    KeysUploaded {
        user: OwnedUserId,
        device: OwnedDeviceId,
        one_time_keys: u64,
    },
    /// A to-device message reached a device (MSC2409) and was processed.
    ToDevice {
        user: OwnedUserId,
        device: OwnedDeviceId,
        event_type: String,
        /// `decrypted`, `undecryptable`, `plaintext` or `invalid`.
        outcome: &'static str,
    },
    /// Room keys arrived for a device: events waiting for them can be decrypted.
    RoomKeys {
        user: OwnedUserId,
        keys: Vec<RoomKeyInfo>,
    },
}

/// Counters of the crypto side (the same figures go to `walkie_crypto_*` metrics).
#[derive(Clone, Debug, Default)]
pub struct CryptoStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    to_device: AtomicU64,
    open_failures: AtomicU64,
}

impl CryptoStats {
    /// Requests the devices sent to the homeserver.
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }

    /// Machines opened (a reopen counts again).
    pub fn opened(&self) -> u64 {
        self.0.opened.load(Ordering::Relaxed)
    }

    /// Machines closed for being idle.
    pub fn closed(&self) -> u64 {
        self.0.closed.load(Ordering::Relaxed)
    }

    /// To-device messages handed to a machine.
    pub fn to_device(&self) -> u64 {
        self.0.to_device.load(Ordering::Relaxed)
    }

    /// Devices that could not be opened for a transaction.
    pub fn open_failures(&self) -> u64 {
        self.0.open_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn request(&self, what: &str) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walkie_crypto_requests_total", "request" => what.to_owned())
            .increment(1);
    }

    pub(crate) fn to_device_outcome(&self, outcome: &'static str) {
        self.0.to_device.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walkie_crypto_to_device_total", "outcome" => outcome).increment(1);
    }

    pub(crate) fn open_failure(&self) {
        self.0.open_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walkie_crypto_open_failures_total").increment(1);
    }
}

/// What every device shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub homeserver: Homeserver,
    pub store_dir: PathBuf,
    pub passphrase: Option<Secret>,
    pub stats: CryptoStats,
    events: broadcast::Sender<CryptoEvent>,
    /// The devices' background work (uploads after a transaction), waited for at
    /// shutdown.
    pub tasks: TaskTracker,
    /// Cancelled at shutdown: background work stops retrying.
    pub stop: CancellationToken,
}

impl Context {
    pub(crate) fn emit(&self, event: CryptoEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }
}

#[derive(Debug)]
struct Slot {
    device: Arc<OnceCell<Arc<CryptoDevice>>>,
    last_used: Instant,
}

/// Every device of the bridge. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CryptoDevices {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Arc<Context>,
    users: BridgeUsers,
    idle_close: Duration,
    open: Mutex<HashMap<OwnedUserId, Slot>>,
    /// Device ids seen in stores (open or not), and `None` for users found to have
    /// no store: a transaction's key counts for a device not listed here are not
    /// ours, and each user's directory is looked at once, not per transaction.
    known: Mutex<HashMap<OwnedUserId, Option<OwnedDeviceId>>>,
}

impl CryptoDevices {
    pub fn new(homeserver: Homeserver, users: BridgeUsers, options: DeviceOptions) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            inner: Arc::new(Inner {
                ctx: Arc::new(Context {
                    homeserver,
                    store_dir: options.store_dir,
                    passphrase: options.passphrase,
                    stats: CryptoStats::default(),
                    events,
                    tasks: TaskTracker::new(),
                    stop: CancellationToken::new(),
                }),
                users,
                idle_close: options.idle_close,
                open: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn stats(&self) -> CryptoStats {
        self.inner.ctx.stats.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CryptoEvent> {
        self.inner.ctx.events.subscribe()
    }

    pub fn users(&self) -> &BridgeUsers {
        &self.inner.users
    }

    /// Machines open now.
    pub fn open_count(&self) -> usize {
        let open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values()
            .filter(|slot| slot.device.initialized())
            .count()
    }

    /// The device of `user` (the bot or a puppet), opened if it is not open yet,
    /// and ready: on the homeserver with its keys and cross-signing identity
    /// (created there on first use). A puppet must be registered before.
    pub async fn device(&self, user: &UserId) -> Result<Arc<CryptoDevice>, CryptoError> {
        let device = self.open(user).await?;
        device.ready().await?;
        Ok(device)
    }

    /// The device of `user`, opened from its store if it is not open yet; nothing
    /// asked of the homeserver.
    pub(crate) async fn open(&self, user: &UserId) -> Result<Arc<CryptoDevice>, CryptoError> {
        if !self.inner.users.is_bridge_user(user) {
            return Err(CryptoError::NotBridgeUser {
                user: user.to_owned(),
            });
        }
        let cell = {
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            let slot = open.entry(user.to_owned()).or_insert_with(|| Slot {
                device: Arc::new(OnceCell::new()),
                last_used: Instant::now(),
            });
            slot.last_used = Instant::now();
            Arc::clone(&slot.device)
        };
        let device = cell
            .get_or_try_init(|| async {
                let device = CryptoDevice::open(Arc::clone(&self.inner.ctx), user).await?;
                self.inner
                    .ctx
                    .stats
                    .0
                    .opened
                    .fetch_add(1, Ordering::Relaxed);
                metrics::gauge!("walkie_crypto_open_devices").increment(1.0);
                self.remember(user, Some(device.device_id().to_owned()));
                Ok::<_, CryptoError>(device)
            })
            .await?;
        Ok(Arc::clone(device))
    }

    /// The device of `user` if its machine is open now.
    pub fn open_device(&self, user: &UserId) -> Option<Arc<CryptoDevice>> {
        let open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(user).and_then(|slot| slot.device.get().cloned())
    }

    /// Every open machine.
    pub(crate) fn open_devices(&self) -> Vec<Arc<CryptoDevice>> {
        let open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values()
            .filter_map(|slot| slot.device.get().cloned())
            .collect()
    }

    fn remember(&self, user: &UserId, device: Option<OwnedDeviceId>) {
        let mut known = self.inner.known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(user.to_owned(), device);
    }

    /// The device id of `user`'s store, open or not: from memory, else from the
    /// store directory's `device.json`; `None` when it has no store. Only this
    /// process makes stores (and remembers them when it does), so an absence is
    /// remembered too.
    pub(crate) fn known_device(&self, user: &UserId) -> Option<OwnedDeviceId> {
        if let Some(known) = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return known.clone();
        }
        let found = store::device_dir(&self.inner.ctx.store_dir, user)
            .ok()
            .and_then(|dir| store::read_device_file(&dir))
            .filter(|file| file.user_id == user)
            .map(|file| file.device_id);
        self.remember(user, found.clone());
        found
    }

    /// Closes the machines idle for longer than the configured time and held by
    /// nobody else. Returns how many were closed.
    pub fn close_idle(&self) -> usize {
        self.close_idle_since(self.inner.idle_close)
    }

    fn close_idle_since(&self, idle: Duration) -> usize {
        let mut closed = Vec::new();
        {
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|user, slot| {
                // Held elsewhere (an opening, a share, a flush): still in use.
                let idle_enough = slot.last_used.elapsed() >= idle;
                let held = Arc::strong_count(&slot.device) > 1
                    || slot.device.get().is_some_and(|d| Arc::strong_count(d) > 1);
                if !idle_enough || held {
                    return true;
                }
                // A slot whose opening failed goes too, silently.
                if slot.device.initialized() {
                    closed.push(user.clone());
                }
                false
            });
        }
        for user in &closed {
            debug!(%user, "crypto device closed (idle)");
            self.inner
                .ctx
                .stats
                .0
                .closed
                .fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("walkie_crypto_open_devices").decrement(1.0);
        }
        closed.len()
    }

    /// Waits for the devices' background work under way (uploads after a
    /// transaction), then closes every machine nobody else holds.
    pub async fn close_all(&self) -> usize {
        let tasks = &self.inner.ctx.tasks;
        tasks.close();
        tasks.wait().await;
        tasks.reopen();
        self.close_idle_since(Duration::ZERO)
    }

    /// Stops the devices' background work (an upload in flight finishes, no retry
    /// starts) and closes every machine once that work let go of it. Returns how
    /// many were open. Machines opened after this work, without retries.
    pub async fn shutdown(&self) -> usize {
        self.inner.ctx.stop.cancel();
        let slots: Vec<Slot> = {
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            open.drain().map(|(_, slot)| slot).collect()
        };
        self.inner.ctx.tasks.close();
        self.inner.ctx.tasks.wait().await;
        let closed = slots
            .iter()
            .filter(|slot| slot.device.initialized())
            .count();
        drop(slots);
        metrics::gauge!("walkie_crypto_open_devices").decrement(closed as f64);
        self.inner
            .ctx
            .stats
            .0
            .closed
            .fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }

    /// Makes `user`'s device ready, unless `shutdown` comes first. For the bot at
    /// start-up: a room that turns encryption on later shares its first room key
    /// only with the devices its members' clients know of at that moment, so the
    /// bot's device must be on the homeserver before any room is encrypted. A
    /// failure is logged; decrypting tries again with each event.
    pub async fn publish(self, user: OwnedUserId, shutdown: CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = self.device(&user) => match result {
                Ok(device) => {
                    info!(%user, device = %device.device_id(), "the encryption device is on the homeserver");
                }
                Err(error) => {
                    warn!(%user, %error, "the encryption device is not on the homeserver; a room that turns encryption on waits for it");
                }
            }
        }
    }

    /// Closes idle machines every so often until `shutdown`.
    pub async fn run_idle_closer(self, shutdown: CancellationToken) {
        let tick = (self.inner.idle_close / 4).max(Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {
                    let closed = self.close_idle();
                    if closed > 0 {
                        info!(closed, open = self.open_count(), "idle crypto devices closed");
                    }
                }
            }
        }
    }
}
