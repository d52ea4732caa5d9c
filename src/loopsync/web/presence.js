// @ts-check
/**
 * Who is in the room, from the server's `presence` messages: no DOM, no
 * socket, no clock (tests/browser/test_page_modules.py runs it alone).
 *
 * Three forms arrive (docs/protocol.md, "presence"):
 * - a full table, `{"type": "presence", "users": [entries]}`: it replaces
 *   the whole table (right after a snapshot, and again to a connection that
 *   fell behind);
 * - a delta, `{"type": "presence", "changed": [entries], "left": [ids]}`:
 *   `changed` entries are upserted by id, `left` ids removed;
 * - the first server's form: a full table on every change whose entries
 *   carry no `id`. Such a list is a full table too; its entries get ids of
 *   their own (`#0`, `#1`...: their place in the list), which no delta names.
 *
 * An entry is one connection (a tab): `{id, user, playing, bpm}`; `bpm` is a
 * number or null (not said yet). The own connection's id comes with the
 * snapshot (`snapshot.id`); the page groups entries by user for display.
 */

/**
 * @typedef {object} PresenceEntry
 * @property {string} id one connection, unique among the room's current connections
 * @property {string} user
 * @property {boolean} playing
 * @property {number | null} bpm
 */

/**
 * @typedef {object} PresenceGroup
 * @property {string} user
 * @property {PresenceEntry[]} tabs the user's connections, sorted by id
 * @property {number} playingTabs how many of them play
 * @property {boolean} own true for the page's own user
 * @property {PresenceEntry[]} otherTabs the tabs that are not this page's own connection
 */

/**
 * @param {unknown} value
 * @param {string} fallbackId the id to use when the entry has none (first server's form)
 * @returns {PresenceEntry | null} a clean entry, or null when it is not one
 */
export function readEntry(value, fallbackId) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const record = /** @type {Record<string, unknown>} */ (value);
  if (typeof record.user !== 'string' || record.user === '') return null;
  const id = typeof record.id === 'string' ? record.id : typeof record.id === 'number' ? String(record.id) : fallbackId;
  const bpm = typeof record.bpm === 'number' && Number.isFinite(record.bpm) ? record.bpm : null;
  return { id, user: record.user, playing: record.playing === true, bpm };
}

/** The room's presence table, fed by the server's messages. */
export class Presence {
  constructor() {
    /** @type {Map<string, PresenceEntry>} by id */
    this.entries = new Map();
    /** This page's own entry id, from the snapshot (null: not known, or a server that sends none). */
    /** @type {string | null} */
    this.ownId = null;
    /** False until a full table has come on this connection (and after a disconnect). */
    this.known = false;
  }

  /**
   * Feed one `presence` message.
   * @param {Record<string, any>} message
   * @returns {boolean} true when it was understood (and applied)
   */
  apply(message) {
    if (Array.isArray(message.users)) {
      /** @type {Map<string, PresenceEntry>} */
      const entries = new Map();
      message.users.forEach((/** @type {unknown} */ value, /** @type {number} */ index) => {
        const entry = readEntry(value, `#${index}`);
        if (entry) entries.set(entry.id, entry);
      });
      this.entries = entries;
      this.known = true;
      return true;
    }
    if (Array.isArray(message.changed) || Array.isArray(message.left)) {
      for (const value of message.changed ?? []) {
        const entry = readEntry(value, '');
        if (entry && entry.id !== '') this.entries.set(entry.id, entry);
      }
      for (const id of message.left ?? []) this.entries.delete(String(id));
      return true;
    }
    return false;
  }

  /**
   * The snapshot named this connection's own entry.
   * @param {unknown} id
   */
  setOwnId(id) {
    this.ownId = typeof id === 'string' ? id : typeof id === 'number' ? String(id) : null;
  }

  /** The connection closed: nothing is known until the next full table. */
  clear() {
    this.entries = new Map();
    this.known = false;
    this.ownId = null;
  }

  /**
   * The entries grouped by user, sorted by user.
   * @param {string} me the page's own user
   * @returns {PresenceGroup[]}
   */
  groups(me) {
    /** @type {Map<string, PresenceEntry[]>} */
    const byUser = new Map();
    for (const entry of this.entries.values()) {
      const tabs = byUser.get(entry.user) ?? [];
      tabs.push(entry);
      byUser.set(entry.user, tabs);
    }
    return [...byUser.keys()].sort().map((user) => {
      const tabs = /** @type {PresenceEntry[]} */ (byUser.get(user)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const own = user === me;
      // With the first server's form the own tab cannot be told apart: count one of the own user's tabs as this page.
      let otherTabs = tabs;
      if (own) {
        const ownIndex = this.ownId !== null ? tabs.findIndex((tab) => tab.id === this.ownId) : 0;
        otherTabs = tabs.filter((_, index) => index !== (ownIndex >= 0 ? ownIndex : 0));
      }
      return { user, tabs, playingTabs: tabs.filter((tab) => tab.playing).length, own, otherTabs };
    });
  }

  /**
   * @param {string} user
   * @returns {boolean} true when the user has at least one connection in the room
   */
  isHere(user) {
    for (const entry of this.entries.values()) if (entry.user === user) return true;
    return false;
  }
}

/**
 * How a group reads for people: "playing", "paused", "playing in 1 of 2 tabs", with the tempi.
 * @param {PresenceGroup} group
 * @returns {{state: string, tempo: string}}
 */
export function describeGroup(group) {
  const count = group.tabs.length;
  let state;
  if (count === 1) state = group.tabs[0].playing ? 'playing' : 'paused';
  else if (group.playingTabs === count) state = `playing in ${count} tabs`;
  else if (group.playingTabs === 0) state = `paused in ${count} tabs`;
  else state = `playing in ${group.playingTabs} of ${count} tabs`;
  const tempi = [...new Set(group.tabs.map((tab) => tab.bpm).filter((bpm) => bpm !== null).map((bpm) => Math.round(/** @type {number} */ (bpm))))];
  const tempo = tempi.length === 0 ? '' : `${tempi.sort((a, b) => a - b).join('/')} BPM`;
  return { state, tempo };
}
