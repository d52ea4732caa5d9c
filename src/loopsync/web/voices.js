// @ts-check
/**
 * The six synthesized sounds (document SOUNDS), rendered sample by sample on
 * the audio thread. No sample files and no AudioNodes: a voice is a small
 * state machine, so it can start on any frame inside a render quantum.
 *
 * Every voice has a fixed length, starts with a non-zero first sample (the
 * oscillator phase advances before it is read, the attack ramp starts above
 * zero, noise is never exactly zero) and ends with a raised-cosine fade to
 * exactly zero that begins only once the sound has decayed by 40 dB or
 * more. Between hits the output is therefore exactly 0.0, and the first
 * non-zero sample after silence is the onset: tests find onsets to the
 * sample.
 *
 * Balance (docs/page.md, "Sounds"): each voice's RMS over its hit (onset to
 * last sample) is within 3 dB of the others' (`VOICE_GAIN` and the per-sound
 * `level`); the kick and the tom get harmonics from a soft clip so that a
 * phone or laptop speaker, which plays little below 150 Hz, still carries
 * them; the hat's noise is band-passed around 8 kHz instead of sitting at
 * 15-20 kHz. tests/browser/test_sounds.py measures all of it.
 */

/** The sounds a part may use, in the document's order. */
export const SOUNDS = /** @type {const} */ (['kick', 'snare', 'hat', 'clap', 'tom', 'tone']);

const TWO_PI = 2 * Math.PI;
const VOICE_GAIN = 0.38;
const ATTACK_SECONDS = 0.001;

/**
 * Each sound: its length, the length of its final fade, and a level that
 * balances its loudness against the others (measured, see the module doc).
 * @type {Record<string, {seconds: number, fadeSeconds: number, level: number}>}
 */
const SHAPES = {
  kick: { seconds: 0.45, fadeSeconds: 0.06, level: 0.47 },
  snare: { seconds: 0.3, fadeSeconds: 0.05, level: 1.21 },
  hat: { seconds: 0.08, fadeSeconds: 0.025, level: 1.64 },
  clap: { seconds: 0.3, fadeSeconds: 0.05, level: 3.1 },
  tom: { seconds: 0.45, fadeSeconds: 0.06, level: 0.45 },
  tone: { seconds: 0.45, fadeSeconds: 0.06, level: 0.70 },
};

/** The longest sound, in seconds (the tail an export renders after its last loop). */
export const LONGEST_SECONDS = Math.max(...Object.values(SHAPES).map((shape) => shape.seconds));

/** One sounding hit. */
export class Voice {
  /**
   * @param {string} sound one of SOUNDS (unknown sounds play as `tone`)
   * @param {number} sampleRate frames per second
   * @param {number} seed noise seed (any integer); the same seed gives the same samples
   */
  constructor(sound, sampleRate, seed) {
    this.sound = sound in SHAPES ? sound : 'tone';
    const shape = SHAPES[this.sound];
    this.sampleRate = sampleRate;
    this.level = shape.level;
    this.lengthFrames = Math.round(shape.seconds * sampleRate);
    this.attackFrames = Math.max(1, Math.round(ATTACK_SECONDS * sampleRate));
    this.fadeFrames = Math.max(1, Math.round(shape.fadeSeconds * sampleRate));
    /** Index in the current render quantum where the voice starts (0 once it is sounding). */
    this.startIndex = 0;
    /** Frames rendered since the onset. */
    this.ageFrames = 0;
    this.phase = 0;
    this.noiseState = (seed * 2654435761 + 1) >>> 0 || 1;
    // The band-pass of the noisy sounds: its coefficients and its last inputs and outputs.
    /** @type {{b0: number, b2: number, a1: number, a2: number} | null} */
    this.filter = null;
    this.x1 = 0;
    this.x2 = 0;
    this.y1 = 0;
    this.y2 = 0;
    /** Gain of a pause fade: 1 until faded, then ramps to 0. */
    this.fadeGain = 1;
    this.fadeStep = 0;
    /** The mix gain this voice was last rendered with (set by the clock; ramps per quantum). */
    this.gain = 1;
    /** Whose part started it (the clock's mix looks its gain up by this). */
    this.user = '';
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
   * Add this voice into `out` from index `from` (inclusive) to `to` (exclusive),
   * its gain moving linearly from `gainFrom` to `gainTo` over that span (a mix
   * change never clicks).
   * @param {Float32Array} out mono mix of the render quantum
   * @param {number} from first index to write
   * @param {number} to index after the last one
   * @param {number} [gainFrom]
   * @param {number} [gainTo]
   */
  render(out, from, to, gainFrom = 1, gainTo = gainFrom) {
    const span = Math.max(1, to - from);
    for (let index = from; index < to && !this.done; index++) {
      const gain = gainFrom + ((gainTo - gainFrom) * (index - from)) / span;
      out[index] += this._nextSample() * this.fadeGain * gain;
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

  /**
   * Band-pass filtered noise: white noise through a biquad band-pass (RBJ,
   * 0 dB at the centre), whose coefficients are set on first use. The first
   * output sample is b0 times a non-zero noise sample: never exactly 0.
   * @param {number} frequency centre, Hz
   * @param {number} q quality factor
   * @returns {number}
   */
  _bandNoise(frequency, q) {
    if (this.filter === null) {
      const w = (2 * Math.PI * Math.min(frequency, this.sampleRate * 0.45)) / this.sampleRate;
      const alpha = Math.sin(w) / (2 * q);
      const a0 = 1 + alpha;
      this.filter = { b0: alpha / a0, b2: -alpha / a0, a1: (-2 * Math.cos(w)) / a0, a2: (1 - alpha) / a0 };
    }
    const { b0, b2, a1, a2 } = this.filter;
    const input = this._noise();
    const output = b0 * input + b2 * this.x2 - a1 * this.y1 - a2 * this.y2;
    this.x2 = this.x1;
    this.x1 = input;
    this.y2 = this.y1;
    this.y1 = output;
    return output;
  }

  /** @returns {number} */
  _nextSample() {
    const age = this.ageFrames;
    const seconds = age / this.sampleRate;
    let sample;
    switch (this.sound) {
      case 'kick': {
        // A pitch drop from 150 Hz to 55 Hz, soft-clipped: the harmonics at
        // 110-330 Hz are what a small speaker plays of it; a short click on top.
        const fundamental = this._sine(60 + 90 * Math.exp(-seconds / 0.045));
        const partials = fundamental + 0.7 * Math.sin(2 * this.phase) + 0.5 * Math.sin(3 * this.phase);
        const body = partials * Math.exp(-seconds / 0.062);
        const click = Math.sin(TWO_PI * 1800 * seconds + 0.3) * Math.exp(-seconds / 0.003);
        sample = Math.tanh(2.5 * body) + 0.4 * click;
        break;
      }
      case 'tom': {
        const fundamental = this._sine(120 + 60 * Math.exp(-seconds / 0.05));
        const body = (fundamental + 0.5 * Math.sin(2 * this.phase)) * Math.exp(-seconds / 0.06);
        sample = Math.tanh(3 * body);
        break;
      }
      case 'tone':
        sample = (this._sine(440) + 0.3 * Math.sin(2 * this.phase) + 0.1 * Math.sin(3 * this.phase)) * Math.exp(-seconds / 0.075);
        break;
      case 'snare': {
        const noise = this._bandNoise(3500, 1.2);
        sample = 0.9 * noise * Math.exp(-seconds / 0.05)
          + 0.6 * (this._sine(190) + 0.5 * Math.sin(1.75 * this.phase)) * Math.exp(-seconds / 0.035);
        break;
      }
      case 'hat':
        sample = 1.2 * this._bandNoise(8000, 0.9) * Math.exp(-seconds / 0.0095);
        break;
      default: { // clap: three quick bursts and a tail of band-passed noise
        const noise = this._bandNoise(1300, 1.0);
        let envelope = Math.exp(-seconds / 0.05) * 0.55;
        for (const burst of [0, 0.011, 0.022]) {
          if (seconds >= burst) envelope = Math.max(envelope, 0.7 * Math.exp(-(seconds - burst) / 0.004));
        }
        sample = 1.6 * noise * envelope;
      }
    }
    const attack = Math.min(1, (age + 1) / this.attackFrames);
    const left = this.lengthFrames - age;
    // A raised-cosine fade over the last fadeFrames: exactly 0 after the end, no step.
    const fade = left >= this.fadeFrames ? 1 : 0.5 - 0.5 * Math.cos((Math.PI * left) / this.fadeFrames);
    this.ageFrames = age + 1;
    return sample * attack * fade * this.level * VOICE_GAIN;
  }
}
