// @ts-check
/**
 * Test helper (an AudioWorklet module, loaded from a Blob URL): records where
 * sounds start in the signal fed to it. Like the clock, it counts its own
 * frames (+quantum per process() call); an onset is the first non-zero
 * sample of channel 0 after at least `minGap` exact zeros. The onsets stay
 * on the audio thread until the page asks (`{type: 'flush'}`), so a blocked
 * main thread cannot lose or shift them.
 */
class OnsetRecorder extends AudioWorkletProcessor {
  /** @param {{processorOptions?: {minGap?: number}}} options */
  constructor(options) {
    super();
    this.minGap = options.processorOptions?.minGap ?? 64;
    this.frame = 0;
    this.zeros = this.minGap;
    /** @type {number[]} */
    this.onsets = [];
    this.peak = 0;
    this.port.onmessage = (event) => {
      if (event.data.type === 'flush') {
        this.port.postMessage({ type: 'onsets', onsets: this.onsets, frame: this.frame, peak: this.peak });
      }
    };
  }

  /**
   * @param {Float32Array[][]} inputs
   * @returns {boolean}
   */
  process(inputs) {
    const channel = inputs[0]?.[0];
    const quantum = channel ? channel.length : 128;
    if (channel) {
      for (let index = 0; index < quantum; index++) {
        const sample = channel[index];
        if (sample === 0) {
          this.zeros += 1;
        } else {
          if (this.zeros >= this.minGap) this.onsets.push(this.frame + index);
          this.zeros = 0;
          const size = Math.abs(sample);
          if (size > this.peak) this.peak = size;
        }
      }
    } else {
      this.zeros += quantum; // no input connected this quantum: silence
    }
    this.frame += quantum;
    return true;
  }
}

registerProcessor('onset-recorder', OnsetRecorder);
