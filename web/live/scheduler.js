// What the page plays, and when: the "nothing missed" half of a walkie-talkie
// client that monitors several channels (issue 20, MSC4002's client side).
//
// Every transmission of every monitored channel is kept from its first frame.
// One plays at a time, in arrival order; nothing plays while the user talks; a
// transmission of a priority channel goes before the others and interrupts a
// non-priority one, which resumes where it stopped once the priority ones are
// done (a scanner's priority channel). What was played is forgotten (the
// bridge's history replays it); what waits is bounded, oldest dropped first, and
// the drop is counted so the page can say so.
//
// Pure logic, no audio and no DOM: the page pulls one frame every 20 ms with
// `tick()` and decodes it. tests/browser/scheduler.test.mjs checks it in node.

export class Scheduler {
  constructor({ maxKeptMs = 300_000, frameMs = 20 } = {}) {
    this.maxKeptFrames = Math.max(1, Math.floor(maxKeptMs / frameMs));
    this.frameMs = frameMs;
    this.priority = new Set();
    this.talking = false;
    // Transmissions not yet played to the end, in arrival order.
    this.kept = [];
    this.byStream = new Map();
    this.keptFrames = 0;
    this.arrivals = 0;
    // Frames dropped because too much waited, per channel.
    this.droppedFrames = new Map();
    this.current = null;
  }

  setPriority(channel, on) {
    if (on) this.priority.add(channel);
    else this.priority.delete(channel);
  }

  isPriority(channel) {
    return this.priority.has(channel);
  }

  // While the user talks nothing plays; everything is kept.
  setTalking(on) {
    this.talking = on;
  }

  // A transmission begins: `info` is {channel, talker, replay?}.
  start(streamId, info) {
    if (this.byStream.has(streamId)) return;
    const transmission = {
      streamId,
      info,
      frames: [],
      next: 0,
      done: false,
      arrival: this.arrivals++,
    };
    this.kept.push(transmission);
    this.byStream.set(streamId, transmission);
  }

  // One Opus frame of a started transmission (unknown streams are ignored).
  frame(streamId, opus) {
    const transmission = this.byStream.get(streamId);
    if (!transmission) return;
    transmission.frames.push(opus);
    this.keptFrames += 1;
    this.bound();
  }

  stop(streamId) {
    const transmission = this.byStream.get(streamId);
    if (!transmission) return;
    transmission.done = true;
    this.forgetIfPlayed(transmission);
  }

  // The channel is gone (logged off): its transmissions are forgotten.
  drop(channel) {
    for (const transmission of [...this.kept]) {
      if (transmission.info.channel === channel) this.remove(transmission);
    }
  }

  // The frame to play now, or null: {streamId, info, opus, first, last}.
  // `first` marks the start of a transmission's audio (or its resumption after
  // an interruption) so the page can reset its decoder and show who talks.
  tick() {
    if (this.talking) return null;
    const chosen = this.choose();
    // Between two frames of a live talk the current one keeps its place.
    if (!chosen) return null;
    const first = this.current !== chosen;
    this.current = chosen;
    const opus = chosen.frames[chosen.next];
    chosen.frames[chosen.next] = undefined;
    chosen.next += 1;
    this.keptFrames -= 1;
    const last = chosen.done && chosen.next === chosen.frames.length;
    const played = { streamId: chosen.streamId, info: chosen.info, opus, first, last };
    this.forgetIfPlayed(chosen);
    if (last) this.current = null;
    return played;
  }

  // What waits to be played (not the one playing), for the page to show:
  // [{streamId, channel, talker, ms, live}] in the order they will play.
  waiting() {
    return this.order()
      .filter((t) => t !== this.current)
      .map((t) => ({
        streamId: t.streamId,
        channel: t.info.channel,
        talker: t.info.talker,
        ms: (t.frames.length - t.next) * this.frameMs,
        live: !t.done,
      }));
  }

  // Milliseconds of audio dropped because too much waited, per channel.
  dropped() {
    const out = {};
    for (const [channel, frames] of this.droppedFrames) out[channel] = frames * this.frameMs;
    return out;
  }

  // ---- inside

  // Priority transmissions first, each group in arrival order.
  order() {
    const rank = (t) => (this.priority.has(t.info.channel) ? 0 : 1);
    return [...this.kept].sort((a, b) => rank(a) - rank(b) || a.arrival - b.arrival);
  }

  // The transmission whose next frame plays: the current one keeps the speaker
  // while it has audio coming (a live talk between two frames keeps it), unless
  // a priority transmission with audio waits and the current one is not
  // priority; otherwise the first in order with a frame ready.
  choose() {
    const ready = (t) => t.next < t.frames.length;
    const current = this.current && this.byStream.get(this.current.streamId) === this.current
      ? this.current
      : null;
    const priorityReady = this.order().find((t) => this.priority.has(t.info.channel) && ready(t));
    if (current && !this.priority.has(current.info.channel) && priorityReady) return priorityReady;
    if (current && (ready(current) || !current.done)) return ready(current) ? current : null;
    return this.order().find(ready) || null;
  }

  forgetIfPlayed(transmission) {
    if (transmission.done && transmission.next >= transmission.frames.length) this.remove(transmission);
  }

  remove(transmission) {
    const at = this.kept.indexOf(transmission);
    if (at >= 0) this.kept.splice(at, 1);
    this.byStream.delete(transmission.streamId);
    this.keptFrames -= transmission.frames.length - transmission.next;
    if (this.current === transmission) this.current = null;
  }

  // Too much waiting: the oldest waiting audio goes first (never the frames of
  // the one playing, which is about to be heard).
  bound() {
    while (this.keptFrames > this.maxKeptFrames) {
      const victim = this.kept.find((t) => t !== this.current && t.next < t.frames.length);
      if (!victim) return;
      const channel = victim.info.channel;
      this.droppedFrames.set(channel, (this.droppedFrames.get(channel) || 0) + 1);
      victim.frames[victim.next] = undefined;
      victim.next += 1;
      this.keptFrames -= 1;
      this.forgetIfPlayed(victim);
    }
  }
}
