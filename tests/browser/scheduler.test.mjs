// The page's playback order (web/live/scheduler.js) in node's test runner; run
// by tests/live_scheduler.rs. Frames are numbers here: the scheduler never
// looks inside them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Scheduler } from '../../web/live/scheduler.js';

// Plays everything that is ready now: the frames, as "stream:frame".
function drain(s) {
  const out = [];
  for (let played = s.tick(); played; played = s.tick()) out.push(`${played.streamId}:${played.opus}`);
  return out;
}

function talk(s, streamId, channel, frames, { stop = true } = {}) {
  s.start(streamId, { channel, talker: `t${streamId}` });
  for (let i = 0; i < frames; i++) s.frame(streamId, i);
  if (stop) s.stop(streamId);
}

test('two channels at once play one after the other, whole, in arrival order', () => {
  const s = new Scheduler();
  s.start(1, { channel: 'ops', talker: 'kilo' });
  s.start(2, { channel: 'net', talker: 'lima' });
  for (let i = 0; i < 3; i++) {
    s.frame(1, i);
    s.frame(2, i);
  }
  assert.deepEqual(drain(s), ['1:0', '1:1', '1:2'], 'the live talk of ops keeps the speaker');
  assert.deepEqual(s.waiting().map((w) => [w.channel, w.ms, w.live]), [['net', 60, true]]);
  s.stop(2);
  s.stop(1);
  assert.deepEqual(drain(s), ['2:0', '2:1', '2:2']);
  assert.equal(s.tick(), null);
  assert.deepEqual(s.waiting(), []);
});

test('a live talk between two frames keeps the speaker', () => {
  const s = new Scheduler();
  talk(s, 1, 'ops', 2, { stop: false });
  talk(s, 2, 'net', 2);
  assert.deepEqual(drain(s), ['1:0', '1:1']);
  assert.equal(s.tick(), null, 'waits for ops rather than starting net');
  s.frame(1, 2);
  s.stop(1);
  assert.deepEqual(drain(s), ['1:2', '2:0', '2:1']);
});

test('nothing plays while the user talks; what came meanwhile plays after', () => {
  const s = new Scheduler();
  s.setTalking(true);
  talk(s, 1, 'ops', 3);
  talk(s, 2, 'net', 2);
  assert.equal(s.tick(), null);
  assert.equal(s.waiting().length, 2);
  s.setTalking(false);
  const played = [];
  for (let p = s.tick(); p; p = s.tick()) played.push(p);
  assert.deepEqual(played.map((p) => `${p.streamId}:${p.opus}`), ['1:0', '1:1', '1:2', '2:0', '2:1']);
  assert.deepEqual(played.map((p) => p.first), [true, false, false, true, false]);
  assert.deepEqual(played.map((p) => p.last), [false, false, true, false, true]);
});

test('a priority channel interrupts, and the interrupted talk resumes where it stopped', () => {
  const s = new Scheduler();
  s.setPriority('emergency', true);
  talk(s, 1, 'ops', 4);
  assert.deepEqual([s.tick().opus, s.tick().opus], [0, 1]);
  talk(s, 2, 'emergency', 2);
  const next = s.tick();
  assert.equal(next.streamId, 2);
  assert.equal(next.first, true);
  assert.deepEqual(drain(s), ['2:1', '1:2', '1:3']);
});

test('priority transmissions go first even when they arrive later', () => {
  const s = new Scheduler();
  s.setTalking(true);
  talk(s, 1, 'ops', 1);
  talk(s, 2, 'net', 1);
  talk(s, 3, 'emergency', 1);
  s.setPriority('emergency', true);
  s.setTalking(false);
  assert.deepEqual(drain(s), ['3:0', '1:0', '2:0']);
});

test('what waits is bounded: the oldest waiting audio is dropped and counted', () => {
  const s = new Scheduler({ maxKeptMs: 100 }); // five frames
  s.setTalking(true);
  talk(s, 1, 'ops', 4);
  talk(s, 2, 'net', 4);
  assert.deepEqual(s.dropped(), { ops: 60 });
  s.setTalking(false);
  assert.deepEqual(drain(s), ['1:3', '2:0', '2:1', '2:2', '2:3']);
});

test('a channel left is forgotten; unknown streams are ignored', () => {
  const s = new Scheduler();
  s.setTalking(true);
  talk(s, 1, 'ops', 2);
  talk(s, 2, 'net', 2);
  s.frame(99, 7);
  s.stop(98);
  s.drop('ops');
  s.setTalking(false);
  assert.deepEqual(drain(s), ['2:0', '2:1']);
});
