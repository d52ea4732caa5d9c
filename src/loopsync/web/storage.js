// @ts-check
/**
 * What survives a page reload, in localStorage: the user's name (asked once;
 * sessionStorage keeps a tab's own), the page's own mix per room, and, per
 * room and user, the own part with what the server last confirmed of it, so
 * unsent edits are resent after the reload, plus the tempo.
 */

import { copyPart } from './rules.js';

const USER_KEY = 'loopsync:user';
const TAB_USER_KEY = 'loopsync:tab-user';

/**
 * The user name for this tab: the tab's own (sessionStorage: set by `?user=`
 * or the join form, kept across reloads of this tab only), else the one this
 * browser remembers (localStorage), else null (the page asks).
 * @param {Storage | null} storage localStorage
 * @param {Storage | null} [tabStorage] sessionStorage
 * @returns {string | null}
 */
export function loadUserName(storage, tabStorage = null) {
  try {
    return tabStorage?.getItem(TAB_USER_KEY) || (storage ? storage.getItem(USER_KEY) : null);
  } catch {
    return null; // storage disabled: ask every time
  }
}

/**
 * Remember the name for this tab, and (unless `tabOnly`) for this browser.
 * @param {Storage | null} storage localStorage
 * @param {string} name
 * @param {Storage | null} [tabStorage] sessionStorage
 * @param {boolean} [tabOnly] true for `?user=`: another tab of this browser keeps its own name
 */
export function saveUserName(storage, name, tabStorage = null, tabOnly = false) {
  try {
    tabStorage?.setItem(TAB_USER_KEY, name);
    if (!tabOnly) storage?.setItem(USER_KEY, name);
  } catch {
    // storage full or disabled: the name is asked again next time
  }
}

/**
 * The page's own mix in a room, as one user of this browser listens (two
 * tabs of one browser as two users keep two mixes). mix.js reads it;
 * anything unreadable is ignored.
 * @param {Storage | null} storage
 * @param {string} room
 * @param {string} user
 * @returns {unknown}
 */
export function loadMix(storage, room, user) {
  try {
    const text = storage?.getItem(mixKey(room, user));
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/**
 * @param {Storage | null} storage
 * @param {string} room
 * @param {string} user
 * @param {unknown} mix what Mix.toJSON() gives
 */
export function saveMix(storage, room, user, mix) {
  try {
    storage?.setItem(mixKey(room, user), JSON.stringify(mix));
  } catch {
    // storage full or disabled: the mix lasts as long as the page
  }
}

/**
 * @param {string} room
 * @param {string} user
 * @returns {string}
 */
function mixKey(room, user) {
  return `loopsync-mix:${room}:${user}`;
}

/**
 * @param {string} room
 * @param {string} user
 * @returns {string}
 */
function sessionKey(room, user) {
  return `loopsync:${room}:${user}`;
}

/**
 * @typedef {object} SavedSession
 * @property {import('./rules.js').Part} own the own part, with edits the server may lack
 * @property {import('./rules.js').Part | null} confirmed the own part as the server last confirmed it
 * @property {number} confirmedSeq the seq of that confirmation
 * @property {number} nextSeq the next seq to use
 * @property {number} bpm the tempo
 */

/**
 * Write the session state that must survive a reload.
 * @param {Storage | null} storage
 * @param {string} room
 * @param {import('./rules.js').ClientSync} sync
 * @param {number} bpm
 */
export function saveSession(storage, room, sync, bpm) {
  /** @type {SavedSession} */
  const saved = {
    own: sync.own, confirmed: sync.confirmed, confirmedSeq: sync.confirmedSeq, nextSeq: sync.nextSeq, bpm,
  };
  try {
    storage?.setItem(sessionKey(room, sync.me), JSON.stringify(saved));
  } catch {
    // storage full or disabled: edits still reach the server while the page lives
  }
}

/**
 * Read a saved session; null when there is none or it is unreadable.
 * @param {Storage | null} storage
 * @param {string} room
 * @param {string} user
 * @returns {SavedSession | null}
 */
export function loadSession(storage, room, user) {
  try {
    const text = storage?.getItem(sessionKey(room, user));
    if (!text) return null;
    const saved = JSON.parse(text);
    if (!saved || typeof saved !== 'object' || !saved.own || !Array.isArray(saved.own.steps)) return null;
    return saved;
  } catch {
    return null;
  }
}

/**
 * Put a saved session back into a fresh ClientSync (before its first snapshot).
 * @param {import('./rules.js').ClientSync} sync
 * @param {SavedSession} saved
 */
export function restoreSession(sync, saved) {
  const own = copyPart(saved.own);
  sync.steps = own.steps.length;
  sync.own = own;
  sync.loopParts = { [sync.me]: own };
  sync.confirmed = saved.confirmed ? copyPart(saved.confirmed) : null;
  sync.confirmedSeq = Number(saved.confirmedSeq) || 0;
  sync.nextSeq = Math.max(1, Number(saved.nextSeq) || 1);
}
