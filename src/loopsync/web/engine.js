// @ts-check
/**
 * The main thread's handle on the audio clock: creates the AudioContext and
 * the clock processor (clock-processor.js), forwards commands to it and its
 * messages to the page. It keeps no time itself.
 */

/**
 * @typedef {object} EngineOptions
 * @property {string} me the own user name
 * @property {number} steps steps per loop
 * @property {number} bpm tempo
 * @property {number} leadSeconds how long before a Loop Start the page is asked to sync
 * @property {import('./rules.js').Part} own the own part
 * @property {Record<string, import('./rules.js').Part>} others every other user's part
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
    const { me, steps, bpm, leadSeconds, own, others } = this.options;
    const node = new AudioWorkletNode(context, 'loopsync-clock', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [2],
      processorOptions: { me, steps, bpm, leadSeconds, own, others },
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
