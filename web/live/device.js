// What makes the live page an app on a phone or a desk, kept apart from app.js (the
// channels and the protocol) so either can change without the other:
//
// - registerServiceWorker(): sw.js keeps the page's own files for offline starts.
// - keepAwake(on): the Screen Wake Lock while monitoring a channel.
// - showOnMediaSession() / bindMediaSessionButtons(): the lock screen and a
//   headset's button.
// - PushToTalkKey / bindPushToTalkKey(): a key of the user's choosing (a Bluetooth
//   PTT button usually types one).
// - Reconnector: the connection comes back on its own, and says so.
// - OpenIdToken: the OpenID token is kept across reconnects and replaced when the
//   bridge refuses it.
//
// Every browser API here is optional: where one is missing (an older browser, plain
// HTTP from another machine, a headless test browser) the page works without it.

// ------------------------------------------------------------ service worker

/** Registers sw.js (scope: the page's folder); the registration, or null. */
export async function registerServiceWorker(script = 'sw.js') {
  // Service workers exist only in secure contexts (HTTPS or localhost).
  if (!('serviceWorker' in navigator)) return null;
  try {
    // 'none': the browser asks the bridge for sw.js itself at every update check,
    // so a new bridge's page is picked up at the next start.
    return await navigator.serviceWorker.register(script, { updateViaCache: 'none' });
  } catch (e) {
    // The page works without: only the offline start is lost.
    console.warn(`service worker not registered: ${e.message}`);
    return null;
  }
}

// ------------------------------------------------------------ wake lock

let wakeLock = null;
let wantAwake = false;

function showWakeLock(state) {
  // For people debugging a phone that dims, and for the browser test.
  document.documentElement.dataset.wakeLock = state;
}

async function acquireWakeLock() {
  if (!wantAwake || wakeLock) return;
  if (!('wakeLock' in navigator)) return showWakeLock('unsupported');
  // A hidden page cannot hold one; visibilitychange below tries again.
  if (document.visibilityState !== 'visible') return showWakeLock('waiting');
  try {
    const lock = await navigator.wakeLock.request('screen');
    if (!wantAwake) {
      // keepAwake(false) came while the request was on its way.
      await lock.release();
      return;
    }
    wakeLock = lock;
    showWakeLock('held');
    lock.addEventListener('release', () => {
      // The browser lets go when the page is hidden; we ask again when it is back.
      if (wakeLock === lock) wakeLock = null;
      showWakeLock(wantAwake ? 'waiting' : 'off');
    });
  } catch (e) {
    // Battery saver, a permissions policy: the screen may dim, nothing else breaks.
    showWakeLock(`refused: ${e.name}`);
  }
}

/** Keeps the screen on while `on` (monitoring a channel); harmless where unsupported. */
export async function keepAwake(on) {
  wantAwake = on;
  if (on) return acquireWakeLock();
  const lock = wakeLock;
  wakeLock = null;
  showWakeLock('off');
  if (lock) await lock.release().catch(() => {});
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') acquireWakeLock();
});

// ------------------------------------------------------------ media session

/**
 * Shows the channel and what happens on it (who talks) where the system shows
 * media: the lock screen, the notification shade, a watch.
 */
export function showOnMediaSession({ channel, status }) {
  if (!('mediaSession' in navigator) || typeof MediaMetadata === 'undefined') return;
  navigator.mediaSession.metadata = new MediaMetadata({
    title: status || 'Channel idle',
    artist: channel ? `Channel ${channel}` : '',
    album: 'walkie-bridge live talk',
    artwork: [
      { src: 'icon-192.png', sizes: '192x192', type: 'image/png' },
      { src: 'icon-512.png', sizes: '512x512', type: 'image/png' },
    ],
  });
}

/**
 * A headset's play/pause button as a talk toggle: one click presses, the next
 * releases (a headset sends a click, never a hold).
 *
 * What Chromium offers: Debian's Chromium 156 takes handlers for play, pause, stop,
 * previoustrack, nexttrack, seekbackward, seekforward, seekto, skipad,
 * togglemicrophone, togglecamera, hangup, enterpictureinpicture, previousslide and
 * nextslide (it refuses voiceactivity), and has setMicrophoneActive(). Which button
 * reaches which handler is the system's choice: a headset's or keyboard's play/pause
 * key comes as play or pause only while the page is the system's active media
 * session, which Chromium ties to media being played; whether this page's Web Audio
 * output counts differs by platform and is not checked by our tests, so on some
 * systems the button goes to another app. togglemicrophone comes from a system or
 * headset mute control where the platform maps one. A Bluetooth PTT button that
 * types a key is better served by the push-to-talk key setting: a real hold.
 */
export function bindMediaSessionButtons(toggle) {
  if (!('mediaSession' in navigator)) return;
  for (const action of ['play', 'pause', 'togglemicrophone']) {
    try {
      navigator.mediaSession.setActionHandler(action, () => toggle());
    } catch (_) {
      // This browser does not know the action (togglemicrophone is recent).
    }
  }
}

/** Tells the system whether the microphone is live (a talk is granted). */
export function showMicrophoneOnMediaSession(active) {
  if (!('mediaSession' in navigator)) return;
  navigator.mediaSession.playbackState = active ? 'playing' : 'paused';
  try {
    navigator.mediaSession.setMicrophoneActive?.(active);
  } catch (_) {
    // Refused without a capture in progress on some versions: only a display.
  }
}

// ------------------------------------------------------------ push-to-talk key

export const DEFAULT_PTT_KEY = 'Space';
const PTT_STORAGE = 'walkie-bridge.ptt-key';

/**
 * What identifies a key: its physical position (`code`, the same whatever the
 * keyboard layout), or, for the buttons that have none (some Bluetooth remotes and
 * on-screen keyboards report an empty code), its `key`.
 */
export function keyId(event) {
  return event.code || (event.key ? `key:${event.key}` : '');
}

/** A key id in words for the hint and the setting: "Space", "T", "F8", "5". */
export function keyName(id) {
  if (id.startsWith('key:')) return id.slice(4);
  if (/^Key[A-Z]$/.test(id)) return id.slice(3);
  if (/^Digit\d$/.test(id)) return id.slice(5);
  return id.replace(/([a-z])([A-Z0-9])/g, '$1 $2');
}

function storage() {
  try {
    return window.localStorage;
  } catch (_) {
    // Storage blocked by the browser's settings: the key lasts for this page only.
    return null;
  }
}

/**
 * The push-to-talk key, chosen in `input` (focus it, press the key) and kept in
 * localStorage; every element in `names` shows the key's name.
 */
export class PushToTalkKey {
  constructor(input, names) {
    this.input = input;
    this.names = names;
    this.id = storage()?.getItem(PTT_STORAGE) || DEFAULT_PTT_KEY;
    this.show();
    input.addEventListener('keydown', (event) => {
      // Tab and Shift+Tab move the focus on (keyboard users must get out of the
      // field); Escape leaves the setting unchanged.
      if (event.key === 'Tab') return;
      event.preventDefault();
      if (event.key === 'Escape') {
        input.blur();
        return;
      }
      const id = keyId(event);
      if (id) this.set(id);
    });
  }

  set(id) {
    this.id = id;
    try {
      storage()?.setItem(PTT_STORAGE, id);
    } catch (_) {
      // Quota or private mode: kept for this page only.
    }
    this.show();
  }

  show() {
    const name = keyName(this.id);
    this.input.value = name;
    this.input.dataset.key = this.id;
    for (const element of this.names) element.textContent = name;
  }

  matches(event) {
    return keyId(event) === this.id;
  }
}

/** True when a key press belongs to a field being typed in, not to the page. */
function typing(target) {
  if (target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return true;
  if (target instanceof HTMLInputElement) {
    return !['checkbox', 'radio', 'button', 'submit', 'reset', 'range', 'color'].includes(target.type);
  }
  return target instanceof HTMLElement && target.isContentEditable;
}

/**
 * Holding `key` presses, letting go releases, while `active()` says a channel is
 * open. The auto-repeat of a held key is ignored; a key typed into a field is not
 * a press.
 */
export function bindPushToTalkKey(key, { press, release, active }) {
  let held = false;
  document.addEventListener('keydown', (event) => {
    if (!key.matches(event) || !active() || typing(event.target)) return;
    // Space would scroll the page or click the focused button.
    event.preventDefault();
    if (event.repeat || held) return;
    held = true;
    press();
  });
  document.addEventListener('keyup', (event) => {
    if (!key.matches(event) || !held) return;
    event.preventDefault();
    held = false;
    release();
  });
  // A key let go in another window never sends its keyup here.
  window.addEventListener('blur', () => {
    held = false;
  });
}

// ------------------------------------------------------------ reconnecting

export const FIRST_RETRY_MS = 1000;
export const LAST_RETRY_MS = 30000;

/**
 * Logon refusals that another try can cure: the bridge or the homeserver was busy
 * or starting. Any other refusal (not a member, not opted in, …) stops retrying.
 */
const TRANSIENT_REFUSALS = new Set([
  'channel_unavailable', 'homeserver_unavailable', 'too_many_clients', 'internal', 'rate_limited',
]);
/** Refusals of the OpenID token itself: a fresh token cures them. */
const TOKEN_REFUSALS = new Set(['invalid_token', 'token_expired']);

/**
 * Reconnects a connection that was logged on once, after it closes without the user
 * asking: 1 s, then doubling up to 30 s, back to 1 s after every good logon; at
 * once when the device comes back online (a connection still open then is replaced:
 * it belongs to the network that went away). No random spread: a restarted bridge's
 * clients come back over the doubling steps, and a predictable number is what the
 * status line can promise. It says what it does in `status` (an aria-live region).
 *
 * The page calls connected() after each good logon, lost(reason) when the
 * connection closes, refused(code) when a logon is refused, and stop() when the
 * user leaves; `reconnect()` (given) opens a new connection and logs on.
 */
export class Reconnector {
  constructor({ reconnect, status }) {
    this.reconnect = reconnect;
    this.status = status;
    this.active = false; // a logon succeeded and the user has not left
    this.delay = FIRST_RETRY_MS;
    this.timer = null;
    this.retrying = false;
    this.waitingForNetwork = false;
    this.clearTimer = null;
    window.addEventListener('offline', () => this.wentOffline());
    window.addEventListener('online', () => this.cameOnline());
  }

  say(text, state) {
    clearTimeout(this.clearTimer);
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  connected() {
    const wasRetrying = this.retrying;
    this.active = true;
    this.retrying = false;
    this.waitingForNetwork = false;
    this.delay = FIRST_RETRY_MS;
    clearTimeout(this.timer);
    this.timer = null;
    if (wasRetrying) {
      this.say('Back online.', 'online');
      // The news is told; an old "back online" would mislead later.
      this.clearTimer = setTimeout(() => this.say('', 'idle'), 10000);
    }
  }

  /** The connection closed; true when another try is coming. */
  lost(reason = '') {
    if (!this.active) return false;
    this.retrying = true;
    if (!navigator.onLine) {
      this.waitingForNetwork = true;
      this.say('Offline: reconnecting when the network is back…', 'offline');
      return true;
    }
    const seconds = Math.round(this.delay / 1000);
    const why = reason ? ` (${reason})` : '';
    this.say(`Connection lost${why}: reconnecting in ${seconds} s…`, 'waiting');
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.attempt(), this.delay);
    this.delay = Math.min(this.delay * 2, LAST_RETRY_MS);
    return true;
  }

  /**
   * A logon was refused: 'token' when a fresh token should be tried, 'retry' when
   * the connection should close and be tried again later, 'stop' otherwise.
   */
  refused(code, othersOn = false) {
    if (TOKEN_REFUSALS.has(code)) return 'token';
    if (this.active && TRANSIENT_REFUSALS.has(code)) return 'retry';
    // One channel refused while others are on: the connection stays worth keeping.
    if (!othersOn) this.stop();
    return 'stop';
  }

  stop() {
    this.active = false;
    this.retrying = false;
    this.waitingForNetwork = false;
    this.delay = FIRST_RETRY_MS;
    clearTimeout(this.timer);
    this.timer = null;
    this.say('', 'idle');
  }

  attempt() {
    this.timer = null;
    this.waitingForNetwork = false;
    if (!this.active) return;
    this.say('Reconnecting…', 'connecting');
    this.reconnect();
  }

  wentOffline() {
    if (!this.active) return;
    // No point in trying without a network; online below tries at once. A
    // connection that looks open is not trusted either: it is bound to a network
    // that is gone, and a dead TCP connection can take the bridge's 45 s idle
    // timeout to be noticed, so it is replaced when the network is back.
    clearTimeout(this.timer);
    this.timer = null;
    this.retrying = true;
    this.waitingForNetwork = true;
    this.say('Offline: reconnecting when the network is back…', 'offline');
  }

  cameOnline() {
    // Only while waiting: an attempt on its way is not doubled.
    if (!this.active || !(this.timer || this.waitingForNetwork)) return;
    clearTimeout(this.timer);
    this.delay = FIRST_RETRY_MS;
    this.attempt();
  }
}

/**
 * The OpenID token the bridge checks at logon: requested once with `request()`
 * and kept across reconnects (it lasts an hour); replaced once per logon when the
 * bridge refuses it.
 */
export class OpenIdToken {
  constructor(request) {
    this.request = request;
    this.token = null;
    this.renewed = false;
  }

  async get() {
    if (!this.token) this.token = await this.request();
    return this.token;
  }

  /** The bridge refused the token: a new one, or null when the new one was refused too. */
  async renew() {
    if (this.renewed) return null;
    this.renewed = true;
    this.token = null;
    return this.get();
  }

  /** A logon succeeded: a later refusal may renew again. */
  accepted() {
    this.renewed = false;
  }

  forget() {
    this.token = null;
    this.renewed = false;
  }
}
