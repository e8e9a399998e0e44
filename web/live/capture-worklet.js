// Microphone side: hands each 128-sample block (48 kHz mono, the AudioContext's
// rate) to the page, which encodes it while the floor is granted. Copies, because
// the input buffer is reused by the audio thread.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      const copy = new Float32Array(channel);
      this.port.postMessage(copy, [copy.buffer]);
    }
    return true;
  }
}
registerProcessor('walkie-capture', CaptureProcessor);
