// @ts-check
/**
 * The six synthesized sounds (document SOUNDS), rendered sample by sample on
 * the audio thread. No sample files and no AudioNodes: a voice is a small
 * state machine, so it can start on any frame inside a render quantum.
 *
 * Every voice has a fixed length, starts with a non-zero first sample (the
 * oscillator phase advances before it is read, the attack ramp starts above
 * zero, noise is never exactly zero) and tapers to exactly zero at its end.
 * Between hits the output is therefore exactly 0.0, and the first non-zero
 * sample after silence is the onset: tests find onsets to the sample.
 */

/** The sounds a part may use, in the document's order. */
export const SOUNDS = /** @type {const} */ (['kick', 'snare', 'hat', 'clap', 'tom', 'tone']);

const TWO_PI = 2 * Math.PI;
const VOICE_GAIN = 0.35;
const ATTACK_SECONDS = 0.001;
const TAPER_SECONDS = 0.004;

/** Length in seconds of each sound. */
const LENGTH_SECONDS = /** @type {Record<string, number>} */ ({
  kick: 0.4, snare: 0.22, hat: 0.06, clap: 0.25, tom: 0.35, tone: 0.3,
});

/** One sounding hit. */
export class Voice {
  /**
   * @param {string} sound one of SOUNDS (unknown sounds play as `tone`)
   * @param {number} sampleRate frames per second
   * @param {number} seed noise seed (any integer); the same seed gives the same samples
   */
  constructor(sound, sampleRate, seed) {
    this.sound = sound in LENGTH_SECONDS ? sound : 'tone';
    this.sampleRate = sampleRate;
    this.lengthFrames = Math.round(LENGTH_SECONDS[this.sound] * sampleRate);
    this.attackFrames = Math.max(1, Math.round(ATTACK_SECONDS * sampleRate));
    this.taperFrames = Math.max(1, Math.round(TAPER_SECONDS * sampleRate));
    /** Index in the current render quantum where the voice starts (0 once it is sounding). */
    this.startIndex = 0;
    /** Frames rendered since the onset. */
    this.ageFrames = 0;
    this.phase = 0;
    this.noiseState = (seed * 2654435761 + 1) >>> 0 || 1;
    this.filterState = 0;
    this.previousNoise = 0;
    /** Gain of a pause fade: 1 until faded, then ramps to 0. */
    this.fadeGain = 1;
    this.fadeStep = 0;
  }

  /** True once the voice has nothing more to play. */
  get done() {
    return this.ageFrames >= this.lengthFrames || this.fadeGain <= 0;
  }

  /**
   * Start a short linear fade to silence (pause), so stopping makes no click.
   * @param {number} fadeFrames frames until silent
   */
  fadeOut(fadeFrames) {
    this.fadeStep = 1 / Math.max(1, fadeFrames);
  }

  /**
   * Add this voice into `out` from index `from` (inclusive) to `to` (exclusive).
   * @param {Float32Array} out mono mix of the render quantum
   * @param {number} from first index to write
   * @param {number} to index after the last one
   */
  render(out, from, to) {
    for (let index = from; index < to && !this.done; index++) {
      out[index] += this._nextSample() * this.fadeGain;
      if (this.fadeStep > 0) this.fadeGain = Math.max(0, this.fadeGain - this.fadeStep);
    }
  }

  /** @returns {number} a noise sample in (-1, 1), never exactly 0 */
  _noise() {
    // xorshift32: cheap, deterministic, good enough for percussion.
    let x = this.noiseState;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.noiseState = x;
    return ((x + 0.5) / 4294967296) * 2 - 1;
  }

  /**
   * @param {number} frequency Hz
   * @returns {number} the next sine sample; the phase advances first so sample 0 is not 0
   */
  _sine(frequency) {
    this.phase += (TWO_PI * frequency) / this.sampleRate;
    if (this.phase > TWO_PI) this.phase -= TWO_PI;
    return Math.sin(this.phase);
  }

  /** @returns {number} */
  _nextSample() {
    const age = this.ageFrames;
    const seconds = age / this.sampleRate;
    let sample;
    switch (this.sound) {
      case 'kick':
        sample = this._sine(48 + 110 * Math.exp(-seconds / 0.03)) * Math.exp(-seconds / 0.13) * 1.4;
        break;
      case 'tom':
        sample = this._sine(105 + 70 * Math.exp(-seconds / 0.05)) * Math.exp(-seconds / 0.14) * 1.1;
        break;
      case 'tone':
        sample = (this._sine(440) + 0.25 * Math.sin(2 * this.phase)) * Math.exp(-seconds / 0.09) * 0.8;
        break;
      case 'snare': {
        const noise = this._noise();
        const bright = noise - this.previousNoise; // first difference: a cheap high-pass
        this.previousNoise = noise;
        sample = 0.6 * bright * Math.exp(-seconds / 0.055) + 0.7 * this._sine(185) * Math.exp(-seconds / 0.03);
        break;
      }
      case 'hat': {
        const noise = this._noise();
        const bright = noise - this.previousNoise;
        this.previousNoise = noise;
        sample = 0.5 * bright * Math.exp(-seconds / 0.014);
        break;
      }
      default: { // clap: three quick bursts and a tail of band-limited noise
        const noise = this._noise();
        this.filterState += 0.35 * (noise - this.filterState); // low-pass...
        const band = noise - this.filterState; // ...subtracted: a rough band-pass
        let envelope = Math.exp(-seconds / 0.06) * 0.5;
        for (const burst of [0, 0.011, 0.022]) {
          if (seconds >= burst) envelope = Math.max(envelope, Math.exp(-(seconds - burst) / 0.004));
        }
        sample = 1.3 * band * envelope;
      }
    }
    const attack = Math.min(1, (age + 1) / this.attackFrames);
    const taper = Math.min(1, (this.lengthFrames - age) / this.taperFrames);
    this.ageFrames = age + 1;
    return sample * attack * taper * VOICE_GAIN;
  }
}
