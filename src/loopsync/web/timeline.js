// @ts-check
/**
 * The transport's time map, in frames: where step n of the loop falls.
 *
 * Pure arithmetic, no Web Audio: the clock processor (audio thread) keeps one
 * of these, and tests import the same module to compute expected onsets.
 *
 * Frames here are *transport frames*: they advance only while the transport
 * plays, so pause holds the position without any bookkeeping. The onset of
 * absolute step n (counted from the first play, across loops) is
 *
 *     originFrame + Math.round((n - originStep) * framesPerStep)
 *
 * computed from the absolute index every time, never by adding step lengths,
 * so rounding never accumulates: at 120 BPM and 44.1 kHz a step is 5512.5
 * frames and step 1000 still falls on its exact frame. A tempo change starts
 * a new segment (originStep, originFrame) at the next step to sound.
 */

/** Steps per beat: a step is a sixteenth note. */
export const STEPS_PER_BEAT = 4;

/**
 * Frames in one step at a tempo.
 * @param {number} sampleRate frames per second
 * @param {number} bpm beats per minute
 * @returns {number} frames per step, not rounded
 */
export function framesPerStep(sampleRate, bpm) {
  return (sampleRate * 60) / bpm / STEPS_PER_BEAT;
}

/** The map from absolute step numbers to transport frames for one tempo segment. */
export class Timeline {
  /**
   * @param {number} sampleRate frames per second
   * @param {number} bpm beats per minute
   * @param {number} stepsPerLoop steps in one loop (the document's `steps`)
   */
  constructor(sampleRate, bpm, stepsPerLoop) {
    this.sampleRate = sampleRate;
    this.bpm = bpm;
    this.stepsPerLoop = stepsPerLoop;
    this.framesPerStep = framesPerStep(sampleRate, bpm);
    /** First step of the current tempo segment. */
    this.originStep = 0;
    /** Transport frame of `originStep` (an integer). */
    this.originFrame = 0;
  }

  /**
   * Transport frame on which absolute step `step` starts.
   * @param {number} step absolute step number (integer)
   * @returns {number} integer transport frame
   */
  stepFrame(step) {
    return this.originFrame + Math.round((step - this.originStep) * this.framesPerStep);
  }

  /**
   * Transport frame of the Loop Start of loop `loop`.
   * @param {number} loop loop number (integer, from 0)
   * @returns {number}
   */
  loopStartFrame(loop) {
    return this.stepFrame(loop * this.stepsPerLoop);
  }

  /**
   * Change tempo so that the position is kept: `nextStep` (the first step not
   * yet sounded, due at or after `transportFrame`) keeps the fraction of a
   * step still to wait, now measured at the new tempo.
   * @param {number} bpm new tempo
   * @param {number} transportFrame the transport frame now
   * @param {number} nextStep the next step to sound
   */
  setBpm(bpm, transportFrame, nextStep) {
    const remainingSteps = (this.stepFrame(nextStep) - transportFrame) / this.framesPerStep;
    this.bpm = bpm;
    this.framesPerStep = framesPerStep(this.sampleRate, bpm);
    this.originStep = nextStep;
    this.originFrame = transportFrame + Math.max(0, Math.round(remainingSteps * this.framesPerStep));
  }

  /**
   * Position in steps (a real number) at a transport frame, for display.
   * @param {number} transportFrame
   * @returns {number}
   */
  positionSteps(transportFrame) {
    return this.originStep + (transportFrame - this.originFrame) / this.framesPerStep;
  }
}
