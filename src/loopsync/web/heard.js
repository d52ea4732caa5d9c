// @ts-check
/**
 * When the page's sounds are heard, for drawing: the clock processor stamps
 * each step with the AudioContext time of its frame (`contextTime`), which
 * it renders ahead of the speaker by the output's latency. The page draws a
 * step when that time is heard, not when it is rendered. No DOM, no audio
 * objects: the caller passes what it read from the AudioContext.
 */

/**
 * @typedef {object} OutputClock
 * @property {number} currentTime AudioContext.currentTime (seconds rendered so far)
 * @property {number} baseLatency AudioContext.baseLatency (0 when unknown)
 * @property {number} outputLatency AudioContext.outputLatency (0 when unknown)
 * @property {{contextTime?: number, performanceTime?: number} | null} outputTimestamp getOutputTimestamp(), if any
 * @property {number} performanceNow performance.now() at the same moment
 */

/** How far `getOutputTimestamp()` may lag the rendered time before it is taken as not sane (seconds). */
const MAX_SANE_LAG_SECONDS = 0.5;

/**
 * The AudioContext time whose sound reaches the listener now.
 *
 * `getOutputTimestamp()` says which context time was at the output at a
 * performance time; extrapolated to now, it is the best estimate where it is
 * sane (present, positive, not ahead of what was rendered, not more than half
 * a second behind it). Otherwise: the rendered time less the base and output
 * latencies.
 * @param {OutputClock} clock
 * @returns {number} seconds on the AudioContext's timeline
 */
export function heardContextTime(clock) {
  const stamp = clock.outputTimestamp;
  if (stamp && typeof stamp.contextTime === 'number' && typeof stamp.performanceTime === 'number'
      && stamp.contextTime > 0 && stamp.performanceTime > 0) {
    const heard = stamp.contextTime + (clock.performanceNow - stamp.performanceTime) / 1000;
    if (heard <= clock.currentTime && heard >= clock.currentTime - MAX_SANE_LAG_SECONDS) return heard;
  }
  const latency = (Number.isFinite(clock.baseLatency) ? clock.baseLatency : 0) + (Number.isFinite(clock.outputLatency) ? clock.outputLatency : 0);
  return clock.currentTime - Math.max(0, latency);
}

/**
 * A queue of frame-stamped clock events, released when they are heard.
 * @template {{contextTime: number}} T
 */
export class HeardQueue {
  /** @param {number} limit at most this many events are kept (a hidden tab draws nothing) */
  constructor(limit = 4096) {
    /** @type {T[]} */
    this.items = [];
    this.limit = limit;
  }

  /**
   * @param {T} item
   * @returns {T[]} the oldest events pushed out to stay within the limit (the caller applies them now)
   */
  push(item) {
    this.items.push(item);
    return this.items.length > this.limit ? this.items.splice(0, this.items.length - this.limit) : [];
  }

  /**
   * The events heard by `contextTime`, oldest first; they leave the queue.
   * @param {number} contextTime
   * @returns {T[]}
   */
  release(contextTime) {
    let count = 0;
    while (count < this.items.length && this.items[count].contextTime <= contextTime) count += 1;
    return this.items.splice(0, count);
  }

  /** @returns {T[]} every event, heard or not (pause: nothing more is coming) */
  releaseAll() {
    return this.items.splice(0, this.items.length);
  }
}
