// Speaker side: a small jitter buffer. Decoded 20 ms blocks arrive unevenly over
// the network; playback starts once TARGET samples are buffered, pauses (silence)
// on an underrun until TARGET is buffered again, and drops the oldest audio when
// more than MAX is waiting, so delay never grows without bound.
const RATE = 48000;
const TARGET = RATE * 0.06;  // 60 ms
const MAX = RATE * 0.4;      // 400 ms
const LEVEL_EVERY = RATE * 0.05;

// With `tap` (tests only: the page's `?tap`), what the speaker gets is also
// posted back, 100 ms at a time, so a test can check the page's real output.
const TAP_EVERY = RATE * 0.1;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.tap = options?.processorOptions?.tap ? new Float32Array(TAP_EVERY) : null;
    this.tapped = 0;
    this.queue = [];
    this.offset = 0;
    this.buffered = 0;
    this.playing = false;
    this.sum = 0;
    this.count = 0;
    this.port.onmessage = (event) => {
      if (event.data === 'flush') {
        this.queue = [];
        this.offset = 0;
        this.buffered = 0;
        this.playing = false;
        return;
      }
      this.queue.push(event.data);
      this.buffered += event.data.length;
      while (this.buffered - this.offset > MAX && this.queue.length > 1) {
        const dropped = this.queue.shift();
        this.buffered -= dropped.length;
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.buffered - this.offset >= TARGET) this.playing = true;
    for (let i = 0; i < out.length; i++) {
      let sample = 0;
      if (this.playing && this.queue.length) {
        const head = this.queue[0];
        sample = head[this.offset++];
        if (this.offset >= head.length) {
          this.queue.shift();
          this.buffered -= head.length;
          this.offset = 0;
        }
      } else if (this.playing) {
        this.playing = false;
      }
      out[i] = sample;
      this.sum += sample * sample;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.tap) {
      for (let i = 0; i < out.length; i++) {
        this.tap[this.tapped++] = out[i];
        if (this.tapped === TAP_EVERY) {
          this.port.postMessage({ tap: this.tap });
          this.tap = new Float32Array(TAP_EVERY);
          this.tapped = 0;
        }
      }
    }
    this.count += out.length;
    if (this.count >= LEVEL_EVERY) {
      this.port.postMessage({ rms: Math.sqrt(this.sum / this.count) });
      this.sum = 0;
      this.count = 0;
    }
    return true;
  }
}
registerProcessor('walkie-playback', PlaybackProcessor);
