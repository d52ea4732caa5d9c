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

import { PresenceTable } from './rules.js';

/** @typedef {import('./rules.js').PresenceEntry} PresenceEntry */

/**
 * @typedef {object} PresenceGroup
 * @property {string} user
 * @property {PresenceEntry[]} tabs the user's connections, sorted by id
 * @property {number} playingTabs how many of them play
 * @property {boolean} own true for the page's own user
 * @property {PresenceEntry[]} otherTabs the tabs that are not this page's own connection
 */

/** The room's presence table (rules.js, checked against the shared vectors) and how the page shows it. */
export class Presence extends PresenceTable {
  /**
   * Feed one `presence` message.
   * @param {Record<string, any>} message
   * @returns {boolean} true when it was understood (and applied)
   */
  apply(message) {
    if (!Array.isArray(message.users) && !Array.isArray(message.changed) && !Array.isArray(message.left)) return false;
    return this.onMessage(message);
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
