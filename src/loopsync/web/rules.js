// @ts-check
/**
 * The browser's copy of the core rules: the document (document.py) and the
 * client's sync state machine (ClientSync in sync.py), with no DOM, no
 * AudioContext, no socket and no clock. The page feeds it the server's
 * messages, the user's edits and the clock's sync moments, and sends what it
 * returns. Method names are sync.py's in camelCase; the shared JSON vectors
 * of tests/vectors/ run against both copies so they cannot drift apart.
 */

/** @typedef {{sound: string, steps: number[]}} Part */
/** @typedef {Record<string, Part>} Parts */
/** @typedef {Record<string, any>} Message */
/** @typedef {{code: string, message: string}} Invalid */

export const DEFAULT_STEPS = 16;
export const MIN_STEPS = 1;
export const MAX_STEPS = 64;
export const MAX_PARTS = 256;
export const SOUNDS = Object.freeze(['kick', 'snare', 'hat', 'clap', 'tom', 'tone']);
const NAME_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;

/**
 * A short, readable rendering of a value for an error message (like Python's repr, roughly).
 * @param {unknown} value
 * @param {number} limit
 * @returns {string}
 */
function show(value, limit) {
  const text = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  return text.slice(0, limit);
}

/**
 * @param {unknown} value
 * @returns {string} the Python-ish type name of a JSON value, for messages
 */
function typeName(value) {
  if (value === null) return 'NoneType';
  if (Array.isArray(value)) return 'list';
  if (typeof value === 'string') return 'str';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float';
  if (typeof value === 'object') return 'dict';
  return typeof value;
}

/**
 * Check a room or user name: 1-32 of `A-Z a-z 0-9 _ -`.
 * @param {string} kind "room" or "user", for the message
 * @param {unknown} value
 * @returns {Invalid | null} null when valid
 */
export function checkName(kind, value) {
  if (typeof value !== 'string') {
    return { code: 'bad_name', message: `${kind} name must be a string, got ${typeName(value)}` };
  }
  if (!NAME_PATTERN.test(value)) {
    return { code: 'bad_name', message: `${kind} name must be 1-32 of A-Z a-z 0-9 _ -, got '${value.slice(0, 40)}'` };
  }
  return null;
}

/**
 * Check one part against the room's step count.
 * @param {unknown} part
 * @param {number} stepCount
 * @returns {Invalid | null} null when valid
 */
export function checkPart(part, stepCount) {
  if (part === null || typeof part !== 'object' || Array.isArray(part)) {
    return { code: 'bad_part', message: `part must be an object, got ${typeName(part)}` };
  }
  const record = /** @type {Record<string, unknown>} */ (part);
  const extra = Object.keys(record).filter((key) => key !== 'sound' && key !== 'steps').sort();
  if (extra.length > 0) return { code: 'bad_part', message: `unknown part field: '${extra[0]}'` };
  const sound = record.sound;
  if (typeof sound !== 'string' || !SOUNDS.includes(sound)) {
    return { code: 'bad_part', message: `sound must be one of ${SOUNDS.join(', ')}, got '${show(sound, 40)}'` };
  }
  const steps = record.steps;
  if (!Array.isArray(steps)) return { code: 'bad_part', message: `steps must be a list, got ${typeName(steps)}` };
  if (steps.length !== stepCount) {
    return { code: 'bad_part', message: `steps must have ${stepCount} entries, got ${steps.length}` };
  }
  for (let index = 0; index < steps.length; index++) {
    // JSON true is not a step value, nor is 1.5.
    if (steps[index] !== 0 && steps[index] !== 1) {
      return { code: 'bad_part', message: `step ${index} must be 0 or 1, got ${show(steps[index], 20)}` };
    }
  }
  return null;
}

/**
 * A silent part: what a user owns before their first edit.
 * @param {number} stepCount
 * @param {string} [sound]
 * @returns {Part}
 */
export function emptyPart(stepCount, sound = 'kick') {
  return { sound, steps: new Array(stepCount).fill(0) };
}

/**
 * A copy of a part that shares no array with the original.
 * @param {Part} part
 * @returns {Part}
 */
export function copyPart(part) {
  return { sound: part.sound, steps: part.steps.slice() };
}

/**
 * Deep equality of JSON values (Python's `==` on dicts and lists).
 * @param {unknown} a
 * @param {unknown} b
 * @returns {boolean}
 */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, index) => jsonEqual(item, b[index]));
  }
  const recordA = /** @type {Record<string, unknown>} */ (a);
  const recordB = /** @type {Record<string, unknown>} */ (b);
  const keys = Object.keys(recordA);
  return keys.length === Object.keys(recordB).length
    && keys.every((key) => Object.prototype.hasOwnProperty.call(recordB, key) && jsonEqual(recordA[key], recordB[key]));
}

/**
 * @param {Parts} parts
 * @returns {Parts} the same entries, keys in sorted order
 */
function sortedParts(parts) {
  /** @type {Parts} */
  const sorted = {};
  for (const user of Object.keys(parts).sort()) sorted[user] = parts[user];
  return sorted;
}

/**
 * Local Data at a sync moment: every other user's part from `shared`, `me`'s from `local`.
 *
 * Client rule 2 of DESIGN.md. `me` keeps the local part even when the
 * server has none yet, since unconfirmed edits live there.
 * @param {Parts} local
 * @param {Parts} shared
 * @param {string} me
 * @returns {Parts}
 */
export function mergeAtSync(local, shared, me) {
  /** @type {Parts} */
  const merged = {};
  for (const user of Object.keys(shared)) if (user !== me) merged[user] = copyPart(shared[user]);
  if (Object.prototype.hasOwnProperty.call(local, me)) merged[me] = copyPart(local[me]);
  else if (Object.prototype.hasOwnProperty.call(shared, me)) merged[me] = copyPart(shared[me]);
  return sortedParts(merged);
}

/**
 * Other users whose part in `pending` differs from what is playing: what is coming next loop.
 * @param {Parts} playing
 * @param {Parts} pending
 * @param {string} me
 * @returns {string[]} sorted user names
 */
export function differingUsers(playing, pending, me) {
  const users = new Set([...Object.keys(playing), ...Object.keys(pending)]);
  users.delete(me);
  return [...users].sort().filter((user) => !jsonEqual(playing[user], pending[user]));
}

/**
 * @param {unknown} sound
 */
function checkSound(sound) {
  if (typeof sound !== 'string' || !SOUNDS.includes(sound)) {
    throw new RangeError(`sound must be one of ${SOUNDS.join(', ')}, got ${show(sound, 40)}`);
  }
}

/**
 * Local Data, pending Shared Data and the user's unconfirmed edits (sync.py's ClientSync).
 *
 * The state (docs/protocol.md, "The rules a client follows", is the same algorithm in prose):
 * - `shared`: the latest Shared Data heard from the server (pending while
 *   playing: other users' parts are taken from it only at a sync);
 * - `loopParts`: what the current loop plays: other users' parts as of the
 *   last sync (or as they arrive, while paused), and the own part, live
 *   (`loopParts[me] === own`);
 * - `confirmed` / `confirmedSeq`: the own part as the server last confirmed it;
 * - `inFlight`: updates sent on this connection and not answered yet, in the
 *   order they were sent (the last is the newest: after `bad_seq` seqs start
 *   again lower);
 * - `unanswered`: the newest update of a connection that closed before
 *   answering it: the server may have committed it, may not have, or may
 *   still commit it; settled once the server's seq of the user reaches it;
 * - `nextSeq`, and `seqReset` (a `bad_seq` came: the next snapshot sets
 *   `nextSeq` to its seq + 1, even lower).
 */
export class ClientSync {
  /**
   * @param {string} me the user this client is
   * @param {string} [sound] the own part's sound
   * @param {number} [steps] steps per loop until a snapshot says otherwise
   */
  constructor(me, sound = 'kick', steps = DEFAULT_STEPS) {
    checkSound(sound);
    this.me = me;
    this.steps = steps;
    this.playing = false;
    this.connected = false;
    this.revision = 0;
    /** @type {Parts} */
    this.shared = {};
    /** @type {Part} */
    this.own = emptyPart(steps, sound);
    /** @type {Parts} */
    this.loopParts = { [me]: this.own };
    /** @type {Part | null} */
    this.confirmed = null;
    this.confirmedSeq = 0;
    this.nextSeq = 1;
    /** @type {Map<number, Part>} */
    this.inFlight = new Map();
    /** @type {[number, Part] | null} */
    this.unanswered = null;
    this.seqReset = false;
  }

  // -- what the user does ---------------------------------------------------

  /**
   * Set one step of the own part; heard at once, sent at the next sync.
   * @param {number} step
   * @param {number} value 0 or 1
   */
  setStep(step, value) {
    this._checkStep(step);
    if (value !== 0 && value !== 1) throw new RangeError(`step value must be 0 or 1, got ${value}`);
    this.own.steps[step] = value;
  }

  /**
   * Flip one step of the own part.
   * @param {number} step
   */
  toggle(step) {
    this._checkStep(step);
    this.own.steps[step] = 1 - this.own.steps[step];
  }

  /**
   * Choose the sound of the own part; sent at the next sync like a step edit.
   * @param {string} sound
   */
  setSound(sound) {
    checkSound(sound);
    this.own.sound = sound;
  }

  /**
   * Start the clock: sync at once and send the edits made while paused.
   * @returns {Message[]}
   */
  play() {
    if (this.playing) return [];
    this.playing = true;
    return this.sync();
  }

  /**
   * Stop the clock; from now on other users' parts apply at once and nothing is sent.
   * @returns {Message[]}
   */
  pause() {
    if (this.playing) {
      this.playing = false;
      this._takeShared();
    }
    return [];
  }

  // -- the sync moment ------------------------------------------------------

  /**
   * Call at Loop Start - lead: take others' parts, then send the own part if it changed.
   * @returns {Message[]} the update to send, or nothing
   */
  sync() {
    this._takeShared();
    return this.playing ? this._sendOwn() : [];
  }

  /**
   * True when the own part differs from what the server last confirmed
   * (a silent part is not worth writing while the server holds none).
   * @returns {boolean}
   */
  dirty() {
    if (this.confirmed === null) return this.own.steps.some((value) => value !== 0);
    return !jsonEqual(this.own, this.confirmed);
  }

  /**
   * Other users whose arrived changes wait for the next Loop Start.
   * @returns {string[]}
   */
  pendingUsers() {
    return differingUsers(this.loopParts, this.shared, this.me);
  }

  /**
   * Local Data in the document schema (a copy).
   * @returns {{steps: number, parts: Parts}}
   */
  localData() {
    /** @type {Parts} */
    const parts = {};
    for (const user of Object.keys(this.loopParts).sort()) parts[user] = copyPart(this.loopParts[user]);
    return { steps: this.steps, parts };
  }

  // -- what the connection says ---------------------------------------------

  /**
   * The connection closed: its unanswered updates will never be answered. The
   * newest is kept aside (`unanswered`) until the next snapshot says whether
   * the server committed it.
   */
  onDisconnect() {
    this.connected = false;
    const newest = this._newestInFlight();
    if (newest !== null) this.unanswered = newest;
    this.inFlight.clear();
  }

  /**
   * Feed one server message.
   * @param {Message} message
   * @returns {Message[]} what to send in answer
   */
  onMessage(message) {
    switch (message.type) {
      case 'snapshot': return this._onSnapshot(message);
      case 'update': this._onUpdate(message); return [];
      case 'ack': this._onAck(message); return [];
      case 'error': return this._onError(message);
      default: return [];
    }
  }

  /**
   * @param {Message} message
   * @returns {Message[]}
   */
  _onSnapshot(message) {
    const doc = message.doc;
    if (Number(doc.steps) !== this.steps) {
      // The room's step count is fixed at creation; start from a silent part of its length.
      this.steps = Number(doc.steps);
      this._setOwn(emptyPart(this.steps, this.own.sound));
      this.confirmed = null;
      this.inFlight.clear();
      this.unanswered = null;
    }
    const serverSeq = Number(message.seq);
    const parts = doc.parts;
    const serverOwn = Object.prototype.hasOwnProperty.call(parts, this.me) && parts[this.me] !== null ? parts[this.me] : null;
    const keepOwn = this._hasOwnEdits(serverSeq);
    this.connected = true;
    this.revision = Number(message.revision);
    /** @type {Parts} */
    const shared = {};
    for (const user of Object.keys(parts)) if (parts[user] !== null) shared[user] = copyPart(parts[user]);
    this.shared = shared;
    // The snapshot is the authority on what the server holds of ours; updates
    // at or below its seq are settled: committed, or never to be.
    for (const seq of [...this.inFlight.keys()]) if (seq <= serverSeq) this.inFlight.delete(seq);
    this.confirmed = serverOwn !== null ? copyPart(serverOwn) : null;
    this.confirmedSeq = serverSeq;
    if (this.seqReset && this.inFlight.size === 0) {
      // After bad_seq: continue right above what the server has, even if lower.
      this.nextSeq = serverSeq + 1;
      this.seqReset = false;
      this.unanswered = null;
    } else {
      this.nextSeq = Math.max(this.nextSeq, serverSeq + 1);
    }
    this._settleUnanswered();
    if (serverOwn !== null && !keepOwn) this._setOwn(copyPart(serverOwn));
    if (!this.playing) this._takeShared();
    // Edits the server lacks go out at once while playing; paused, they wait for play.
    return this.playing ? this._sendOwn() : [];
  }

  /** @param {Message} message */
  _onUpdate(message) {
    const user = message.user;
    const part = message.part ?? null;
    if (message.revision !== undefined && message.revision !== null) {
      this.revision = Math.max(this.revision, Number(message.revision));
    }
    if (user !== this.me) {
      if (part === null) {
        // The server removed that user's part (a full room made room for a new user).
        delete this.shared[user];
        if (!this.playing) delete this.loopParts[user];
        return;
      }
      this.shared[user] = copyPart(part);
      if (!this.playing) this.loopParts[user] = copyPart(part);
      return;
    }
    if (part === null) {
      // Our own part removed (not done while we are connected): the server holds none at seq 0.
      delete this.shared[this.me];
      this.confirmed = null;
      this.confirmedSeq = 0;
      this.unanswered = null;
      return;
    }
    // Another connection of the same user (a second tab, or our own late-committed update).
    const seq = Number(message.seq);
    if (seq <= this.confirmedSeq) return;
    const keepOwn = this._hasOwnEdits(seq);
    // Our updates at or below its seq are settled: accepted before it, or to be refused.
    for (const old of [...this.inFlight.keys()]) if (old <= seq) this.inFlight.delete(old);
    this.shared[this.me] = copyPart(part);
    this.confirmed = copyPart(part);
    this.confirmedSeq = seq;
    this.nextSeq = Math.max(this.nextSeq, seq + 1);
    this._settleUnanswered();
    if (!keepOwn) this._setOwn(copyPart(part));
  }

  /** @param {Message} message */
  _onAck(message) {
    const seq = Number(message.seq);
    if (message.revision !== undefined && message.revision !== null) {
      this.revision = Math.max(this.revision, Number(message.revision));
    }
    const part = this.inFlight.get(seq);
    if (part === undefined) return;
    // Replies come in request order: whatever was sent before it has been answered.
    for (const old of [...this.inFlight.keys()]) {
      this.inFlight.delete(old);
      if (old === seq) break;
    }
    if (seq > this.confirmedSeq) {
      this.confirmed = part;
      this.confirmedSeq = seq;
      this.shared[this.me] = copyPart(part);
    }
    this._settleUnanswered();
  }

  /**
   * @param {Message} message
   * @returns {Message[]}
   */
  _onError(message) {
    const seq = message.seq;
    if (seq === undefined || seq === null) return [];
    // A refused update stays unconfirmed: the next sync sends it again.
    this.inFlight.delete(seq);
    // Our counter is behind the server's: the snapshot answering a fetch carries its seq.
    if (message.code === 'stale_seq') return [{ type: 'fetch' }];
    if (message.code === 'bad_seq') {
      // Our counter is far above the server's: the snapshot answering the fetch resets it.
      this.seqReset = true;
      return [{ type: 'fetch' }];
    }
    return [];
  }

  // -- helpers --------------------------------------------------------------

  /**
   * Must the own part win over the server's copy at `serverSeq`? Yes when the
   * newest update we sent is above it (on its way, or lost and to be resent),
   * or when the user edited since sending it; with nothing sent, when the part
   * differs from the confirmed one.
   * @param {number} serverSeq
   * @returns {boolean}
   */
  _hasOwnEdits(serverSeq) {
    const newest = this._newestInFlight() ?? this.unanswered;
    if (newest === null) return this.dirty();
    return newest[0] > serverSeq || !jsonEqual(this.own, newest[1]);
  }

  /** Once the server has accepted a seq of ours at or above it, the unanswered update can never be committed: settled. */
  _settleUnanswered() {
    if (this.unanswered !== null && this.unanswered[0] <= this.confirmedSeq) this.unanswered = null;
  }

  /** @returns {[number, Part] | null} */
  _newestInFlight() {
    let newest = null;
    for (const entry of this.inFlight) newest = entry;
    return newest;
  }

  /** @param {number} step */
  _checkStep(step) {
    if (!Number.isInteger(step) || step < 0 || step >= this.steps) {
      throw new RangeError(`step must be from 0 to ${this.steps - 1}, got ${step}`);
    }
  }

  /** @param {Part} part */
  _setOwn(part) {
    this.own = part;
    this.loopParts[this.me] = part;
  }

  _takeShared() {
    this.loopParts = mergeAtSync({ [this.me]: this.own }, this.shared, this.me);
    this.loopParts[this.me] = this.own;
  }

  /** @returns {Message[]} */
  _sendOwn() {
    if (!this.connected) return [];
    const newest = this._newestInFlight();
    if (newest !== null) {
      // Compare with the newest update on its way: after A, B were sent, going back to A must be sent again.
      if (jsonEqual(this.own, newest[1])) return [];
    } else if (!this.dirty()) {
      return [];
    }
    const seq = this.nextSeq;
    this.nextSeq += 1;
    const part = copyPart(this.own);
    this.inFlight.set(seq, part);
    return [{ type: 'update', seq, part: copyPart(part) }];
  }
}

/** @typedef {{id: string, user: string, playing: boolean, bpm: number | null}} PresenceEntry */

/**
 * One presence entry as the table keeps it, or null when it is not one
 * (sync.py's read_presence_entry): `user` must be a non-empty string; `id`
 * a string (a number is written as one), else `fallbackId`; `playing` is
 * true only when it is `true`; `bpm` a finite number, else null.
 * @param {unknown} value
 * @param {string | null} fallbackId the id of an entry without one (its place in a full table), null to drop it
 * @returns {PresenceEntry | null}
 */
export function readPresenceEntry(value, fallbackId) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const record = /** @type {Record<string, unknown>} */ (value);
  if (typeof record.user !== 'string' || record.user === '') return null;
  const id = typeof record.id === 'string' ? record.id : typeof record.id === 'number' ? String(record.id) : fallbackId;
  if (id === null) return null;
  const bpm = typeof record.bpm === 'number' && Number.isFinite(record.bpm) ? record.bpm : null;
  return { id, user: record.user, playing: record.playing === true, bpm };
}

/**
 * Who is in the room: one entry per connection, kept from `presence` messages
 * (sync.py's PresenceTable). A `presence` with `users` replaces the whole
 * table; one with `changed` and `left` upserts entries by `id` and removes the
 * ids that left. The snapshot's `id` names this connection's own entry. A
 * disconnect empties the table: the next connection gets a full one.
 * `known` is false until a full table has come on this connection.
 */
export class PresenceTable {
  constructor() {
    /** @type {string | null} */
    this.ownId = null;
    /** @type {Map<string, PresenceEntry>} */
    this.entries = new Map();
    this.known = false;
  }

  /**
   * Feed any server message.
   * @param {Message} message
   * @returns {boolean} true when the table changed (only `presence` and `snapshot` can change it)
   */
  onMessage(message) {
    if (message.type === 'snapshot') {
      const ownId = typeof message.id === 'string' ? message.id : null;
      const changed = ownId !== this.ownId;
      this.ownId = ownId;
      return changed;
    }
    if (message.type !== 'presence') return false;
    if (message.users !== undefined && message.users !== null) {
      // A server older than the ids sends whole tables only: its entries are kept by position.
      this.entries = new Map();
      for (const [index, value] of (Array.isArray(message.users) ? message.users : []).entries()) {
        const entry = readPresenceEntry(value, `#${index}`);
        if (entry) this.entries.set(entry.id, entry);
      }
      this.known = true;
      return true;
    }
    for (const value of Array.isArray(message.changed) ? message.changed : []) {
      const entry = readPresenceEntry(value, null);
      if (entry) this.entries.set(entry.id, entry);
    }
    for (const id of Array.isArray(message.left) ? message.left : []) this.entries.delete(String(id));
    return true;
  }

  /** The connection closed: the table is unknown until the next connection's full table. */
  onDisconnect() {
    this.ownId = null;
    this.entries = new Map();
    this.known = false;
  }

  /**
   * Entries grouped by user (two tabs of one user are one row); users and each user's entries sorted by id.
   * @returns {Record<string, PresenceEntry[]>}
   */
  byUser() {
    /** @type {Record<string, PresenceEntry[]>} */
    const grouped = {};
    const ids = [...this.entries.keys()].sort();
    const users = [...new Set(ids.map((id) => String(this.entries.get(id)?.user)))].sort();
    for (const user of users) grouped[user] = [];
    for (const id of ids) {
      const entry = /** @type {PresenceEntry} */ (this.entries.get(id));
      grouped[String(entry.user)].push({ ...entry });
    }
    return grouped;
  }
}
