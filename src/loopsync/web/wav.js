// @ts-check
/**
 * WAV files of 32-bit float samples (WAVE_FORMAT_IEEE_FLOAT): what an export
 * writes. Float keeps every sample exactly as rendered, so the first
 * non-zero sample of each hit (its onset) is where the clock put it; 16-bit
 * would round the quietest first samples to zero. Every DAW and audio editor
 * reads it. No DOM, no audio.
 */

/**
 * @param {Float32Array[]} channels one array per channel, all of one length
 * @param {number} sampleRate
 * @returns {ArrayBuffer} the whole file
 */
export function encodeWav(channels, sampleRate) {
  const channelCount = channels.length;
  const frames = channelCount > 0 ? channels[0].length : 0;
  const bytesPerSample = 4;
  const dataBytes = frames * channelCount * bytesPerSample;
  // RIFF header (12) + fmt chunk (8 + 18) + fact chunk (8 + 4) + data chunk (8 + data).
  const buffer = new ArrayBuffer(12 + 26 + 12 + 8 + dataBytes);
  const view = new DataView(buffer);
  let at = 0;
  const text = (/** @type {string} */ value) => {
    for (let index = 0; index < value.length; index++) view.setUint8(at++, value.charCodeAt(index));
  };
  const u32 = (/** @type {number} */ value) => { view.setUint32(at, value, true); at += 4; };
  const u16 = (/** @type {number} */ value) => { view.setUint16(at, value, true); at += 2; };
  text('RIFF'); u32(buffer.byteLength - 8); text('WAVE');
  text('fmt '); u32(18);
  u16(3); // WAVE_FORMAT_IEEE_FLOAT
  u16(channelCount); u32(sampleRate); u32(sampleRate * channelCount * bytesPerSample);
  u16(channelCount * bytesPerSample); u16(32); u16(0);
  text('fact'); u32(4); u32(frames);
  text('data'); u32(dataBytes);
  for (let frame = 0; frame < frames; frame++) {
    for (let channel = 0; channel < channelCount; channel++) {
      view.setFloat32(at, channels[channel][frame], true);
      at += 4;
    }
  }
  return buffer;
}
