// @ts-check
/**
 * Test helper, injected into a served loopsync page: render the clock
 * processor in an OfflineAudioContext (deterministic: no real time, no main
 * thread in the loop) and return the onsets found in its output and every
 * message it posted.
 */

/**
 * Frames where a sound starts: the first non-zero sample after at least
 * `minGap` exact zeros (the voices are built so that this is the onset).
 * @param {Float32Array} samples
 * @param {number} minGap
 * @returns {number[]}
 */
function findOnsets(samples, minGap) {
  const onsets = [];
  let zeros = minGap;
  for (let index = 0; index < samples.length; index++) {
    if (samples[index] === 0) {
      zeros += 1;
    } else {
      if (zeros >= minGap) onsets.push(index);
      zeros = 0;
    }
  }
  return onsets;
}

/**
 * @param {{sampleRate: number, frames: number, processorOptions: any, minGap?: number, windows?: number[][]}} options
 *   `windows`: [from, to) frame ranges whose samples are returned as they are
 * @returns {Promise<{onsets: number[], messages: any[], status: any, windows: number[][]}>}
 */
async function renderClock(options) {
  const context = new OfflineAudioContext(1, options.frames, options.sampleRate);
  await context.audioWorklet.addModule('/clock-processor.js');
  const node = new AudioWorkletNode(context, 'loopsync-clock', {
    numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: options.processorOptions,
  });
  /** @type {any[]} */
  const messages = [];
  /** @type {(value: any) => void} */
  let statusArrived = () => {};
  node.port.onmessage = (event) => {
    if (event.data.type === 'status') statusArrived(event.data);
    else messages.push(event.data);
  };
  node.connect(context.destination);
  const rendered = await context.startRendering();
  // The status answer comes after every message posted before it: a flush.
  const status = await new Promise((resolve) => {
    statusArrived = resolve;
    node.port.postMessage({ type: 'status', id: 1 });
  });
  const samples = rendered.getChannelData(0);
  const windows = (options.windows ?? []).map(([from, to]) => Array.from(samples.subarray(from, to)));
  return { onsets: findOnsets(samples, options.minGap ?? 64), messages, status, windows };
}

// @ts-ignore
window.renderClock = renderClock;
