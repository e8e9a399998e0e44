// walkie-bridge live talk: log in to the homeserver, prove who you are to the
// bridge with an OpenID token, then hold to talk. Protocol: docs/live-protocol.md.
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

const $ = (id) => document.getElementById(id);
const FRAME_AUDIO = 1;
const RATE = 48000;

const state = {
  homeserver: '',
  accessToken: '',
  userId: '',
  deviceId: '',
  channels: [],
  channel: '',
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
  // What we hear.
  incoming: null, // { streamId, decoder }
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
  showOnMediaSession({ channel: state.channel, status: text });
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

async function listRooms() {
  const joined = new Set((await matrix('GET', '/_matrix/client/v3/joined_rooms')).joined_rooms || []);
  const list = $('rooms');
  list.replaceChildren();
  for (const channel of state.channels) {
    let roomId = channel.room;
    if (roomId.startsWith('#')) {
      try {
        roomId = (await matrix('GET', `/_matrix/client/v3/directory/room/${encodeURIComponent(roomId)}`)).room_id;
      } catch (_) {
        roomId = null;
      }
    }
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.channel = channel.name;
    button.textContent = `${channel.name} — ${channel.room}`;
    const member = roomId && joined.has(roomId);
    if (!member) {
      button.disabled = true;
      const note = document.createElement('span');
      note.className = 'note';
      note.textContent = 'join this room with your Matrix client first';
      button.append(note);
    }
    button.addEventListener('click', () => connect(channel.name));
    item.append(button);
    list.append(item);
  }
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
  const playback = new AudioWorkletNode(ctx, 'walkie-playback', { outputChannelCount: [1] });
  playback.connect(ctx.destination);
  playback.port.onmessage = (event) => setMeter('in-level', event.data.rms);

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

function startIncoming(streamId) {
  stopIncoming();
  const decoder = new AudioDecoder({
    output: (data) => {
      const pcm = new Float32Array(data.numberOfFrames);
      data.copyTo(pcm, { planeIndex: 0, format: 'f32-planar' });
      data.close();
      state.audio?.playback.port.postMessage(pcm, [pcm.buffer]);
    },
    error: (e) => log(`Decoder error: ${e.message}`),
  });
  decoder.configure({ codec: 'opus', sampleRate: RATE, numberOfChannels: 1 });
  state.incoming = { streamId, decoder };
}

function stopIncoming() {
  if (state.incoming && state.incoming.decoder.state !== 'closed') state.incoming.decoder.close();
  state.incoming = null;
}

function onAudioFrame(buffer) {
  if (buffer.byteLength <= 9) return;
  const view = new DataView(buffer);
  if (view.getUint8(0) !== FRAME_AUDIO) return;
  const streamId = view.getUint32(1);
  const packetId = view.getUint32(5);
  const incoming = state.incoming;
  if (!incoming || incoming.streamId !== streamId || incoming.decoder.state !== 'configured') return;
  incoming.decoder.decode(new EncodedAudioChunk({
    type: 'key',
    timestamp: packetId * 20000,
    data: new Uint8Array(buffer, 9),
  }));
}

// ---------------------------------------------------------------- the bridge

function send(command, fields = {}) {
  const seq = ++state.seq;
  state.pending.set(seq, command);
  state.ws.send(JSON.stringify({ command, seq, ...fields }));
  return seq;
}

async function connect(channel) {
  error('');
  try {
    await setupAudio();
  } catch (e) {
    error(`Audio: ${e.message}`);
    return;
  }
  state.channel = channel;
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
    stopIncoming();
    old.close(1000, 'reconnecting');
  }
  const url = new URL('ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  setConnection('connecting', 'connecting');
  let opened = false;
  ws.onopen = () => {
    opened = true;
    logOn(token);
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
    stopIncoming();
    setConnection('offline', 'offline');
    $('talk-button').disabled = true;
    if (wasLoggedOn) log(`Disconnected from the bridge${event.reason ? `: ${event.reason}` : ''}.`);
    // The reconnector's status line tells about the tries; errors are for giving up.
    if (reconnector.lost(event.reason)) return;
    keepAwake(false);
    if (event.reason) error(`Disconnected: ${event.reason}`);
    else if (neverOpened) error('The bridge did not take the connection (it may be busy or unreachable); try again in a minute.');
  };
  $('channel-name').textContent = channel;
}

function logOn(token) {
  const listenFor = $('listen-for').value;
  const fields = {
    channel: state.channel,
    user_id: state.userId,
    device_id: state.deviceId,
    openid_token: token.access_token,
    listen: $('listen').checked,
  };
  if ($('listen').checked && listenFor) fields.listen_for_s = Number(listenFor);
  send('logon', fields);
}

/** The bridge refused the OpenID token (expired while away): log on with a new one. */
async function logOnWithNewToken(ws) {
  let token;
  try {
    token = await tokens.renew();
  } catch (e) {
    // The homeserver is out of reach: the reconnector tries again later (when this
    // connection had logged on before), with a token requested then.
    if (state.ws !== ws) return;
    error(`Cannot get an OpenID token from the homeserver: ${e.message}`);
    ws.close();
    return;
  }
  if (state.ws !== ws) return;
  if (token) {
    logOn(token);
    return;
  }
  reconnector.stop();
  error('Not logged on: the bridge refused a new OpenID token too.');
  ws.close();
}

function onEvent(event) {
  if (event.seq !== undefined && !event.command) return onAnswer(event);
  switch (event.command) {
    case 'on_error': {
      const what = state.pending.get(event.seq);
      state.pending.delete(event.seq);
      if (what === 'logon') {
        const next = reconnector.refused(event.error);
        if (next === 'token') {
          log(`The bridge refused the OpenID token (${event.error}); getting a new one.`);
          logOnWithNewToken(state.ws);
          return;
        }
        if (next === 'stop') error(`The bridge refused the logon: ${event.message}`);
        state.ws.close();
        return;
      }
      if (what === 'start_stream') releaseLocally();
      log(`Error (${event.error}): ${event.message}`);
      return;
    }
    case 'on_channel_status':
      $('online').textContent = `${event.users_online} online`;
      return;
    case 'on_floor':
      return onFloor(event);
    case 'on_stream_start':
      startIncoming(event.stream_id);
      setFloor(`${event.display_name} is talking (${event.source})`, 'taken');
      return;
    case 'on_stream_stop':
      // What is buffered still plays out; the decoder is done.
      if (state.incoming && state.incoming.streamId === event.stream_id) stopIncoming();
      if ($('floor').dataset.state === 'taken') setFloor('Channel idle', 'idle');
      return;
    default:
  }
}

function onAnswer(answer) {
  const what = state.pending.get(answer.seq);
  state.pending.delete(answer.seq);
  if (what === 'logon') {
    state.loggedOn = true;
    reconnector.connected();
    tokens.accepted();
    keepAwake(true);
    setConnection('online', 'online');
    show('talk-panel');
    $('talk-button').disabled = !state.canTalk;
    if (!state.canTalk) setButton('idle', 'Listening only');
    log(`Logged on as ${answer.display_name || answer.user_id}.`);
  } else if (what === 'start_stream') {
    state.streamId = answer.stream_id;
    // Let go before the answer came: give the request back at once.
    if (!state.pressing) send('stop_stream', { stream_id: state.streamId });
  }
}

function onFloor(event) {
  const mine = event.stream_id !== undefined && event.stream_id === state.streamId;
  switch (event.state) {
    case 'idle':
      if (!state.granted) setFloor('Channel idle', 'idle');
      $('queue').textContent = '';
      return;
    case 'taken':
      setFloor(`${event.talker.display_name} is talking (${event.source})`, 'taken');
      return;
    case 'granted':
      if (!mine) return;
      $('queue').textContent = '';
      if (!state.pressing) return; // already let go; stop_stream is on its way
      state.granted = true;
      startEncoder();
      setButton('talking', 'Talking…');
      setFloor('You are talking', 'granted');
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
      setFloor(`Cut off: ${event.reason}`, 'idle');
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

// ---------------------------------------------------------------- the button

function press() {
  if (!state.loggedOn || !state.canTalk || state.pressing) return;
  state.pressing = true;
  error('');
  setButton('requesting', 'Waiting for the floor…');
  send('start_stream', { type: 'audio', codec: 'opus', sample_rate: RATE, packet_duration: 20 });
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
  if (wasGranted) setFloor('Channel idle', 'idle');
}

/** The bridge ended the press (denied, revoked, released): stop without a stop_stream. */
function releaseLocally() {
  state.lastStreamId = state.streamId;
  state.streamId = null;
  state.pressing = false;
  state.granted = false;
  stopEncoder();
  setButton('idle', 'Hold to talk');
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
  stopIncoming();
  setConnection('offline', 'offline');
  show('rooms-panel');
}

// Mic level while talking, at display rate rather than per audio block.
function meterLoop() {
  setMeter('mic-level', state.micRms || 0);
  requestAnimationFrame(meterLoop);
}

const tokens = new OpenIdToken(() => matrix('POST', `/_matrix/client/v3/user/${encodeURIComponent(state.userId)}/openid/request_token`, {}));
const reconnector = new Reconnector({ reconnect: () => connect(state.channel), status: $('net-status') });
const pttKey = new PushToTalkKey($('ptt-key'), document.querySelectorAll('.ptt-key-name'));

registerServiceWorker();
$('login-form').addEventListener('submit', login);
$('leave').addEventListener('click', leave);
wireButton();
meterLoop();
loadConfig();
