// @ts-check
/**
 * The page's DOM: the grid, the transport controls, presence, connection
 * state. It shows what it is given and reports what the user does; it holds
 * no rules and no time.
 *
 * Grid markup (tests read it): `.row[data-user=NAME]`, own row also `.own`,
 * a row with changes waiting for the next Loop Start also `.pending`; cells
 * `.cell[data-step=i]`, `.on` when the step plays now, `.incoming-on` /
 * `.incoming-off` when an arrived change will turn it on / off at the next
 * Loop Start, `.now` under the playhead.
 */

import { SOUNDS } from './rules.js';

/**
 * @typedef {object} RowView
 * @property {string} user
 * @property {boolean} own
 * @property {string | null} sound the sound playing (null: no part yet)
 * @property {number[]} steps what plays now
 * @property {number[] | null} incoming the arrived part waiting for the next Loop Start, if any
 * @property {string} status "playing", "paused" or "" (offline)
 */

/**
 * @typedef {object} ViewHandlers
 * @property {(step: number) => void} onToggle the user toggled one of their steps
 * @property {() => void} onPlayPause play or pause
 * @property {(bpm: number) => void} onBpm a new tempo
 * @property {(sound: string) => void} onSound a new sound for the own part
 * @property {(name: string) => void} onJoin the name typed in the join form
 */

export class View {
  /**
   * @param {Document} document
   * @param {ViewHandlers} handlers
   */
  constructor(document, handlers) {
    this.document = document;
    this.handlers = handlers;
    const byId = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
    this.grid = byId('grid');
    this.playButton = /** @type {HTMLButtonElement} */ (byId('play'));
    this.bpmInput = /** @type {HTMLInputElement} */ (byId('bpm'));
    this.soundSelect = /** @type {HTMLSelectElement} */ (byId('sound'));
    this.connection = byId('connection');
    this.position = byId('position');
    this.unsent = byId('unsent');
    this.presence = byId('presence');
    this.message = byId('message');
    /** @type {Map<string, {row: HTMLElement, who: HTMLElement, cells: HTMLElement[]}>} */
    this.rows = new Map();
    this.steps = 0;
    this.playheadStep = -1;

    for (const sound of SOUNDS) {
      const option = document.createElement('option');
      option.value = sound;
      option.textContent = sound;
      this.soundSelect.append(option);
    }
    this.playButton.addEventListener('click', () => handlers.onPlayPause());
    this.bpmInput.addEventListener('change', () => {
      const bpm = Number(this.bpmInput.value);
      if (Number.isFinite(bpm) && bpm >= 20 && bpm <= 300) handlers.onBpm(bpm);
    });
    this.soundSelect.addEventListener('change', () => handlers.onSound(this.soundSelect.value));
    document.addEventListener('keydown', (event) => this._onKeyDown(event));
    document.addEventListener('keyup', (event) => {
      // Space activates a focused button on keyup; it is play/pause here.
      if (event.code === 'Space' && !this._isTextTarget(event.target)) event.preventDefault();
    });
    const join = /** @type {HTMLFormElement} */ (byId('join'));
    join.addEventListener('submit', (event) => {
      event.preventDefault();
      const input = /** @type {HTMLInputElement} */ (byId('join-name'));
      handlers.onJoin(input.value.trim());
    });
  }

  /**
   * Ask for a name (first visit).
   * @param {string} room
   */
  showJoin(room) {
    this._byId('room').textContent = `room ${room}`;
    this._byId('join').hidden = false;
    this._byId('app').hidden = true;
    this._byId('join-name').focus();
  }

  /**
   * Show the room.
   * @param {string} room
   * @param {string} user
   */
  showApp(room, user) {
    this._byId('room').textContent = `room ${room} · you are ${user}`;
    this._byId('join').hidden = true;
    this._byId('app').hidden = false;
  }

  /**
   * @param {'connecting' | 'open' | 'closed'} state
   * @param {string} text
   */
  setConnection(state, text) {
    this.connection.className = `connection ${state}`;
    this.connection.dataset.state = state;
    this.connection.textContent = text;
  }

  /** @param {boolean} playing */
  setPlaying(playing) {
    this.playButton.textContent = playing ? 'Pause' : 'Play';
    this.playButton.setAttribute('aria-pressed', String(playing));
  }

  /** @param {number} bpm */
  setBpm(bpm) {
    if (this.document.activeElement !== this.bpmInput) this.bpmInput.value = String(bpm);
  }

  /** @param {string} sound */
  setSound(sound) {
    this.soundSelect.value = sound;
  }

  /** @param {string} text */
  setMessage(text) {
    this.message.textContent = text;
  }

  /** @param {string} text */
  setUnsent(text) {
    this.unsent.textContent = text;
  }

  /**
   * @param {number} loop
   * @param {number} step
   */
  setPlayhead(loop, step) {
    this.position.textContent = `loop ${loop + 1} · step ${step + 1}`;
    if (step === this.playheadStep) return;
    for (const { cells } of this.rows.values()) {
      cells[this.playheadStep]?.classList.remove('now');
      cells[step]?.classList.add('now');
    }
    this.playheadStep = step;
  }

  /** @param {{user: string, playing: boolean, bpm: number | null}[]} users */
  setPresence(users) {
    const items = users.map(({ user, playing, bpm }) => {
      const item = this.document.createElement('li');
      item.className = playing ? 'playing' : 'paused';
      item.dataset.user = user;
      item.textContent = `${user} · ${playing ? 'playing' : 'paused'}${bpm ? ` · ${Math.round(bpm)} BPM` : ''}`;
      return item;
    });
    this.presence.replaceChildren(...items);
  }

  /**
   * Draw the grid: rows are kept by user, so focus on the own row survives redraws.
   * @param {RowView[]} rows own row first
   * @param {number} steps
   */
  renderRows(rows, steps) {
    if (steps !== this.steps) {
      this.grid.replaceChildren();
      this.rows.clear();
      this.steps = steps;
      this.grid.style.setProperty('--steps', String(steps));
    }
    const wanted = new Set(rows.map((row) => row.user));
    for (const [user, { row }] of this.rows) {
      if (!wanted.has(user)) {
        row.remove();
        this.rows.delete(user);
      }
    }
    rows.forEach((view, index) => {
      let entry = this.rows.get(view.user);
      if (!entry) {
        entry = this._createRow(view.user, view.own, steps);
        this.rows.set(view.user, entry);
      }
      if (this.grid.children[index] !== entry.row) this.grid.insertBefore(entry.row, this.grid.children[index] ?? null);
      this._updateRow(entry, view);
    });
  }

  /**
   * @param {string} user
   * @param {boolean} own
   * @param {number} steps
   */
  _createRow(user, own, steps) {
    const document = this.document;
    const row = document.createElement('div');
    row.className = own ? 'row own' : 'row';
    row.dataset.user = user;
    row.setAttribute('role', 'group');
    const who = document.createElement('div');
    who.className = 'who';
    row.append(who);
    /** @type {HTMLElement[]} */
    const cells = [];
    for (let step = 0; step < steps; step++) {
      const cell = document.createElement(own ? 'button' : 'span');
      cell.className = step % 4 === 0 ? 'cell beat' : 'cell';
      cell.dataset.step = String(step);
      if (own) {
        const button = /** @type {HTMLButtonElement} */ (cell);
        button.type = 'button';
        button.tabIndex = step === 0 ? 0 : -1; // one tab stop; arrows move inside the row
        button.setAttribute('aria-label', `your step ${step + 1}`);
        button.addEventListener('click', () => this.handlers.onToggle(step));
      }
      cells.push(cell);
      row.append(cell);
    }
    if (this.playheadStep >= 0) cells[this.playheadStep]?.classList.add('now');
    return { row, who, cells };
  }

  /**
   * @param {{row: HTMLElement, who: HTMLElement, cells: HTMLElement[]}} entry
   * @param {RowView} view
   */
  _updateRow(entry, view) {
    const label = view.own ? `${view.user} (you)` : view.user;
    const detail = [view.sound ?? 'no part yet', view.status].filter(Boolean).join(' · ');
    const text = `${label}\n${detail}`;
    if (entry.who.dataset.text !== text) {
      entry.who.dataset.text = text;
      const name = this.document.createElement('strong');
      name.textContent = label;
      const small = this.document.createElement('small');
      small.textContent = detail;
      entry.who.replaceChildren(name, small);
    }
    entry.row.classList.toggle('pending', view.incoming !== null);
    entry.cells.forEach((cell, step) => {
      const on = view.steps[step] === 1;
      const next = view.incoming ? view.incoming[step] === 1 : on;
      cell.classList.toggle('on', on);
      cell.classList.toggle('incoming-on', !on && next);
      cell.classList.toggle('incoming-off', on && !next);
      if (view.own) cell.setAttribute('aria-pressed', String(on));
      else cell.title = on !== next ? `step ${step + 1}: changes at your next Loop Start` : '';
    });
  }

  /** @param {KeyboardEvent} event */
  _onKeyDown(event) {
    if (event.code === 'Space' && !this._isTextTarget(event.target)) {
      event.preventDefault();
      if (!event.repeat) this.handlers.onPlayPause();
      return;
    }
    const target = /** @type {HTMLElement} */ (event.target);
    if (!(target instanceof HTMLElement) || !target.closest('.row.own') || target.dataset.step === undefined) return;
    const step = Number(target.dataset.step);
    const moves = /** @type {Record<string, number>} */ ({ ArrowLeft: -1, ArrowRight: 1, Home: -step, End: this.steps - 1 - step });
    if (event.key in moves) {
      event.preventDefault();
      const next = (step + moves[event.key] + this.steps) % this.steps;
      const cells = [...target.closest('.row.own')?.querySelectorAll('.cell') ?? []];
      const cell = /** @type {HTMLElement} */ (cells[next]);
      cells.forEach((other) => ((/** @type {HTMLElement} */ (other)).tabIndex = other === cell ? 0 : -1));
      cell.focus();
    }
  }

  /**
   * @param {EventTarget | null} target
   * @returns {boolean} true for fields where a space is typed (or opens a list), not a command
   */
  _isTextTarget(target) {
    if (!(target instanceof HTMLElement)) return false;
    // A tempo field takes no spaces: space there still plays and pauses.
    if (target instanceof HTMLInputElement) return target.type !== 'number';
    return target.tagName === 'SELECT' || target.tagName === 'TEXTAREA';
  }

  /**
   * @param {string} id
   * @returns {HTMLElement}
   */
  _byId(id) {
    return /** @type {HTMLElement} */ (this.document.getElementById(id));
  }
}
