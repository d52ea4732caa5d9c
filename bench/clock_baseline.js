// @ts-check
/**
 * The baseline of bench/clock.py: the loop's steps scheduled from the MAIN
 * thread with the usual lookahead technique (Chris Wilson, "A Tale of Two
 * Clocks"): a setTimeout every 25 ms schedules, on the audio timeline, every
 * step that falls in the next 100 ms, as an AudioBufferSourceNode started at
 * its time. The audio timeline is exact; the scheduler is only as good as its
 * next wake-up: a step whose time passed while the main thread was busy is
 * started at once (late), as the textbook code does.
 *
 * To keep the comparison fair it plays exactly what the loopsync page plays:
 * - the same sound: one hit of the client's own Voice (voices.js), rendered
 *   into an AudioBuffer (its first sample is non-zero, its tail exact zeros);
 * - on the same grid: step n at frame startFrame + Math.round(n * framesPerStep),
 *   computed from the absolute index and passed as an exact frame / sampleRate,
 *   so an idle run is sample-exact and whatever error shows is the scheduler's.
 *
 * Hook: window.baseline = {context, output, play() (resolves to the first step's
 * time), stop(), stats()}.
 * Address: ?bpm=120&sound=hat (sixteenths).
 */

import { Voice } from '/voices.js';

const LOOKAHEAD_MS = 25;
const SCHEDULE_AHEAD_SECONDS = 0.1;
const START_DELAY_SECONDS = 0.1;

const params = new URLSearchParams(location.search);
const bpm = Number(params.get('bpm') || 120);
const sound = params.get('sound') || 'hat';

const context = new AudioContext({ latencyHint: 'interactive' });
/** Every hit goes through this node to the destination (the recorder taps it). */
const output = new GainNode(context, { gain: 1 });
output.connect(context.destination);

const voice = new Voice(sound, context.sampleRate, 1);
const buffer = new AudioBuffer({ length: voice.lengthFrames, sampleRate: context.sampleRate, numberOfChannels: 1 });
const samples = new Float32Array(voice.lengthFrames);
voice.render(samples, 0, samples.length);
buffer.copyToChannel(samples, 0);

const framesPerStep = (context.sampleRate * 60) / bpm / 4;
let startFrame = 0;
let nextStep = 0;
/** @type {number | undefined} */
let timer;
/** Steps whose time had already passed when the scheduler got to them. */
let late = 0;
let maxLateSeconds = 0;
let wakeUps = 0;

/** @param {number} step @returns {number} the step's time on the audio timeline (seconds) */
function stepTime(step) {
  return (startFrame + Math.round(step * framesPerStep)) / context.sampleRate;
}

function scheduler() {
  wakeUps += 1;
  const now = context.currentTime;
  while (stepTime(nextStep) < now + SCHEDULE_AHEAD_SECONDS) {
    const when = stepTime(nextStep);
    if (when < now) {
      late += 1;
      maxLateSeconds = Math.max(maxLateSeconds, now - when);
    }
    const source = new AudioBufferSourceNode(context, { buffer });
    source.connect(output);
    source.start(when);
    nextStep += 1;
  }
  timer = setTimeout(scheduler, LOOKAHEAD_MS);
}

// @ts-ignore: the hook for bench/clock.py
window.baseline = {
  context,
  output,
  framesPerStep,
  async play() {
    if (context.state !== 'running') await context.resume();
    startFrame = Math.ceil((context.currentTime + START_DELAY_SECONDS) * context.sampleRate);
    nextStep = 0;
    scheduler();
    return startFrame / context.sampleRate; // the first step's time
  },
  stop() {
    clearTimeout(timer);
  },
  stats: () => ({ scheduled: nextStep, late, maxLateSeconds, wakeUps, sampleRate: context.sampleRate }),
};
