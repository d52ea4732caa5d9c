// @ts-check
/**
 * The page's own mix: per-row mute, solo and volume, and a master volume.
 * Local to the page (kept in localStorage per room, see storage.js), never
 * sent to the server: it is how this page listens, not Shared Data. No DOM,
 * no audio: `gains()` is what the clock processor is told.
 *
 * Solo: when any row is soloed, only soloed rows sound; mute always wins.
 * Volumes are 0-1 (a linear gain, shown as a percentage).
 */

/**
 * @typedef {object} RowMix
 * @property {boolean} mute
 * @property {boolean} solo
 * @property {number} volume 0-1
 */

/**
 * @typedef {object} MixState
 * @property {Record<string, RowMix>} rows by user
 * @property {number} master 0-1
 */

/**
 * @param {unknown} value
 * @param {number} fallback
 * @returns {number} a volume from 0 to 1
 */
function volumeOf(value, fallback) {
  return typeof value === 'number' && Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : fallback;
}

export class Mix {
  /** @param {unknown} [saved] a MixState read back from storage (anything unreadable is ignored) */
  constructor(saved) {
    /** @type {Map<string, RowMix>} */
    this.rows = new Map();
    this.master = 1;
    if (saved && typeof saved === 'object') {
      const record = /** @type {Record<string, any>} */ (saved);
      this.master = volumeOf(record.master, 1);
      if (record.rows && typeof record.rows === 'object') {
        for (const [user, row] of Object.entries(record.rows)) {
          if (!row || typeof row !== 'object') continue;
          this.rows.set(user, { mute: row.mute === true, solo: row.solo === true, volume: volumeOf(row.volume, 1) });
        }
      }
    }
  }

  /**
   * @param {string} user
   * @returns {RowMix} the row's settings (defaults when never set)
   */
  row(user) {
    return this.rows.get(user) ?? { mute: false, solo: false, volume: 1 };
  }

  /**
   * Change one row's settings.
   * @param {string} user
   * @param {Partial<RowMix>} change
   */
  set(user, change) {
    const row = { ...this.row(user), ...change };
    row.volume = volumeOf(row.volume, 1);
    if (!row.mute && !row.solo && row.volume === 1) this.rows.delete(user);
    else this.rows.set(user, row);
  }

  /** @param {number} volume */
  setMaster(volume) {
    this.master = volumeOf(volume, this.master);
  }

  /** @returns {boolean} true when some row is soloed */
  anySolo() {
    for (const row of this.rows.values()) if (row.solo) return true;
    return false;
  }

  /**
   * @param {string} user
   * @returns {boolean} true when the row is silent in this mix (muted, or another row is soloed)
   */
  silenced(user) {
    const row = this.row(user);
    return row.mute || (this.anySolo() && !row.solo);
  }

  /**
   * What the clock processor is told: the gain of every row this mix has
   * settings for, `rest` for every other row (0 while some row is soloed).
   * @returns {{gains: Record<string, number>, rest: number, master: number}}
   */
  gains() {
    /** @type {Record<string, number>} */
    const gains = {};
    const solo = this.anySolo();
    for (const [user, row] of this.rows) {
      gains[user] = row.mute || (solo && !row.solo) ? 0 : row.volume;
    }
    return { gains, rest: solo ? 0 : 1, master: this.master };
  }

  /**
   * The gain of one user in this mix (solo and mute applied).
   * @param {string} user
   * @returns {number}
   */
  gainOf(user) {
    return this.silenced(user) ? 0 : this.row(user).volume;
  }

  /** @returns {MixState} what storage keeps */
  toJSON() {
    return { rows: Object.fromEntries(this.rows), master: this.master };
  }
}

/**
 * A colour per user, the same on every page: a hue from a hash of the name
 * (FNV-1a), at a saturation and lightness that keep white marks readable.
 * @param {string} user
 * @returns {string} a CSS colour
 */
export function userColour(user) {
  let hash = 0x811c9dc5;
  for (let index = 0; index < user.length; index++) {
    hash ^= user.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  const hue = hash % 360;
  return `hsl(${hue} 65% 42%)`;
}
