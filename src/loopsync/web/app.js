// @ts-check
/**
 * The page: joins a room, wires the rules (rules.js), the audio clock
 * (engine.js + clock-processor.js), the socket (connection.js) and the DOM
 * (ui.js) together.
 *
 * Who keeps time: the clock processor, never this thread. It tells us when a
 * loop's sync moment has come (`syncDue`); we run the sync rules, send our
 * part if it changed, and post the other users' parts for that loop back,
 * tagged with the loop number. If this thread is busy and answers late, the
 * processor keeps the loop it has and uses our answer one Loop Start later.
 *
 * What is drawn is what is heard: clock events carry the AudioContext time
 * of their frame and are released to the DOM when the output reaches that
 * time (heard.js), so a step lights up, and another user's change shows as
 * playing, when it sounds.
 *
 * Address: `/?room=NAME`; `user=NAME` names the user for this tab and is
 * then removed from the address (a shared address never carries an
 * identity); also `bpm=` (initial tempo) and `lead=` (seconds before Loop
 * Start to sync, default 0.05).
 *
 * Debug and test hook: `window.loopsync` (see `_exposeHook`).
 */

import { ClientSync, checkName, copyPart, jsonEqual } from './rules.js';
import { Connection } from './connection.js';
import { Engine, renderLoops } from './engine.js';
import { HeardQueue, heardContextTime } from './heard.js';
import { Mix, userColour } from './mix.js';
import { Presence, describeGroup } from './presence.js';
import { View } from './ui.js';
import { encodeWav } from './wav.js';
import { inviteLink } from './address.js';
import {
  loadMix, loadSession, loadUserName, restoreSession, saveMix, saveSession, saveUserName,
} from './storage.js';

const DEFAULT_ROOM = 'demo';
const DEFAULT_BPM = 120;
const DEFAULT_LEAD_SECONDS = 0.05;
const MAX_EVENTS = 40000;
const MIN_BPM = 20;
const MAX_BPM = 300;
const MAX_EXPORT_LOOPS = 64;
/** How often a countdown on the page ("in 1.2 s", "retrying in 3 s") is redrawn, in ms. */
const COUNTDOWN_MS = 100;

/** @typedef {import('./rules.js').Parts} Parts */

/**
 * @param {Parts} parts
 * @param {string} me
 * @returns {Parts} a copy of every part but `me`'s
 */
function othersOf(parts, me) {
  /** @type {Parts} */
  const others = {};
  for (const user of Object.keys(parts).sort()) if (user !== me) others[user] = copyPart(parts[user]);
  return others;
}

/**
 * @param {string | null} text
 * @param {number} fallback
 * @param {number} min
 * @param {number} max
 * @returns {number}
 */
function numberParam(text, fallback, min, max) {
  const value = text === null ? NaN : Number(text);
  return Number.isFinite(value) && value >= min && value <= max ? value : fallback;
}

class App {
  /**
   * @param {{room: string, user: string, bpm: number, bpmGiven: boolean, leadSeconds: number, storage: Storage | null, view: View, wsUrl: string}} options
   */
  constructor(options) {
    this.room = options.room;
    this.storage = options.storage;
    this.view = options.view;
    this.leadSeconds = options.leadSeconds;
    this.sync = new ClientSync(options.user);
    this.bpm = options.bpm;
    const saved = loadSession(this.storage, this.room, options.user);
    if (saved) {
      restoreSession(this.sync, saved);
      if (!options.bpmGiven && saved.bpm >= MIN_BPM && saved.bpm <= MAX_BPM) this.bpm = saved.bpm;
    }
    this.presence = new Presence();
    this.mix = new Mix(loadMix(this.storage, this.room, this.sync.me));
    /** What the listener hears for the other users now (clock `applied` reports, released when heard). */
    /** @type {Parts} */
    this.heardOthers = {};
    /** Parts posted to the processor, by id, with the loop they were posted for, until it reports them applied. */
    /** @type {Map<number, {loop: number | null, others: Parts}>} */
    this.posted = new Map();
    this.dataSerial = 0;
    this.postedOwnJson = '';
    /** The last loop whose sync moment the clock signalled. */
    this.lastSyncLoop = -1;
    /** Every clock message and page-level sync event, oldest first (tests read it). */
    /** @type {any[]} */
    this.events = [];
    /** Clock events (steps, data switches) waiting until they are heard. */
    /** @type {HeardQueue<any>} */
    this.heardQueue = new HeardQueue();
    /** The newest step the clock rendered (maybe not heard yet), for when the next Loop Starts are. */
    /** @type {{loop: number, step: number, contextTime: number} | null} */
    this.renderedStep = null;
    /** The AudioContext time heard at the last animation frame. */
    this.heardNow = 0;
    this.ticking = false;
    this.lastCountdownMs = 0;
    /** @type {{loop: number, step: number} | null} */
    this.playhead = null;
    /** @type {ReturnType<typeof setInterval> | null} */
    this.offlineTimer = null;
    /** @type {{name: string, frames: number, sampleRate: number, url: string} | null} */
    this.lastExport = null;
    this.engine = new Engine({
      me: this.sync.me,
      steps: this.sync.steps,
      bpm: this.bpm,
      leadSeconds: this.leadSeconds,
      own: copyPart(this.sync.own),
      others: {},
      mix: this.mix.gains(),
      onClockMessage: (message) => this._onClockMessage(message),
    });
    this.connection = new Connection(options.wsUrl, {
      onOpen: () => this._onOpen(),
      onMessage: (message) => this._onServerMessage(message),
      onClose: (info) => this._onClose(info),
    });
  }

  /** Start the audio clock, then connect. */
  async start() {
    this.view.showApp(this.room, this.sync.me);
    this.view.setBpm(this.bpm);
    this.view.setSound(this.sync.own.sound);
    this.view.setMaster(this.mix.master);
    this.view.setPlaying(false);
    this.view.setConnection('connecting', 'connecting…');
    this._render();
    await this.engine.start();
    this.postedOwnJson = JSON.stringify(this.sync.own);
    this.connection.start();
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this._catchUp();
    });
    window.addEventListener('online', () => this._catchUp());
    window.addEventListener('pageshow', (event) => {
      if (event.persisted) this._catchUp();
    });
  }

  // -- what the user does ---------------------------------------------------

  /** Play or pause. */
  togglePlay() {
    if (this.sync.playing) this.pause();
    else this.play();
  }

  /** Start the clock from its held position; sync at once and send edits made while paused. */
  play() {
    if (this.sync.playing) return;
    this.engine.resume().catch(() => this.view.setMessage('The browser did not let the audio start.'));
    this._send(this.sync.play());
    this._postPartsNow();
    this.engine.post({ type: 'play' });
    // The last step rendered before the pause no longer dates what comes: the next one will.
    this.renderedStep = null;
    this._event({ type: 'play' });
    this.connection.send({ type: 'transport', playing: true, bpm: this.bpm });
    this.view.setPlaying(true);
    this._save();
    this._render();
    this._startTicking();
  }

  /** Stop the clock (the position holds); from now on others' changes show at once. */
  pause() {
    if (!this.sync.playing) return;
    this.engine.post({ type: 'pause' });
    this._send(this.sync.pause());
    this._postPartsNow();
    this._event({ type: 'pause' });
    this.connection.send({ type: 'transport', playing: false, bpm: this.bpm });
    this.view.setPlaying(false);
    this._render();
  }

  /** @param {number} step */
  toggleStep(step) {
    this.sync.toggle(step);
    this._postOwn();
    this._save();
    this._render();
  }

  /** @param {string} sound */
  setSound(sound) {
    this.sync.setSound(sound);
    this._postOwn();
    this._save();
    this._render();
  }

  /**
   * A tempo from the tempo field: taken when it is a number from 20 to 300,
   * otherwise the field goes back to the tempo the clock plays and says why.
   * @param {string} text
   */
  setBpmText(text) {
    const bpm = text.trim() === '' ? NaN : Number(text);
    if (!Number.isFinite(bpm) || bpm < MIN_BPM || bpm > MAX_BPM) {
      this.view.setBpm(this.bpm);
      this.view.setBpmNote(`The tempo must be from ${MIN_BPM} to ${MAX_BPM} BPM: "${text.slice(0, 12)}" is not. The loop stays at ${this.bpm} BPM.`);
      return;
    }
    this.view.setBpmNote('');
    this.setBpm(bpm);
  }

  /** @param {number} bpm */
  setBpm(bpm) {
    if (!(bpm >= MIN_BPM && bpm <= MAX_BPM)) throw new RangeError(`bpm must be from ${MIN_BPM} to ${MAX_BPM}, got ${bpm}`);
    this.bpm = bpm;
    this.view.setBpm(bpm);
    this.engine.post({ type: 'tempo', bpm });
    this.connection.send({ type: 'transport', playing: this.sync.playing, bpm });
    this._save();
    this._render();
  }

  /**
   * Change this page's mix for one row (kept in localStorage, never sent).
   * @param {string} user
   * @param {{mute?: boolean, solo?: boolean, volume?: number}} change
   */
  setMix(user, change) {
    this.mix.set(user, change);
    this._postMix();
    this._render();
  }

  /** @param {number} volume 0-1 */
  setMaster(volume) {
    this.mix.setMaster(volume);
    this._postMix();
  }

  /**
   * A touch, click or key while the audio may be locked: mobile browsers let audio start only from one.
   * @returns {boolean} true when the audio runs (no need to be called again)
   */
  unlockAudio() {
    if (this.engine.context?.state === 'running') return true;
    const session = /** @type {any} */ (navigator).audioSession;
    // iOS: play through the silent switch, like a music app.
    if (session && 'type' in session) {
      try {
        session.type = 'playback';
      } catch {
        // not supported here: nothing to do
      }
    }
    this.engine.resume().catch(() => {});
    return false;
  }

  /** Copy the invite link (the room only, never the user) or show it to copy by hand. */
  async share() {
    const link = inviteLink(location.href, this.room);
    let copied = false;
    try {
      if (navigator.clipboard) {
        await navigator.clipboard.writeText(link);
        copied = true;
      }
    } catch {
      copied = false; // not a secure context, or no permission: the link is shown instead
    }
    this.view.showInvite(link, copied);
  }

  /**
   * Render `loops` loops of what this page plays (Local Data, tempo, mix) to a WAV file and download it.
   * @param {number} loops
   */
  async exportWav(loops) {
    if (!Number.isInteger(loops) || loops < 1 || loops > MAX_EXPORT_LOOPS) {
      this.view.setExport(false, `The number of loops must be a whole number from 1 to ${MAX_EXPORT_LOOPS}.`);
      return;
    }
    this.view.setExport(true, 'Rendering…');
    try {
      const sampleRate = this.engine.context ? this.engine.context.sampleRate : 48000;
      const rendered = await renderLoops({
        sampleRate, me: this.sync.me, steps: this.sync.steps, bpm: this.bpm, loops,
        own: copyPart(this.sync.own), others: othersOf(this.sync.loopParts, this.sync.me), mix: this.mix.gains(),
      });
      const blob = new Blob([encodeWav(rendered.channels, sampleRate)], { type: 'audio/wav' });
      const name = `loopsync-${this.room}-${Math.round(this.bpm)}bpm-${loops}loops.wav`;
      const url = URL.createObjectURL(blob);
      const link = document.createElement('a');
      link.href = url;
      link.download = name;
      document.body.append(link);
      link.click();
      link.remove();
      if (this.lastExport) URL.revokeObjectURL(this.lastExport.url);
      this.lastExport = { name, frames: rendered.channels[0].length, sampleRate, url };
      const seconds = rendered.channels[0].length / sampleRate;
      this.view.setExport(false, `Saved ${name} (${seconds.toFixed(1)} s, ${loops} loops at ${this.bpm} BPM and the last sounds ringing out).`);
    } catch (error) {
      this.view.setExport(false, `The export failed: ${error}`);
    }
  }

  // -- the clock ------------------------------------------------------------

  /** @param {any} message */
  _onClockMessage(message) {
    this._event(message);
    switch (message.type) {
      case 'syncDue':
        this.lastSyncLoop = message.loop;
        this._syncForLoop(message.loop);
        break;
      case 'applied': {
        const posted = this.posted.get(message.id);
        for (const id of this.posted.keys()) if (id <= message.id) this.posted.delete(id);
        if (posted) this._whenHeard({ type: 'applied', contextTime: message.contextTime, others: posted.others });
        break;
      }
      case 'step':
        this.renderedStep = { loop: message.loop, step: message.step, contextTime: message.contextTime };
        this._whenHeard({ type: 'step', contextTime: message.contextTime, loop: message.loop, step: message.step });
        break;
      case 'state':
        if (!message.playing) this._heard(this.heardQueue.releaseAll()); // nothing more will sound
        break;
      default:
        break;
    }
  }

  /** @param {any} item a clock event to show once it is heard */
  _whenHeard(item) {
    this._heard(this.heardQueue.push(item));
    this._startTicking();
  }

  /**
   * Show clock events that are heard now.
   * @param {any[]} items
   * @returns {boolean} true when what the grid shows changed
   */
  _heard(items) {
    let changed = false;
    for (const item of items) {
      if (item.type === 'step') {
        this.playhead = { loop: item.loop, step: item.step };
        this.view.setPlayhead(item.loop, item.step);
      } else if (item.type === 'applied') {
        this.heardOthers = item.others;
        changed = true;
      }
    }
    if (changed) this._render();
    return changed;
  }

  _startTicking() {
    if (this.ticking) return;
    this.ticking = true;
    requestAnimationFrame(() => this._tick());
  }

  /** One animation frame: release what is heard now, redraw countdowns. */
  _tick() {
    const context = this.engine.context;
    if (context) {
      /** @type {any} */
      let stamp = null;
      try {
        stamp = typeof context.getOutputTimestamp === 'function' ? context.getOutputTimestamp() : null;
      } catch {
        stamp = null;
      }
      this.heardNow = heardContextTime({
        currentTime: context.currentTime, baseLatency: context.baseLatency ?? 0, outputLatency: context.outputLatency ?? 0,
        outputTimestamp: stamp, performanceNow: performance.now(),
      });
      const changed = this._heard(this.heardQueue.release(this.heardNow));
      const now = performance.now();
      if (!changed && now - this.lastCountdownMs >= COUNTDOWN_MS && this.sync.playing) {
        this.lastCountdownMs = now;
        this._render();
      }
    }
    if (this.sync.playing || this.heardQueue.items.length > 0) requestAnimationFrame(() => this._tick());
    else this.ticking = false;
  }

  /**
   * The sync moment of `loop`: merge, send the own part if it changed, hand the loop's data to the clock.
   * @param {number} loop
   */
  _syncForLoop(loop) {
    const sent = this._send(this.sync.sync());
    const id = ++this.dataSerial;
    const others = othersOf(this.sync.loopParts, this.sync.me);
    this.posted.set(id, { loop, others });
    this.engine.post({ type: 'parts', id, loop, others });
    this._event({ type: 'sync', loop, id, sent: sent.length, users: Object.keys(others) });
    this._save();
    this._render();
  }

  /** Paused (or starting to play): Local Data of now, which the clock takes at the next Loop Start it reaches. */
  _postPartsNow() {
    const id = ++this.dataSerial;
    const others = othersOf(this.sync.loopParts, this.sync.me);
    this.posted.set(id, { loop: null, others });
    this.engine.post({ type: 'parts', id, loop: null, others });
  }

  _postOwn() {
    this.postedOwnJson = JSON.stringify(this.sync.own);
    this.engine.post({ type: 'own', part: copyPart(this.sync.own) });
  }

  _postMix() {
    this.engine.post({ type: 'mix', ...this.mix.gains() });
    saveMix(this.storage, this.room, this.sync.me, this.mix.toJSON());
  }

  // -- the server -----------------------------------------------------------

  _onOpen() {
    this._stopOfflineTimer();
    this.view.setConnection('open', 'connected');
    this.connection.send({
      type: 'hello', v: 1, room: this.room, user: this.sync.me, playing: this.sync.playing, bpm: this.bpm,
    });
  }

  /** @param {{code: number, retrySeconds: number}} info */
  _onClose(info) {
    this.sync.onDisconnect();
    this.presence.onDisconnect();
    this._event({ type: 'disconnected', code: info.code });
    this._showOffline();
    if (this.offlineTimer === null) this.offlineTimer = setInterval(() => this._showOffline(), COUNTDOWN_MS * 2);
    this._render();
  }

  /** While offline: count down to the next attempt, every few tenths of a second. */
  _showOffline() {
    if (this.connection.state === 'open') {
      this._stopOfflineTimer();
      return;
    }
    if (this.connection.state === 'connecting') {
      this.view.setConnection('closed', 'offline · reconnecting…');
      return;
    }
    const seconds = Math.max(0, (this.connection.retryAt - performance.now()) / 1000);
    this.view.setConnection('closed', `offline · retrying in ${Math.ceil(seconds)} s`);
  }

  _stopOfflineTimer() {
    if (this.offlineTimer !== null) clearInterval(this.offlineTimer);
    this.offlineTimer = null;
  }

  /** @param {any} message */
  _onServerMessage(message) {
    this._event({ type: 'recv', kind: message.type, user: message.user, seq: message.seq, revision: message.revision });
    if (message.type === 'presence') {
      if (this.presence.apply(message)) this._render();
      return;
    }
    if (message.type === 'error') {
      this.view.setMessage(errorText(message));
    } else if (message.type === 'snapshot') {
      this.view.setMessage('');
      this.presence.onMessage(message);
    }
    const steps = this.sync.steps;
    this._send(this.sync.onMessage(message));
    if (this.sync.steps !== steps) this.engine.post({ type: 'steps', steps: this.sync.steps });
    if (!this.sync.playing && (message.type === 'snapshot' || message.type === 'update')) this._postPartsNow();
    if (JSON.stringify(this.sync.own) !== this.postedOwnJson) {
      this._postOwn();
      this.view.setSound(this.sync.own.sound);
    }
    this._save();
    this._render();
  }

  /** Back from the background, or the network is back: get the current Shared Data. */
  _catchUp() {
    if (this.connection.state === 'open') this.connection.send({ type: 'fetch' });
    else this.connection.reconnectNow();
  }

  /** The user asked to reconnect at once. */
  reconnectNow() {
    this.connection.reconnectNow();
    this._showOffline();
  }

  /**
   * @param {any[]} messages
   * @returns {any[]} the messages that went out
   */
  _send(messages) {
    return messages.filter((message) => this.connection.send(message));
  }

  _save() {
    saveSession(this.storage, this.room, this.sync, this.bpm);
  }

  // -- display --------------------------------------------------------------

  /** @param {any} event */
  _event(event) {
    this.events.push(event);
    if (this.events.length > MAX_EVENTS) this.events.splice(0, MAX_EVENTS / 2);
  }

  /**
   * The loop at whose Loop Start another user's latest part is first heard.
   * @param {string} user
   * @returns {number | null} null when it is not known (nothing rendered yet)
   */
  _loopHeardFrom(user) {
    if (this.renderedStep === null) return null;
    const latest = this.sync.shared[user];
    // The loop of the next Loop Start the transport reaches: the clock takes Local Data posted without a loop
    // (while paused, at play) there, `ceil(nextStep / steps)` as in clock-processor.js.
    const steps = this.sync.steps;
    const nextLoopStart = Math.ceil((this.renderedStep.loop * steps + this.renderedStep.step + 1) / steps);
    // Posted to the clock already (a sync, or Local Data while paused)? An
    // answer still here after its Loop Start was rendered came too late for
    // it: the clock takes it at the next one.
    /** @type {number | null} */
    let loop = null;
    for (const { loop: postedLoop, others } of this.posted.values()) {
      if (jsonEqual(others[user] ?? null, latest ?? null)) loop = Math.max(postedLoop ?? nextLoopStart, nextLoopStart);
    }
    if (loop !== null) return loop;
    // Not yet: the next sync moment still to come takes it.
    return Math.max(this.lastSyncLoop + 1, nextLoopStart);
  }

  /**
   * @param {number} loop
   * @returns {number | null} seconds until the Loop Start of `loop` is heard
   */
  _secondsUntilHeard(loop) {
    const rendered = this.renderedStep;
    if (rendered === null) return null;
    const secondsPerStep = 60 / this.bpm / 4;
    const steps = loop * this.sync.steps - (rendered.loop * this.sync.steps + rendered.step);
    return rendered.contextTime + steps * secondsPerStep - this.heardNow;
  }

  /**
   * @param {string} user
   * @returns {number | null} seconds until `user`'s latest part is heard; null when it is not known
   */
  _secondsUntilHeardFor(user) {
    const latest = this.sync.shared[user] ?? null;
    // Switched to by the clock already, and on its way to the speaker?
    for (const item of this.heardQueue.items) {
      if (item.type === 'applied' && jsonEqual(item.others[user] ?? null, latest)) return item.contextTime - this.heardNow;
    }
    const loop = this._loopHeardFrom(user);
    return loop === null ? null : this._secondsUntilHeard(loop);
  }

  _render() {
    const sync = this.sync;
    const me = sync.me;
    // What is heard: while playing, what the clock reports it plays (once
    // heard); while paused, Local Data (shown at once, played from the next
    // Loop Start the transport reaches).
    const heard = sync.playing ? this.heardOthers : othersOf(sync.loopParts, me);
    const groups = this.presence.groups(me);
    const groupOf = new Map(groups.map((group) => [group.user, group]));
    const users = new Set([...Object.keys(heard), ...Object.keys(sync.shared), ...groups.map((group) => group.user)]);
    users.delete(me);
    const ownUnsent = sync.own.steps.map((value, step) => value !== (sync.confirmed ? sync.confirmed.steps[step] : 0));
    const otherTabs = groupOf.get(me)?.otherTabs ?? [];
    const ownDetail = [
      sync.own.sound,
      sync.playing ? 'playing' : 'paused',
      otherTabs.length ? `also in ${otherTabs.length} other tab${otherTabs.length > 1 ? 's' : ''}` : '',
    ].filter(Boolean).join(' · ');
    /** @type {import('./ui.js').RowView[]} */
    const rows = [{
      user: me, own: true, colour: userColour(me), sound: sync.own.sound, steps: sync.own.steps, incoming: null,
      unsent: sync.connected || sync.confirmed !== null || sync.own.steps.some(Boolean) ? ownUnsent : null,
      detail: ownDetail, when: sync.own.sound !== (sync.confirmed?.sound ?? sync.own.sound) ? 'sound not sent yet' : '',
      away: false, mix: this.mix.row(me), silenced: this.mix.silenced(me),
    }];
    for (const user of [...users].sort()) {
      const part = heard[user] ?? null;
      const latest = sync.shared[user] ?? null;
      const waiting = sync.playing && latest !== null && !jsonEqual(part, latest);
      const group = groupOf.get(user);
      const away = this.presence.known && !group && (part !== null || latest !== null);
      let detail = part ? part.sound : latest ? latest.sound : 'no part yet';
      if (group) {
        const { state, tempo } = describeGroup(group);
        detail = [detail, state, tempo].filter(Boolean).join(' · ');
      } else if (away) {
        detail = `${detail} · not connected`;
      }
      let when = '';
      if (waiting) {
        const seconds = this._secondsUntilHeardFor(user);
        when = seconds === null ? 'changes at the next Loop Start' : `changes in ${Math.max(0, seconds).toFixed(1)} s`;
      }
      rows.push({
        user, own: false, colour: userColour(user),
        sound: part ? part.sound : latest ? latest.sound : null,
        steps: part ? part.steps : new Array(sync.steps).fill(0),
        incoming: waiting && latest ? latest.steps : null,
        unsent: null, detail, when, away, mix: this.mix.row(user), silenced: this.mix.silenced(user),
      });
    }
    this.view.renderRows(rows, sync.steps);
    this._renderPresence(groups);
    if (sync.dirty()) {
      this.view.setUnsent(sync.playing
        ? (sync.connected ? 'Your changes (marked •) go out at the next Loop Start.' : 'Your changes (marked •) go out when the page is back online.')
        : 'Your changes (marked •) are sent when you play.');
    } else {
      this.view.setUnsent('');
    }
  }

  /** @param {import('./presence.js').PresenceGroup[]} groups */
  _renderPresence(groups) {
    if (!this.presence.known) {
      const note = this.connection.state === 'open' || (this.connection.state === 'connecting' && this.offlineTimer === null)
        ? 'Joining…'
        : 'Offline: who is in the room is not known until the page is back online. Your loop plays on, and your changes are kept.';
      this.view.setPresence([], note, '');
      return;
    }
    const items = groups.map((group) => {
      if (group.own) {
        const extra = group.otherTabs.length ? ` · also in ${group.otherTabs.length} other tab${group.otherTabs.length > 1 ? 's' : ''}` : '';
        return {
          user: group.user, playing: this.sync.playing,
          text: `${group.user} (you) · ${this.sync.playing ? 'playing' : 'paused'} · ${Math.round(this.bpm)} BPM${extra}`,
        };
      }
      const { state, tempo } = describeGroup(group);
      return { user: group.user, playing: group.playingTabs > 0, text: [group.user, state, tempo].filter(Boolean).join(' · ') };
    });
    const others = groups.filter((group) => !group.own);
    const note = others.length === 0 ? 'Only you so far: copy the invite link to bring someone in.' : '';
    let tempoNote = '';
    if (others.length > 0) {
      const differing = others.filter((group) => group.tabs.some((tab) => tab.bpm !== null && Math.round(tab.bpm) !== Math.round(this.bpm)));
      tempoNote = `Each page plays every row at its own tempo: here every row plays at ${Math.round(this.bpm)} BPM`
        + (differing.length ? `, while ${differing.map((group) => `${group.user} hears the loop at ${describeGroup(group).tempo}`).join(', ')}.` : '.');
    }
    this.view.setPresence(items, note, tempoNote);
  }

  /** `window.loopsync`: the state for debugging and for the browser tests. */
  _exposeHook() {
    const app = this;
    /** @type {any} */ (window).loopsync = {
      app,
      get events() { return app.events; },
      get sync() { return app.sync; },
      get presence() { return app.presence; },
      get mix() { return app.mix; },
      get sentCount() { return app.connection.sentCount; },
      get sentLog() { return app.connection.sentLog; },
      get connectionState() { return app.connection.state; },
      get output() { return app.engine.output; },
      get context() { return app.engine.context; },
      get lastExport() { return app.lastExport; },
      status: () => app.engine.status(),
      play: () => app.play(),
      pause: () => app.pause(),
      toggleStep: (/** @type {number} */ step) => app.toggleStep(step),
      setBpm: (/** @type {number} */ bpm) => app.setBpm(bpm),
    };
  }
}

/**
 * @param {Record<string, any>} message an `error` from the server
 * @returns {string} what the page says about it
 */
function errorText(message) {
  if (message.code === 'unavailable' || message.code === 'rate_limited') {
    return 'The server could not take your change just now; the page sends it again at the next sync.';
  }
  return `The server refused a message: ${message.message} (${message.code}).`;
}

/** Read the address, find out who the user is, start. */
async function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get('room') || DEFAULT_ROOM;
  const bpmGiven = params.has('bpm');
  const bpm = numberParam(params.get('bpm'), DEFAULT_BPM, MIN_BPM, MAX_BPM);
  const leadSeconds = numberParam(params.get('lead'), DEFAULT_LEAD_SECONDS, 0, 10);
  /** @param {'localStorage' | 'sessionStorage'} name */
  const storageOf = (name) => {
    try {
      return window[name];
    } catch {
      return null;
    }
  };
  const storage = storageOf('localStorage');
  const tabStorage = storageOf('sessionStorage');
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  /** @type {App | null} */
  let app = null;
  const view = new View(document, {
    onToggle: (step) => app?.toggleStep(step),
    onPlayPause: () => app?.togglePlay(),
    onBpm: (text) => app?.setBpmText(text),
    onSound: (sound) => app?.setSound(sound),
    onMix: (user, change) => app?.setMix(user, change),
    onMaster: (volume) => app?.setMaster(volume),
    onShare: () => app?.share(),
    onReconnect: () => app?.reconnectNow(),
    onExport: (loops) => app?.exportWav(loops),
    onFirstGesture: () => app?.unlockAudio() ?? false,
    onJoin: (name) => {
      const invalid = checkName('user', name);
      if (invalid) {
        view.showJoin(room, `That name will not do: ${invalid.message}.`);
        return;
      }
      saveUserName(storage, name, tabStorage);
      begin(name);
    },
  });
  const roomInvalid = checkName('room', room);
  if (roomInvalid) {
    view.showApp(room, '?');
    view.setMessage(`Cannot join: ${roomInvalid.message}.`);
    return;
  }
  /** @param {string} user */
  const begin = (user) => {
    app = new App({ room, user, bpm, bpmGiven, leadSeconds, storage, view, wsUrl });
    app._exposeHook();
    app.start().catch((error) => {
      view.setMessage(`Could not start the audio clock: ${error}`);
      throw error;
    });
  };
  // `?user=` names this tab's user; it leaves the address at once, so that
  // the address bar never hands the identity on (the invite link is the room).
  const fromAddress = params.get('user');
  if (fromAddress !== null) {
    params.delete('user');
    const query = params.toString();
    history.replaceState(history.state, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
    if (!checkName('user', fromAddress)) saveUserName(storage, fromAddress, tabStorage, true);
  }
  const user = loadUserName(storage, tabStorage);
  if (user && !checkName('user', user)) begin(user);
  else view.showJoin(room, fromAddress !== null ? `"${fromAddress.slice(0, 40)}" is not a name: use 1-32 letters, digits, _ or -.` : '');
}

main();
