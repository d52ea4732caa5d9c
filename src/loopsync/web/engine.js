// @ts-check
/**
 * The main thread's handle on the audio clock: creates the AudioContext and
 * the clock processor (clock-processor.js), forwards commands to it and its
 * messages to the page. It keeps no time itself.
 */

import { Timeline } from './timeline.js';
import { LONGEST_SECONDS } from './voices.js';

/**
 * @typedef {object} EngineOptions
 * @property {string} me the own user name
 * @property {number} steps steps per loop
 * @property {number} bpm tempo
 * @property {number} leadSeconds how long before a Loop Start the page is asked to sync
 * @property {import('./rules.js').Part} own the own part
 * @property {Record<string, import('./rules.js').Part>} others every other user's part
 * @property {{gains: Record<string, number>, rest: number, master: number}} mix the page's mix
 * @property {(message: any) => void} onClockMessage every message the processor posts
 */

export class Engine {
  /** @param {EngineOptions} options */
  constructor(options) {
    this.options = options;
    /** @type {AudioContext | null} */
    this.context = null;
    /** @type {AudioWorkletNode | null} */
    this.node = null;
    /** The node whose output reaches the destination (tests tap it). */
    /** @type {AudioNode | null} */
    this.output = null;
    this.statusSerial = 0;
    /** @type {Map<number, (status: any) => void>} */
    this.statusWaiters = new Map();
  }

  /** Create the context and load the processor; resolves when the clock exists. */
  async start() {
    const context = new AudioContext({ latencyHint: 'interactive' });
    this.context = context;
    await context.audioWorklet.addModule(new URL('./clock-processor.js', import.meta.url));
    const { me, steps, bpm, leadSeconds, own, others, mix } = this.options;
    const node = new AudioWorkletNode(context, 'loopsync-clock', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [2],
      processorOptions: { me, steps, bpm, leadSeconds, own, others, mix },
    });
    node.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === 'status') {
        const waiter = this.statusWaiters.get(message.id);
        this.statusWaiters.delete(message.id);
        if (waiter) waiter(message);
        return;
      }
      this.options.onClockMessage(message);
    };
    node.connect(context.destination);
    this.node = node;
    this.output = node;
  }

  /**
   * Resume the context if the browser suspended it (autoplay policy): call from a user gesture.
   * @returns {Promise<void>}
   */
  async resume() {
    if (this.context && this.context.state !== 'running') await this.context.resume();
  }

  /**
   * Send a command to the processor (applied at the start of its next render quantum).
   * @param {object} command
   */
  post(command) {
    this.node?.port.postMessage(command);
  }

  /**
   * Ask the processor where it is.
   * @returns {Promise<any>} {frame, transportFrame, playing, positionSteps, nextStep, bpm, ...}
   */
  status() {
    const id = ++this.statusSerial;
    return new Promise((resolve) => {
      this.statusWaiters.set(id, resolve);
      this.post({ type: 'status', id });
    });
  }
}

/**
 * @typedef {object} RenderRequest
 * @property {number} sampleRate
 * @property {string} me
 * @property {number} steps steps per loop
 * @property {number} bpm
 * @property {number} loops how many loops to render (then the last sounds ring out)
 * @property {import('./rules.js').Part} own
 * @property {Record<string, import('./rules.js').Part>} others
 * @property {{gains: Record<string, number>, rest: number, master: number}} mix
 */

/**
 * Render `loops` loops with the same clock processor in an OfflineAudioContext
 * (an export): every onset falls on the frame the live clock would give it,
 * `round(n * framesPerStep)` from the first frame.
 * @param {RenderRequest} request
 * @returns {Promise<{channels: Float32Array[], sampleRate: number, loopFrames: number}>}
 */
export async function renderLoops(request) {
  const { sampleRate, me, steps, bpm, loops, own, others, mix } = request;
  const timeline = new Timeline(sampleRate, bpm, steps);
  const loopFrames = timeline.loopStartFrame(loops);
  const frames = loopFrames + Math.ceil(LONGEST_SECONDS * sampleRate);
  const context = new OfflineAudioContext(2, frames, sampleRate);
  await context.audioWorklet.addModule(new URL('./clock-processor.js', import.meta.url));
  const node = new AudioWorkletNode(context, 'loopsync-clock', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [2],
    processorOptions: {
      me, steps, bpm, own, others, mix, endStep: loops * steps, leadSeconds: 0, script: [{ type: 'play' }],
    },
  });
  node.connect(context.destination);
  const rendered = await context.startRendering();
  return { channels: [rendered.getChannelData(0), rendered.getChannelData(1)], sampleRate, loopFrames };
}
