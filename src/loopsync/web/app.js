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
 * Address: `/?room=NAME&user=NAME`; also `bpm=` (initial tempo) and `lead=`
 * (seconds before Loop Start to sync, default 0.05).
 *
 * Debug and test hook: `window.loopsync` (see `_exposeHook`).
 */

import { ClientSync, checkName, copyPart, jsonEqual } from './rules.js';
import { Connection } from './connection.js';
import { Engine } from './engine.js';
import { View } from './ui.js';
import { loadSession, loadUserName, restoreSession, saveSession, saveUserName } from './storage.js';

const DEFAULT_ROOM = 'demo';
const DEFAULT_BPM = 120;
const DEFAULT_LEAD_SECONDS = 0.05;
const MAX_EVENTS = 40000;

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
      if (!options.bpmGiven && saved.bpm) this.bpm = saved.bpm;
    }
    /** @type {{user: string, playing: boolean, bpm: number | null}[]} */
    this.presence = [];
    /** What the processor plays for the other users now (from its `applied` reports). */
    /** @type {Parts} */
    this.heardOthers = {};
    /** Parts posted to the processor, by id, until it reports them applied. */
    /** @type {Map<number, Parts>} */
    this.posted = new Map();
    this.dataSerial = 0;
    this.postedOwnJson = '';
    /** Every clock message and page-level sync event, oldest first (tests read it). */
    /** @type {any[]} */
    this.events = [];
    this.renderQueued = false;
    /** @type {{loop: number, step: number} | null} */
    this.playhead = null;
    this.engine = new Engine({
      me: this.sync.me,
      steps: this.sync.steps,
      bpm: this.bpm,
      leadSeconds: this.leadSeconds,
      own: copyPart(this.sync.own),
      others: {},
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
    this._event({ type: 'play' });
    this.connection.send({ type: 'transport', playing: true, bpm: this.bpm });
    this.view.setPlaying(true);
    this._save();
    this._render();
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

  /** @param {number} bpm */
  setBpm(bpm) {
    this.bpm = bpm;
    this.engine.post({ type: 'tempo', bpm });
    this.connection.send({ type: 'transport', playing: this.sync.playing, bpm });
    this._save();
  }

  // -- the clock ------------------------------------------------------------

  /** @param {any} message */
  _onClockMessage(message) {
    this._event(message);
    switch (message.type) {
      case 'syncDue':
        this._syncForLoop(message.loop);
        break;
      case 'applied': {
        const others = this.posted.get(message.id);
        if (others) this.heardOthers = others;
        for (const id of this.posted.keys()) if (id < message.id) this.posted.delete(id);
        this._render();
        break;
      }
      case 'step':
        this.playhead = { loop: message.loop, step: message.step };
        this._queueRender();
        break;
      default:
        break;
    }
  }

  /**
   * The sync moment of `loop`: merge, send the own part if it changed, hand the loop's data to the clock.
   * @param {number} loop
   */
  _syncForLoop(loop) {
    const sent = this._send(this.sync.sync());
    const id = ++this.dataSerial;
    const others = othersOf(this.sync.loopParts, this.sync.me);
    this.posted.set(id, others);
    this.engine.post({ type: 'parts', id, loop, others });
    this._event({ type: 'sync', loop, id, sent: sent.length, users: Object.keys(others) });
    this._save();
    this._render();
  }

  /** Paused (or starting to play): the clock takes the other users' parts at once. */
  _postPartsNow() {
    const id = ++this.dataSerial;
    const others = othersOf(this.sync.loopParts, this.sync.me);
    this.posted.set(id, others);
    this.engine.post({ type: 'parts', id, loop: null, others });
  }

  _postOwn() {
    this.postedOwnJson = JSON.stringify(this.sync.own);
    this.engine.post({ type: 'own', part: copyPart(this.sync.own) });
  }

  // -- the server -----------------------------------------------------------

  _onOpen() {
    this.view.setConnection('open', 'connected');
    this.connection.send({
      type: 'hello', v: 1, room: this.room, user: this.sync.me, playing: this.sync.playing, bpm: this.bpm,
    });
  }

  /** @param {{code: number, retrySeconds: number}} info */
  _onClose(info) {
    this.sync.onDisconnect();
    this._event({ type: 'disconnected', code: info.code });
    this.view.setConnection('closed', `offline, retrying in ${info.retrySeconds.toFixed(1)} s`);
    this.presence = [];
    this._render();
  }

  /** @param {any} message */
  _onServerMessage(message) {
    this._event({ type: 'recv', kind: message.type, user: message.user, seq: message.seq, revision: message.revision });
    if (message.type === 'presence') {
      this.presence = Array.isArray(message.users) ? message.users : [];
      this._render();
      return;
    }
    if (message.type === 'error') {
      this.view.setMessage(`The server refused a message: ${message.message} (${message.code}).`);
    } else if (message.type === 'snapshot') {
      this.view.setMessage('');
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

  _queueRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      if (this.playhead) this.view.setPlayhead(this.playhead.loop, this.playhead.step);
    });
  }

  _render() {
    const sync = this.sync;
    const me = sync.me;
    // What is heard: while playing, what the clock reports it plays; while
    // paused, Local Data (the clock takes it at once, and a suspended
    // AudioContext would not report back).
    const heard = sync.playing ? this.heardOthers : othersOf(sync.loopParts, me);
    const statusOf = (/** @type {string} */ user) => {
      const entries = this.presence.filter((entry) => entry.user === user);
      if (entries.length === 0) return '';
      return entries.some((entry) => entry.playing) ? 'playing' : 'paused';
    };
    const users = new Set([...Object.keys(heard), ...Object.keys(sync.shared), ...this.presence.map((entry) => entry.user)]);
    users.delete(me);
    /** @type {import('./ui.js').RowView[]} */
    const rows = [{ user: me, own: true, sound: sync.own.sound, steps: sync.own.steps, incoming: null, status: statusOf(me) }];
    for (const user of [...users].sort()) {
      const part = heard[user] ?? null;
      const latest = sync.shared[user] ?? null;
      const waiting = sync.playing && latest !== null && !jsonEqual(part, latest);
      rows.push({
        user,
        own: false,
        sound: part ? part.sound : latest ? latest.sound : null,
        steps: part ? part.steps : new Array(sync.steps).fill(0),
        incoming: waiting && latest ? latest.steps : null,
        status: statusOf(user),
      });
    }
    this.view.renderRows(rows, sync.steps);
    this.view.setPresence(this.presence);
    if (sync.dirty()) {
      this.view.setUnsent(sync.playing ? 'Your changes go out at the next Loop Start.' : 'Your changes are sent when you play.');
    } else {
      this.view.setUnsent('');
    }
  }

  /** `window.loopsync`: the state for debugging and for the browser tests. */
  _exposeHook() {
    const app = this;
    /** @type {any} */ (window).loopsync = {
      app,
      get events() { return app.events; },
      get sync() { return app.sync; },
      get sentCount() { return app.connection.sentCount; },
      get sentLog() { return app.connection.sentLog; },
      get connectionState() { return app.connection.state; },
      get output() { return app.engine.output; },
      get context() { return app.engine.context; },
      status: () => app.engine.status(),
      play: () => app.play(),
      pause: () => app.pause(),
      toggleStep: (/** @type {number} */ step) => app.toggleStep(step),
      setBpm: (/** @type {number} */ bpm) => app.setBpm(bpm),
    };
  }
}

/** Read the address, find out who the user is, start. */
async function main() {
  const params = new URLSearchParams(location.search);
  const room = params.get('room') || DEFAULT_ROOM;
  const bpmGiven = params.has('bpm');
  const bpm = numberParam(params.get('bpm'), DEFAULT_BPM, 20, 300);
  const leadSeconds = numberParam(params.get('lead'), DEFAULT_LEAD_SECONDS, 0, 10);
  const storage = (() => {
    try {
      return window.localStorage;
    } catch {
      return null;
    }
  })();
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  /** @type {App | null} */
  let app = null;
  const view = new View(document, {
    onToggle: (step) => app?.toggleStep(step),
    onPlayPause: () => app?.togglePlay(),
    onBpm: (value) => app?.setBpm(value),
    onSound: (sound) => app?.setSound(sound),
    onJoin: (name) => {
      const invalid = checkName('user', name);
      if (invalid) {
        view.setMessage(`That name will not do: ${invalid.message}.`);
        return;
      }
      saveUserName(storage, name);
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
  const user = params.get('user') || loadUserName(storage);
  if (user && !checkName('user', user)) begin(user);
  else view.showJoin(room);
}

main();
