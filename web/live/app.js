// walkie-bridge live talk: log in to the homeserver, prove who you are to the
// bridge with an OpenID token, monitor several channels at once (protocol 2) and
// hold to talk on the selected one. Protocol: docs/live-protocol.md.
//
// Audio: the microphone runs through an AudioWorklet into a WebCodecs
// AudioEncoder (Opus, 48 kHz mono, 20 ms packets) only while the floor is granted;
// incoming Opus goes through a WebCodecs AudioDecoder into a jitter-buffering
// AudioWorklet. Without WebCodecs there is no Opus in the browser short of shipping
// a WebAssembly libopus, so the page says so (see the README's fallback note).

import {
  bindMediaSessionButtons, bindPushToTalkKey, keepAwake, OpenIdToken, PushToTalkKey,
  Reconnector, registerServiceWorker, showMicrophoneOnMediaSession, showOnMediaSession,
} from './device.js';
import { Scheduler } from './scheduler.js';

const $ = (id) => document.getElementById(id);
const FRAME_AUDIO = 1;
// Tests only (`/live/?tap`): the speaker's output and the scheduler's state are
// kept on `window` for the browser driver (tests/browser/channels.mjs).
const TAP = new URLSearchParams(location.search).has('tap');
const RATE = 48000;

const state = {
  homeserver: '',
  accessToken: '',
  userId: '',
  deviceId: '',
  channels: [],
  monitoring: [], // the channels this page logs on to (again, after a reconnect)
  tokenRetried: new Set(), // channels whose logon got a new token on this connection
  micRms: 0,
  lastStreamId: null,
  ws: null,
  seq: 0,
  pending: new Map(), // seq -> what the command was
  loggedOn: false,
  // The press: requested → (queued) → granted → released.
  pressing: false,
  streamId: null,
  granted: false,
  packetId: 0,
  encoder: null,
  encodeTime: 0,
  // The channels: name -> { name, room, monitored, priority, online, floor, talker }.
  channelInfo: new Map(),
  selected: null, // the channel the button talks on
  talkChannel: null, // the channel of the press in progress
  // What we hear: every monitored channel's transmissions, played one at a time.
  scheduler: new Scheduler(),
  decoder: null,
  fedUntil: 0,
  playing: null, // info of the transmission playing
  audio: null, // { ctx, capture, playback, mic }
  canTalk: false,
};

// ---------------------------------------------------------------- helpers

function show(panel) {
  for (const id of ['login-panel', 'rooms-panel', 'talk-panel']) $(id).hidden = id !== panel;
}

function error(text) {
  $('error').textContent = text || '';
}

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(item);
  while ($('log').children.length > 50) $('log').lastChild.remove();
}

function setConnection(text, stateName) {
  $('connection').textContent = text;
  $('connection').dataset.state = stateName;
}

function setFloor(text, stateName) {
  $('floor').textContent = text;
  $('floor').dataset.state = stateName;
  showOnMediaSession({ channel: state.selected, status: text });
}

function setButton(stateName, text) {
  const button = $('talk-button');
  button.dataset.state = stateName;
  button.textContent = text;
  showMicrophoneOnMediaSession(stateName === 'talking');
}

function setMeter(id, rms) {
  // -60 dBFS .. 0 dBFS onto 0..1: speech sits around 0.5–0.8.
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  const level = Math.max(0, Math.min(1, (db + 60) / 60));
  const meter = $(id);
  meter.dataset.level = level.toFixed(3);
  meter.querySelector('.bar').style.width = `${Math.round(level * 100)}%`;
}

async function matrix(method, path, body, token = state.accessToken) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(state.homeserver + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = {};
  try {
    json = await response.json();
  } catch (_) {
    // A proxy's HTML error page: the status says enough.
  }
  if (!response.ok) {
    throw new Error(`${json.errcode || response.status}: ${json.error || response.statusText}`);
  }
  return json;
}

// ---------------------------------------------------------------- log in

async function loadConfig() {
  try {
    const response = await fetch('config.json');
    const config = await response.json();
    state.channels = config.channels || [];
    if (!$('homeserver').value) $('homeserver').value = config.homeserver_url || '';
  } catch (e) {
    error(`Cannot read the bridge's configuration: ${e.message}`);
  }
}

async function login(event) {
  event.preventDefault();
  error('');
  state.homeserver = $('homeserver').value.trim().replace(/\/+$/, '');
  const token = $('access-token').value.trim();
  $('login-button').disabled = true;
  try {
    if (token) {
      const who = await matrix('GET', '/_matrix/client/v3/account/whoami', undefined, token);
      state.accessToken = token;
      state.userId = who.user_id;
      state.deviceId = who.device_id || 'WALKIELIVE';
    } else {
      const user = $('user').value.trim();
      const answer = await matrix('POST', '/_matrix/client/v3/login', {
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user },
        password: $('password').value,
        initial_device_display_name: 'walkie-bridge live talk',
      }, '');
      state.accessToken = answer.access_token;
      state.userId = answer.user_id;
      state.deviceId = answer.device_id;
    }
    tokens.forget();
    $('password').value = '';
    await listRooms();
  } catch (e) {
    error(`Login failed: ${e.message}`);
  } finally {
    $('login-button').disabled = false;
  }
}

const PRIORITY_KEY = 'walkie.priority';

function savedPriorities() {
  try {
    return new Set(JSON.parse(localStorage.getItem(PRIORITY_KEY) || '[]'));
  } catch (_) {
    return new Set();
  }
}

function savePriorities() {
  const names = [...state.channelInfo.values()].filter((c) => c.priority).map((c) => c.name);
  localStorage.setItem(PRIORITY_KEY, JSON.stringify(names));
}

async function listRooms() {
  const joined = new Set((await matrix('GET', '/_matrix/client/v3/joined_rooms')).joined_rooms || []);
  const list = $('rooms');
  list.replaceChildren();
  const priorities = savedPriorities();
  state.channelInfo.clear();
  for (const channel of state.channels) {
    let roomId = channel.room;
    if (roomId.startsWith('#')) {
      try {
        roomId = (await matrix('GET', `/_matrix/client/v3/directory/room/${encodeURIComponent(roomId)}`)).room_id;
      } catch (_) {
        roomId = null;
      }
    }
    const member = Boolean(roomId && joined.has(roomId));
    const item = document.createElement('li');
    const label = document.createElement('label');
    label.className = 'channel';
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.dataset.channel = channel.name;
    box.checked = member;
    box.disabled = !member;
    label.append(box, ` ${channel.name} — ${channel.room}`);
    if (!member) {
      const note = document.createElement('span');
      note.className = 'note';
      note.textContent = 'join this room with your Matrix client first';
      label.append(note);
    }
    item.append(label);
    list.append(item);
    state.channelInfo.set(channel.name, {
      name: channel.name,
      room: channel.room,
      member,
      monitored: false,
      priority: priorities.has(channel.name),
      online: false,
      floor: 'idle',
      status: 'idle',
    });
  }
  $('start').disabled = ![...state.channelInfo.values()].some((c) => c.member);
  $('who').textContent = `Logged in as ${state.userId} (device ${state.deviceId})`;
  show('rooms-panel');
}

// ---------------------------------------------------------------- audio

async function setupAudio() {
  if (state.audio) return;
  const hasDecoder = typeof AudioDecoder !== 'undefined';
  const hasEncoder = typeof AudioEncoder !== 'undefined';
  if (!hasDecoder) throw new Error('this browser has no WebCodecs AudioDecoder; use a current Chromium, Chrome, Edge or Firefox');
  const ctx = new AudioContext({ sampleRate: RATE, latencyHint: 'interactive' });
  await ctx.audioWorklet.addModule('capture-worklet.js');
  await ctx.audioWorklet.addModule('playback-worklet.js');
  const playback = new AudioWorkletNode(ctx, 'walkie-playback', {
    outputChannelCount: [1],
    processorOptions: { tap: TAP },
  });
  playback.connect(ctx.destination);
  playback.port.onmessage = (event) => {
    if (event.data.tap) window.__walkieTap?.push(event.data.tap);
    else setMeter('in-level', event.data.rms);
  };

  let capture = null;
  state.canTalk = false;
  if (hasEncoder) {
    const support = await AudioEncoder.isConfigSupported(encoderConfig());
    if (support.supported) {
      const mic = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const source = ctx.createMediaStreamSource(mic);
      capture = new AudioWorkletNode(ctx, 'walkie-capture', { numberOfOutputs: 0 });
      source.connect(capture);
      capture.port.onmessage = (event) => onMicBlock(event.data);
      state.canTalk = true;
    }
  }
  if (!state.canTalk) log('This browser cannot encode Opus (WebCodecs AudioEncoder): listening only.');
  await ctx.resume();
  state.audio = { ctx, capture, playback };
}

function encoderConfig() {
  return {
    codec: 'opus',
    sampleRate: RATE,
    numberOfChannels: 1,
    bitrate: 24000,
    opus: { frameDuration: 20000, application: 'voip', complexity: 5 },
  };
}

function startEncoder() {
  const streamId = state.streamId;
  state.packetId = 0;
  state.encodeTime = 0;
  state.encoder = new AudioEncoder({
    output: (chunk) => {
      if (!state.ws || state.streamId !== streamId) return;
      const frame = new Uint8Array(9 + chunk.byteLength);
      const view = new DataView(frame.buffer);
      view.setUint8(0, FRAME_AUDIO);
      view.setUint32(1, streamId);
      view.setUint32(5, state.packetId++);
      chunk.copyTo(frame.subarray(9));
      state.ws.send(frame);
    },
    error: (e) => log(`Encoder error: ${e.message}`),
  });
  state.encoder.configure(encoderConfig());
}

async function stopEncoder() {
  const encoder = state.encoder;
  state.encoder = null;
  if (!encoder || encoder.state === 'closed') return;
  try {
    // The last packets of the talk go out before stop_stream.
    await encoder.flush();
  } catch (_) {
    // Closed meanwhile (revoke): nothing left to send.
  }
  if (encoder.state !== 'closed') encoder.close();
}

function onMicBlock(samples) {
  let sum = 0;
  for (const s of samples) sum += s * s;
  const rms = Math.sqrt(sum / samples.length);
  state.micRms = state.granted ? rms : 0;
  const encoder = state.encoder;
  if (!state.granted || !encoder || encoder.state !== 'configured') return;
  const data = new AudioData({
    format: 'f32',
    sampleRate: RATE,
    numberOfFrames: samples.length,
    numberOfChannels: 1,
    timestamp: state.encodeTime,
    data: samples,
  });
  state.encodeTime += Math.round((samples.length / RATE) * 1e6);
  encoder.encode(data);
  data.close();
}

// What plays: the scheduler (scheduler.js) keeps every transmission of every
// channel and hands out one frame at a time; this keeps up to 250 ms of it fed
// ahead of the speaker (the playback worklet holds 400 ms), so a timer that fires
// late on a busy page leaves no gap. A live talk is fed as its frames come.
const AHEAD_S = 0.25;

function newDecoder() {
  if (state.decoder && state.decoder.state !== 'closed') state.decoder.close();
  state.decoder = new AudioDecoder({
    output: (data) => {
      const pcm = new Float32Array(data.numberOfFrames);
      data.copyTo(pcm, { planeIndex: 0, format: 'f32-planar' });
      data.close();
      state.audio?.playback.port.postMessage(pcm, [pcm.buffer]);
    },
    error: (e) => log(`Decoder error: ${e.message}`),
  });
  state.decoder.configure({ codec: 'opus', sampleRate: RATE, numberOfChannels: 1 });
}

function pump() {
  const ctx = state.audio?.ctx;
  if (ctx) {
    while (state.fedUntil < ctx.currentTime + AHEAD_S) {
      const played = state.scheduler.tick();
      if (!played) break;
      if (played.first || !state.decoder || state.decoder.state !== 'configured') {
        newDecoder();
        state.playing = played.info;
        const how = played.info.replay ? 'replay' : 'live';
        $('now-playing').textContent = `▶ ${played.info.talker} on ${played.info.channel} (${how})`;
      }
      state.decoder.decode(new EncodedAudioChunk({
        type: 'key',
        timestamp: Math.round(state.fedUntil * 1e6),
        data: played.opus,
      }));
      state.fedUntil = Math.max(state.fedUntil, ctx.currentTime) + 0.02;
      if (played.last) {
        state.playing = null;
        $('now-playing').textContent = '';
      }
    }
  }
  // A live talk whose stop came after its last frame ends here.
  if (state.playing && !state.scheduler.current) {
    state.playing = null;
    $('now-playing').textContent = '';
  }
  showWaiting();
}

function showWaiting() {
  const waiting = state.scheduler.waiting();
  const perChannel = new Map();
  for (const w of waiting) perChannel.set(w.channel, (perChannel.get(w.channel) || 0) + 1);
  for (const [name, info] of state.channelInfo) {
    const badge = document.querySelector(`#channels li[data-channel="${CSS.escape(name)}"] .waiting-count`);
    if (badge) badge.textContent = perChannel.get(name) ? String(perChannel.get(name)) : '';
    info.waiting = perChannel.get(name) || 0;
  }
  const text = waiting.length
    ? `${waiting.length} waiting: ${waiting.map((w) => `${w.talker} on ${w.channel}${w.live ? ' (live)' : ` ${Math.round(w.ms / 1000)} s`}`).join(', ')}`
    : '';
  if ($('waiting').textContent !== text) $('waiting').textContent = text;
}

function onAudioFrame(buffer) {
  if (buffer.byteLength <= 9) return;
  const view = new DataView(buffer);
  if (view.getUint8(0) !== FRAME_AUDIO) return;
  state.scheduler.frame(view.getUint32(1), new Uint8Array(buffer, 9));
}

// ---------------------------------------------------------------- channels

function renderChannels() {
  const list = $('channels');
  // Rebuilding the list must not lose the keyboard's place in it.
  const focused = list.contains(document.activeElement)
    ? { channel: document.activeElement.closest('li')?.dataset.channel, star: document.activeElement.matches('button.priority') }
    : null;
  list.replaceChildren();
  for (const info of state.channelInfo.values()) {
    if (!info.monitored) continue;
    const item = document.createElement('li');
    item.dataset.channel = info.name;
    item.dataset.floor = info.floor;
    item.dataset.online = String(info.online);
    item.dataset.selected = String(info.name === state.selected);
    // The radio is a part of the row, not the row: a radio's content is
    // presentational to a screen reader, which would hide the ★ button in it.
    item.setAttribute('role', 'none');
    const pick = document.createElement('span');
    pick.className = 'pick';
    pick.setAttribute('role', 'radio');
    pick.setAttribute('aria-checked', String(info.name === state.selected));
    // One tab stop for the group (the selected channel); arrows move in it.
    pick.tabIndex = info.name === state.selected ? 0 : -1;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = info.name;
    const status = document.createElement('span');
    status.className = 'status';
    status.textContent = info.online ? info.status : 'offline';
    const waiting = document.createElement('span');
    waiting.className = 'waiting-count';
    waiting.setAttribute('aria-label', 'transmissions waiting');
    pick.append(name, status, waiting);
    const star = document.createElement('button');
    star.type = 'button';
    star.className = 'priority';
    star.textContent = '★';
    star.title = 'Priority: interrupts the other channels';
    star.setAttribute('aria-label', `priority for ${info.name}`);
    star.setAttribute('aria-pressed', String(info.priority));
    star.addEventListener('click', (event) => {
      event.stopPropagation();
      info.priority = !info.priority;
      state.scheduler.setPriority(info.name, info.priority);
      savePriorities();
      renderChannels();
    });
    item.append(pick, star);
    item.addEventListener('click', () => select(info.name));
    pick.addEventListener('keydown', (event) => onChannelKey(event, info.name));
    list.append(item);
  }
  if (focused?.channel) {
    const row = list.querySelector(`li[data-channel="${CSS.escape(focused.channel)}"]`);
    row?.querySelector(focused.star ? 'button.priority' : '.pick')?.focus();
  }
  showWaiting();
  const selected = state.channelInfo.get(state.selected);
  $('talk-on').textContent = state.selected || 'the selected channel';
  $('history-channel').textContent = state.selected || '';
  $('talk-button').disabled = !state.canTalk || !selected || !selected.online;
  showFloor();
}

function select(name) {
  if (state.pressing) return;
  state.selected = name;
  renderChannels();
  if ($('history-panel').open) requestHistory();
}

// The radio group's keys (WAI-ARIA radio group): Enter or Space selects, the
// arrows select the next or previous channel, wrapping, and move the focus there.
function onChannelKey(event, name) {
  const names = [...state.channelInfo.values()].filter((c) => c.monitored).map((c) => c.name);
  const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
  if (event.key === 'Enter' || event.key === ' ') {
    select(name);
  } else if (step && names.length) {
    const next = names[(names.indexOf(name) + step + names.length) % names.length];
    select(next);
    $('channels').querySelector(`li[data-channel="${CSS.escape(next)}"] .pick`)?.focus();
  } else {
    return;
  }
  // Not the push-to-talk key's too, nor the page's scrolling.
  event.preventDefault();
  event.stopPropagation();
}

// The floor line shows the selected channel.
function showFloor() {
  const info = state.channelInfo.get(state.selected);
  if (!info) return;
  if (state.granted && state.talkChannel === info.name) return setFloor('You are talking', 'granted');
  setFloor(info.floor === 'taken' ? info.status : `${info.name} idle`, info.floor === 'taken' ? 'taken' : 'idle');
}

function setChannel(name, fields) {
  const info = state.channelInfo.get(name);
  if (!info) return;
  Object.assign(info, fields);
  const item = document.querySelector(`#channels li[data-channel="${CSS.escape(name)}"]`);
  if (item) {
    item.dataset.floor = info.floor;
    item.dataset.online = String(info.online);
    item.querySelector('.status').textContent = info.online ? info.status : 'offline';
  }
  if (name === state.selected) {
    $('talk-button').disabled = !state.canTalk || !info.online;
    showFloor();
  }
}

// ---------------------------------------------------------------- the bridge

function send(command, fields = {}) {
  const seq = ++state.seq;
  state.pending.set(seq, { command, channel: fields.channel });
  state.ws.send(JSON.stringify({ command, seq, ...fields }));
  return seq;
}

async function monitor() {
  error('');
  const chosen = [...document.querySelectorAll('#rooms input[type="checkbox"]')]
    .filter((box) => box.checked && !box.disabled)
    .map((box) => box.dataset.channel);
  if (!chosen.length) {
    error('Pick at least one channel.');
    return;
  }
  try {
    await setupAudio();
  } catch (e) {
    error(`Audio: ${e.message}`);
    return;
  }
  for (const info of state.channelInfo.values()) {
    info.monitored = chosen.includes(info.name);
    state.scheduler.setPriority(info.name, info.priority);
  }
  state.selected = chosen[0];
  state.monitoring = chosen;
  await connect();
}

async function connect() {
  let token;
  try {
    token = await tokens.get();
  } catch (e) {
    if (!reconnector.lost('the homeserver cannot be reached')) {
      error(`Cannot get an OpenID token from the homeserver: ${e.message}`);
    }
    return;
  }
  const old = state.ws;
  if (old) {
    // Still open after the network went away and came back: replaced, as its
    // path may be dead without either end knowing yet.
    state.ws = null;
    state.loggedOn = false;
    releaseLocally();
    old.close(1000, 'reconnecting');
  }
  state.tokenRetried = new Set();
  const url = new URL('ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  setConnection('connecting', 'connecting');
  let opened = false;
  ws.onopen = () => {
    opened = true;
    for (const channel of state.monitoring) logOn(channel, token);
  };
  ws.onmessage = (event) => {
    if (typeof event.data === 'string') onEvent(JSON.parse(event.data));
    else onAudioFrame(event.data);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    // Closed before the upgrade (code 1006, no reason): refused by a connection
    // limit of the bridge, or the bridge is unreachable.
    const neverOpened = !opened && event.code === 1006;
    const wasLoggedOn = state.loggedOn;
    state.ws = null;
    state.loggedOn = false;
    releaseLocally();
    for (const info of state.channelInfo.values()) {
      if (info.online) state.scheduler.drop(info.name);
      info.online = false;
    }
    renderChannels();
    setConnection('offline', 'offline');
    if (wasLoggedOn) log(`Disconnected from the bridge${event.reason ? `: ${event.reason}` : ''}.`);
    // The reconnector's status line tells about the tries; errors are for giving up.
    if (reconnector.lost(event.reason)) return;
    keepAwake(false);
    if (event.reason) error(`Disconnected: ${event.reason}`);
    else if (neverOpened) error('The bridge did not take the connection (it may be busy or unreachable); try again in a minute.');
  };
  show('talk-panel');
  renderChannels();
}

function logOn(channel, token) {
  const listenFor = $('listen-for').value;
  const fields = {
    channel,
    user_id: state.userId,
    device_id: state.deviceId,
    openid_token: token.access_token,
    listen: $('listen').checked,
  };
  if ($('listen').checked && listenFor) fields.listen_for_s = Number(listenFor);
  send('logon', fields);
}

/** The bridge refused the OpenID token (expired while away): log on with a new one. */
async function logOnWithNewToken(ws, channel) {
  if (state.tokenRetried.has(channel)) {
    reconnector.stop();
    error('Not logged on: the bridge refused a new OpenID token too.');
    ws.close();
    return;
  }
  state.tokenRetried.add(channel);
  let token;
  try {
    // Null when another channel's refusal renewed it already: that one is new.
    token = (await tokens.renew()) ?? (await tokens.get());
  } catch (e) {
    // The homeserver is out of reach: the reconnector tries again later (when this
    // connection had logged on before), with a token requested then.
    if (state.ws !== ws) return;
    error(`Cannot get an OpenID token from the homeserver: ${e.message}`);
    ws.close();
    return;
  }
  if (state.ws !== ws) return;
  logOn(channel, token);
}

function onEvent(event) {
  if (event.seq !== undefined && !event.command) return onAnswer(event);
  switch (event.command) {
    case 'on_error': {
      const what = state.pending.get(event.seq);
      state.pending.delete(event.seq);
      if (what?.command === 'logon') {
        const others = [...state.channelInfo.values()].some((c) => c.online && c.name !== what.channel);
        const next = reconnector.refused(event.error, others);
        if (next === 'token') {
          log(`The bridge refused the OpenID token (${event.error}); getting a new one.`);
          logOnWithNewToken(state.ws, what.channel);
          return;
        }
        setChannel(what.channel, { online: false, status: 'refused' });
        if (next === 'stop') error(`The bridge refused ${what.channel}: ${event.message}`);
        // Nothing logged on: closed (a transient refusal is tried again later).
        if (!others) state.ws?.close();
        return;
      }
      if (what?.command === 'start_stream') releaseLocally();
      log(`Error (${event.error}${event.channel ? ` on ${event.channel}` : ''}): ${event.message}`);
      return;
    }
    case 'on_channel_status':
      if (event.status === 'offline') {
        state.scheduler.drop(event.channel);
        setChannel(event.channel, { online: false, status: 'offline' });
        log(`${event.channel}: ${event.reason || 'offline'}`);
      } else {
        setChannel(event.channel, { online: true, users: event.users_online });
      }
      return;
    case 'on_floor':
      return onFloor(event);
    case 'on_stream_start':
      state.scheduler.start(event.stream_id, {
        channel: event.channel,
        talker: event.display_name,
        replay: Boolean(event.replay),
      });
      if (!event.replay) {
        setChannel(event.channel, { floor: 'taken', status: `${event.display_name} is talking (${event.source})` });
      }
      return;
    case 'on_stream_stop':
      // What is kept still plays; the transmission is complete.
      state.scheduler.stop(event.stream_id);
      if (TAP) window.__walkie.stops += 1;
      return;
    default:
  }
}

function onAnswer(answer) {
  const what = state.pending.get(answer.seq);
  state.pending.delete(answer.seq);
  if (!what) return;
  if (what.command === 'logon') {
    state.loggedOn = true;
    reconnector.connected();
    tokens.accepted();
    keepAwake(true);
    setConnection('online', 'online');
    if (!state.canTalk) setButton('idle', 'Listening only');
    log(`Monitoring ${answer.channel} as ${answer.display_name || answer.user_id}.`);
  } else if (what.command === 'start_stream') {
    state.streamId = answer.stream_id;
    // Let go before the answer came: give the request back at once.
    if (!state.pressing) send('stop_stream', { stream_id: state.streamId });
  } else if (what.command === 'get_history') {
    showHistory(answer.channel, answer.transmissions || []);
  }
}

function onFloor(event) {
  const mine = event.stream_id !== undefined && event.stream_id === state.streamId;
  const channel = event.channel;
  switch (event.state) {
    case 'idle':
      setChannel(channel, { floor: 'idle', status: 'idle' });
      if (channel === state.talkChannel || channel === state.selected) $('queue').textContent = '';
      return;
    case 'taken':
      setChannel(channel, { floor: 'taken', status: `${event.talker.display_name} is talking (${event.source})` });
      return;
    case 'granted':
      if (!mine) return;
      $('queue').textContent = '';
      if (!state.pressing) return; // already let go; stop_stream is on its way
      state.granted = true;
      startEncoder();
      setButton('talking', 'Talking…');
      setChannel(channel, { floor: 'granted', status: 'you are talking' });
      return;
    case 'queued':
      if (!mine) return;
      setButton('queued', `Queued #${event.position}`);
      $('queue').textContent = `You are number ${event.position} in the queue`;
      return;
    case 'denied': {
      if (!mine) return;
      const holder = event.holder ? ` — ${event.holder.display_name} is talking` : '';
      log(`Denied: ${event.reason}${holder}`);
      releaseLocally();
      setButton('denied', 'Denied');
      $('queue').textContent = `Denied: ${event.reason}${holder}`;
      return;
    }
    case 'revoked':
      if (!mine && event.stream_id !== state.lastStreamId) return;
      log(`Your talk was cut off: ${event.reason}`);
      releaseLocally();
      setChannel(channel, { floor: 'idle', status: `cut off: ${event.reason}` });
      return;
    case 'released':
      if (mine) releaseLocally();
      return;
    case 'declined':
      log(`${event.by} does not carry your talk: ${event.reason}`);
      $('queue').textContent = `${event.by}: ${event.reason}`;
      return;
    default:
  }
}

// ---------------------------------------------------------------- history

function requestHistory() {
  if (!state.ws || !state.selected) return;
  send('get_history', { channel: state.selected, limit: 20 });
}

function showHistory(channel, transmissions) {
  if (channel !== state.selected) return;
  const list = $('history');
  list.replaceChildren();
  if (!transmissions.length) {
    const item = document.createElement('li');
    item.textContent = 'Nothing archived yet.';
    list.append(item);
  }
  for (const t of transmissions) {
    const item = document.createElement('li');
    item.dataset.tx = t.tx_id;
    const when = new Date(t.started_ms).toLocaleTimeString();
    item.append(`${when} ${t.talker || 'someone'} — ${(t.duration_ms / 1000).toFixed(1)} s`);
    const play = document.createElement('button');
    play.type = 'button';
    play.textContent = 'Play';
    play.setAttribute('aria-label', `play ${t.talker || 'the transmission'} at ${when}`);
    play.addEventListener('click', () => send('play_recording', { channel, tx_id: t.tx_id }));
    item.append(play);
    list.append(item);
  }
}

// ---------------------------------------------------------------- the button

function press() {
  const info = state.channelInfo.get(state.selected);
  if (!state.loggedOn || !state.canTalk || state.pressing || !info || !info.online) return;
  state.pressing = true;
  state.talkChannel = info.name;
  // Nothing plays while you talk; what arrives meanwhile is kept and plays after.
  state.scheduler.setTalking(true);
  error('');
  setButton('requesting', 'Waiting for the floor…');
  send('start_stream', { channel: info.name, type: 'audio', codec: 'opus', sample_rate: RATE, packet_duration: 20 });
}

async function release() {
  if (!state.pressing) return;
  state.pressing = false;
  const streamId = state.streamId;
  const wasGranted = state.granted;
  state.granted = false;
  setButton('idle', 'Hold to talk');
  if (wasGranted) await stopEncoder();
  if (streamId !== null && state.ws && state.streamId === streamId) {
    send('stop_stream', { stream_id: streamId });
  }
  state.lastStreamId = streamId;
  state.streamId = null;
  state.scheduler.setTalking(false);
  showFloor();
}

/** The bridge ended the press (denied, revoked, released): stop without a stop_stream. */
function releaseLocally() {
  state.lastStreamId = state.streamId;
  state.streamId = null;
  state.pressing = false;
  state.granted = false;
  state.scheduler.setTalking(false);
  stopEncoder();
  setButton('idle', 'Hold to talk');
  showFloor();
}

function wireButton() {
  const button = $('talk-button');
  button.addEventListener('pointerdown', (event) => {
    if (button.disabled) return;
    event.preventDefault();
    button.setPointerCapture(event.pointerId);
    press();
  });
  for (const name of ['pointerup', 'pointercancel', 'lostpointercapture']) {
    button.addEventListener(name, () => release());
  }
  button.addEventListener('contextmenu', (event) => event.preventDefault());
  bindPushToTalkKey(pttKey, { press, release, active: () => !$('talk-panel').hidden });
  bindMediaSessionButtons(() => (state.pressing ? release() : press()));
  // Letting go of the page (tab switch) lets go of the button.
  window.addEventListener('blur', () => release());
}

function leave() {
  reconnector.stop();
  keepAwake(false);
  release();
  if (state.ws) {
    const ws = state.ws;
    state.ws = null;
    ws.close(1000, 'left');
  }
  state.loggedOn = false;
  for (const info of state.channelInfo.values()) {
    if (info.monitored) state.scheduler.drop(info.name);
    info.monitored = false;
    info.online = false;
  }
  setConnection('offline', 'offline');
  show('rooms-panel');
}

// Mic level while talking, at display rate rather than per audio block.
function meterLoop() {
  setMeter('mic-level', state.micRms || 0);
  requestAnimationFrame(meterLoop);
}

const tokens = new OpenIdToken(() => matrix('POST', `/_matrix/client/v3/user/${encodeURIComponent(state.userId)}/openid/request_token`, {}));
const reconnector = new Reconnector({ reconnect: () => connect(), status: $('net-status') });
const pttKey = new PushToTalkKey($('ptt-key'), document.querySelectorAll('.ptt-key-name'));

registerServiceWorker();
$('login-form').addEventListener('submit', login);
$('start').addEventListener('click', monitor);
$('leave').addEventListener('click', leave);
$('history-panel').addEventListener('toggle', () => {
  if ($('history-panel').open) requestHistory();
});
$('history-refresh').addEventListener('click', requestHistory);
wireButton();
meterLoop();
setInterval(pump, 20);
if (TAP) {
  window.__walkieTap = [];
  window.__walkie = {
    waiting: () => state.scheduler.waiting().length,
    playing: () => state.playing !== null,
    stops: 0,
  };
}
loadConfig();
