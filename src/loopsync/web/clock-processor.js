// @ts-check
/**
 * The loop's clock and its sounds, on the audio rendering thread.
 *
 * Why here: the audio thread renders every 128-frame quantum on time whatever
 * the page's main thread is doing (a long task, a garbage collection, a
 * throttled timer), so a clock that counts rendered frames cannot be late
 * and cannot drift (docs/clock.md).
 *
 * - It counts its OWN frames (`frame`, +quantum per `process()` call) rather
 *   than reading the global `currentFrame`, which has been seen reading a few
 *   quanta behind while the main thread connects and disconnects nodes.
 * - Transport frames advance only while playing; step n starts on transport
 *   frame `timeline.stepFrame(n)`, from the absolute index (timeline.js).
 * - Each hit is a Voice that starts on its exact frame inside the quantum.
 * - Sync: when the transport reaches `loopStartFrame(L) - leadFrames`, it
 *   posts `{type: 'syncDue', loop: L}`; the page answers with
 *   `{type: 'parts', loop: L, id, others}` (every other user's part for that
 *   loop). At the Loop Start of L the processor switches, atomically, to the
 *   latest answer tagged L or earlier. An answer that comes after its Loop
 *   Start (a blocked main thread) waits for the following Loop Start: the
 *   loop that is playing never changes halfway.
 * - The user's own part is live (`{type: 'own'}`): heard when the playhead
 *   reaches the edited step.
 * - Pause holds the transport frame and fades sounding voices out in a few
 *   milliseconds; play continues from the held frame.
 * - Parts posted without a loop (`loop: null`: the page is paused, or starts
 *   to play) wait for the next Loop Start the transport reaches: a loop
 *   paused and resumed halfway plays its rest as it began, and the new parts
 *   start at the next Loop Start (docs/clock.md, "Pause and resume within a
 *   loop").
 * - The page's own mix (`{type: 'mix', gains, master}`: a gain per user and
 *   a master gain, never sent to the server) scales each voice by its user's
 *   gain, ramped over one quantum so a change never clicks.
 *
 * Messages to the processor (applied at the start of the next quantum, or,
 * with `atFrame`, at the first quantum starting at or after that own frame:
 * tests script an OfflineAudioContext that way):
 *   {type: 'play'} {type: 'pause'} {type: 'tempo', bpm} {type: 'lead', seconds} {type: 'steps', steps}
 *   {type: 'own', part} {type: 'parts', id, loop, others}  (loop null: at the next Loop Start reached)
 *   {type: 'mix', gains: {user: gain}, rest, master}  (a user not listed: gain `rest`, default 1)
 *   {type: 'status', id}  (answered at once, not at the next quantum)
 * Messages from it:
 *   {type: 'syncDue', loop, frame, transportFrame}
 *   {type: 'step', loop, step, absoluteStep, frame, transportFrame, contextTime, sounded, dataId, dataLoop}
 *   {type: 'applied', id, loop, frame, contextTime, atLoopStart}
 * (`contextTime`: the AudioContext time of that frame, for the page to draw
 * it when it is heard.) Options: `processorOptions` {me, steps, bpm,
 * leadSeconds, own, others, mix, endStep, script}; `endStep` (an export) sounds
 * no step from that absolute step on.
 *   {type: 'state', playing, frame, transportFrame, bpm}
 *   {type: 'status', id, frame, transportFrame, playing, positionSteps, nextStep, bpm, dataId}
 */

import { Timeline } from './timeline.js';
import { Voice } from './voices.js';

/** @typedef {{sound: string, steps: number[]}} Part */
/** @typedef {{user: string, part: Part}} UserPart */
/** @typedef {{id: number, loop: number | null, others: UserPart[]}} LoopData */

const DEFAULT_LEAD_SECONDS = 0.05;
const FADE_SECONDS = 0.004;
const MAX_VOICES = 64;

/**
 * @param {Record<string, Part> | UserPart[] | undefined} others
 * @returns {UserPart[]}
 */
function toUserParts(others) {
  if (!others) return [];
  if (Array.isArray(others)) return others;
  return Object.keys(others).sort().map((user) => ({ user, part: others[user] }));
}

class ClockProcessor extends AudioWorkletProcessor {
  /** @param {{processorOptions?: any}} options */
  constructor(options) {
    super();
    const config = options.processorOptions || {};
    this.stepsPerLoop = config.steps || 16;
    this.timeline = new Timeline(sampleRate, config.bpm || 120, this.stepsPerLoop);
    this.leadFrames = this._leadFrames(config.leadSeconds ?? DEFAULT_LEAD_SECONDS);
    this.fadeFrames = Math.round(FADE_SECONDS * sampleRate);
    /** Own frames rendered since the first process() call. */
    this.frame = 0;
    /** Frames rendered while playing. */
    this.transportFrame = 0;
    this.playing = false;
    /** The next absolute step to sound. */
    this.nextStep = 0;
    /** The loop whose sync moment is the next to signal (loop 0 is synced by play). */
    this.nextSyncLoop = 1;
    this.me = config.me || '';
    /** @type {Part | null} */
    this.own = config.own || null;
    /** @type {LoopData} what the current loop plays for the other users */
    this.current = { id: 0, loop: null, others: toUserParts(config.others) };
    /** @type {LoopData[]} answers waiting for their Loop Start */
    this.waiting = [];
    /** @type {Voice[]} */
    this.voices = [];
    this.voiceSeed = 1;
    this.mix = new Float32Array(128);
    /** @type {Record<string, number>} the page's mix: gain per user */
    this.userGains = {};
    /** The gain of a user the mix does not list (0 while another row is soloed). */
    this.restGain = 1;
    this.masterGain = 1;
    this._setMix(config.mix);
    /** The master gain the last quantum ended with (it ramps to masterGain over the next). */
    this.masterGainNow = this.masterGain;
    /** No step at or after this absolute step sounds (an export's end). */
    this.endStep = typeof config.endStep === 'number' ? config.endStep : Infinity;
    /** @type {any[]} commands not yet applied, in arrival order */
    this.commands = (config.script || []).slice();
    this.port.onmessage = (event) => {
      // A status question is answered at once (between quanta, so the answer
      // is consistent); it also flushes: every earlier message is delivered first.
      if (event.data.type === 'status') this._apply(event.data);
      else this.commands.push(event.data);
    };
  }

  /**
   * @param {number} seconds
   * @returns {number} the lead in frames, at least one quantum
   */
  _leadFrames(seconds) {
    return Math.max(128, Math.round(seconds * sampleRate));
  }

  /**
   * @param {Float32Array[][]} _inputs
   * @param {Float32Array[][]} outputs
   * @returns {boolean}
   */
  process(_inputs, outputs) {
    const channels = outputs[0];
    const quantum = channels.length > 0 ? channels[0].length : 128;
    this._applyCommands();
    if (this.mix.length !== quantum) this.mix = new Float32Array(quantum);
    const mix = this.mix;
    mix.fill(0);
    if (this.playing) this._advance(quantum);
    for (const voice of this.voices) {
      const gain = this._gainOf(voice.user);
      voice.render(mix, voice.startIndex, quantum, voice.gain, gain);
      voice.gain = gain;
      voice.startIndex = 0;
    }
    if (this.voices.some((voice) => voice.done)) this.voices = this.voices.filter((voice) => !voice.done);
    const masterFrom = this.masterGainNow;
    const masterTo = this.masterGain;
    for (const channel of channels) {
      for (let index = 0; index < quantum; index++) {
        const sample = mix[index] * (masterFrom + ((masterTo - masterFrom) * index) / quantum);
        channel[index] = sample > 1 ? 1 : sample < -1 ? -1 : sample;
      }
    }
    this.masterGainNow = masterTo;
    this.frame += quantum;
    return true;
  }

  /**
   * Trigger what falls in this quantum: sync moments and step onsets.
   * @param {number} quantum frames in this quantum
   */
  _advance(quantum) {
    const start = this.transportFrame;
    const end = start + quantum;
    for (;;) {
      const syncFrame = this.timeline.loopStartFrame(this.nextSyncLoop) - this.leadFrames;
      const stepFrame = this.timeline.stepFrame(this.nextStep);
      if (syncFrame < end && syncFrame <= stepFrame) {
        // A sync moment already behind us (a tempo change moved it) is signalled at once.
        const offset = Math.max(0, syncFrame - start);
        this.port.postMessage({
          type: 'syncDue', loop: this.nextSyncLoop, frame: this.frame + offset, transportFrame: start + offset,
        });
        this.nextSyncLoop += 1;
      } else if (stepFrame < end && this.nextStep < this.endStep) {
        this._sound(Math.max(0, stepFrame - start));
      } else {
        break;
      }
    }
    this.transportFrame = end;
  }

  /**
   * Start the voices of step `nextStep` at `offset` frames into this quantum.
   * @param {number} offset
   */
  _sound(offset) {
    const absoluteStep = this.nextStep;
    const loop = Math.floor(absoluteStep / this.stepsPerLoop);
    const step = absoluteStep - loop * this.stepsPerLoop;
    if (step === 0) this._switchAtLoopStart(loop, offset);
    /** @type {string[]} */
    const sounded = [];
    if (this.own && this.own.steps[step]) {
      this._startVoice(this.own.sound, this.me, offset);
      sounded.push(this.me);
    }
    for (const { user, part } of this.current.others) {
      if (user !== this.me && part.steps[step]) {
        this._startVoice(part.sound, user, offset);
        sounded.push(user);
      }
    }
    this.port.postMessage({
      type: 'step', loop, step, absoluteStep, frame: this.frame + offset, transportFrame: this.transportFrame + offset,
      contextTime: currentTime + offset / sampleRate, sounded, dataId: this.current.id, dataLoop: this.current.loop,
    });
    this.nextStep = absoluteStep + 1;
  }

  /**
   * At the Loop Start of `loop`: take the newest answer meant for this loop or an earlier one.
   * @param {number} loop
   * @param {number} offset
   */
  _switchAtLoopStart(loop, offset) {
    let chosen = null;
    for (const data of this.waiting) {
      if (data.loop !== null && data.loop <= loop && (chosen === null || data.id > chosen.id)) chosen = data;
    }
    if (chosen === null) return;
    this.waiting = this.waiting.filter((data) => data.loop !== null && data.loop > loop);
    this.current = chosen;
    this.port.postMessage({
      type: 'applied', id: chosen.id, loop: chosen.loop, frame: this.frame + offset,
      contextTime: currentTime + offset / sampleRate, atLoopStart: loop,
    });
  }

  /**
   * @param {string} sound
   * @param {string} user whose part it is (for the mix)
   * @param {number} offset
   */
  _startVoice(sound, user, offset) {
    if (this.voices.length >= MAX_VOICES) this.voices.shift();
    const voice = new Voice(sound, sampleRate, this.voiceSeed++);
    voice.startIndex = offset;
    voice.user = user;
    voice.gain = this._gainOf(user);
    this.voices.push(voice);
  }

  /**
   * @param {string} user
   * @returns {number} the user's gain in the page's mix (1 when not set)
   */
  _gainOf(user) {
    const gain = this.userGains[user];
    return gain === undefined ? this.restGain : gain;
  }

  /** @param {{gains?: Record<string, number>, rest?: number, master?: number} | undefined} mix */
  _setMix(mix) {
    if (!mix) return;
    /** @type {Record<string, number>} */
    const gains = {};
    for (const [user, gain] of Object.entries(mix.gains ?? {})) {
      if (Number.isFinite(gain) && gain >= 0) gains[user] = gain;
    }
    this.userGains = gains;
    this.restGain = Number.isFinite(mix.rest) && /** @type {number} */ (mix.rest) >= 0 ? /** @type {number} */ (mix.rest) : 1;
    if (Number.isFinite(mix.master) && /** @type {number} */ (mix.master) >= 0) this.masterGain = /** @type {number} */ (mix.master);
  }

  _applyCommands() {
    if (this.commands.length === 0) return;
    /** @type {any[]} */
    const later = [];
    for (const command of this.commands) {
      if (command.atFrame !== undefined && command.atFrame > this.frame) later.push(command);
      else this._apply(command);
    }
    this.commands = later;
  }

  /** @param {any} command */
  _apply(command) {
    switch (command.type) {
      case 'play':
        if (!this.playing) {
          this.playing = true;
          this.nextSyncLoop = this._firstSyncLoopAfter(this.transportFrame);
          this._postState();
        }
        break;
      case 'pause':
        if (this.playing) {
          this.playing = false;
          for (const voice of this.voices) voice.fadeOut(this.fadeFrames);
          this._postState();
        }
        break;
      case 'tempo':
        this.timeline.setBpm(command.bpm, this.transportFrame, this.nextStep);
        if (this.playing) this.nextSyncLoop = this._firstSyncLoopAfter(this.transportFrame, this.nextSyncLoop);
        this._postState();
        break;
      case 'lead':
        this.leadFrames = this._leadFrames(command.seconds);
        break;
      case 'steps':
        // The room's step count (fixed when the room was made): known from the first snapshot.
        this.stepsPerLoop = command.steps;
        this.timeline.stepsPerLoop = command.steps;
        if (this.playing) this.nextSyncLoop = this._firstSyncLoopAfter(this.transportFrame);
        break;
      case 'own':
        this.own = command.part;
        if (command.me !== undefined) this.me = command.me;
        break;
      case 'parts': {
        if (command.loop === null || command.loop === undefined) {
          // Paused, or starting to play: the Local Data of now, for the next
          // Loop Start the transport reaches (the current loop, if it has not
          // begun; otherwise the one after). Anything waiting is older news.
          // The rest of a loop paused halfway plays what it began with.
          this.waiting = [{ id: command.id, loop: Math.ceil(this.nextStep / this.stepsPerLoop), others: toUserParts(command.others) }];
        } else {
          this.waiting.push({ id: command.id, loop: command.loop, others: toUserParts(command.others) });
        }
        break;
      }
      case 'mix':
        this._setMix(command);
        break;
      case 'status':
        this.port.postMessage({
          type: 'status', id: command.id, frame: this.frame, transportFrame: this.transportFrame,
          playing: this.playing, positionSteps: this.timeline.positionSteps(this.transportFrame),
          nextStep: this.nextStep, bpm: this.timeline.bpm, dataId: this.current.id, leadFrames: this.leadFrames,
          sampleRate, waiting: this.waiting.map((data) => ({ id: data.id, loop: data.loop })),
          gains: this.userGains, rest: this.restGain, master: this.masterGain,
        });
        break;
      default:
        break;
    }
  }

  /**
   * The first loop whose sync moment is still ahead of `transportFrame`.
   *
   * On play the page syncs at once, so a Loop Start closer than the lead is
   * covered by that sync and needs no second signal.
   * @param {number} transportFrame
   * @param {number} [atLeast] never go back before this loop (after a tempo change)
   * @returns {number}
   */
  _firstSyncLoopAfter(transportFrame, atLeast = 0) {
    const stepsPerLoop = this.stepsPerLoop;
    let loop = Math.max(atLeast, Math.ceil(this.nextStep / stepsPerLoop));
    if (atLeast === 0) {
      while (this.timeline.loopStartFrame(loop) - this.leadFrames < transportFrame) loop += 1;
    }
    return loop;
  }

  _postState() {
    this.port.postMessage({
      type: 'state', playing: this.playing, frame: this.frame, transportFrame: this.transportFrame, bpm: this.timeline.bpm,
    });
  }
}

registerProcessor('loopsync-clock', ClockProcessor);
