// @ts-check
/**
 * The page's DOM: the grid, the transport controls, the mix, presence,
 * connection state, sharing and export. It shows what it is given and
 * reports what the user does; it holds no rules and no time.
 *
 * Grid markup (tests read it): `.row[data-user=NAME]`, own row also `.own`,
 * a row with changes waiting for the next Loop Start also `.pending`, a row
 * whose user is not connected `.away`, a row this page's mix silences
 * `.silenced`; cells `.cell[data-step=i]`, `.on` when the step plays now,
 * `.incoming-on` / `.incoming-off` when an arrived change will turn it on /
 * off at the next Loop Start, `.unsent` (own row) when the server has not
 * confirmed that step yet, `.now` under the playhead (drawn when heard).
 * A row's height never depends on its state: the page does not jump.
 */

import { SOUNDS } from './rules.js';

/**
 * @typedef {object} RowView
 * @property {string} user
 * @property {boolean} own
 * @property {string} colour the user's colour
 * @property {string | null} sound the sound playing (null: no part yet)
 * @property {number[]} steps what plays now
 * @property {number[] | null} incoming the arrived part waiting for the next Loop Start, if any
 * @property {boolean[] | null} unsent own row: steps the server has not confirmed yet
 * @property {string} detail the second line: sound, state, tempo
 * @property {string} when the third line: when a pending change is heard ("next loop in 1.2 s"), or ""
 * @property {boolean} away the user has a part but no connection in the room
 * @property {{mute: boolean, solo: boolean, volume: number}} mix this page's mix for the row
 * @property {boolean} silenced muted, or another row is soloed
 */

/**
 * @typedef {object} ViewHandlers
 * @property {(step: number) => void} onToggle the user toggled one of their steps
 * @property {() => void} onPlayPause play or pause
 * @property {(text: string) => void} onBpm the tempo field's new text
 * @property {(sound: string) => void} onSound a new sound for the own part
 * @property {(name: string) => void} onJoin the name typed in the join form
 * @property {(user: string, change: {mute?: boolean, solo?: boolean, volume?: number}) => void} onMix a row's mix changed
 * @property {(volume: number) => void} onMaster the master volume changed (0-1)
 * @property {() => void} onShare copy the invite link
 * @property {() => void} onReconnect reconnect now
 * @property {(loops: number) => void} onExport export that many loops
 * @property {() => boolean} onFirstGesture a touch, click or key press while the audio is locked (unlock it); true once it runs
 */

/**
 * @typedef {{row: HTMLElement, name: HTMLElement, badge: HTMLElement, detail: HTMLElement, when: HTMLElement,
 *            cells: HTMLElement[], mute: HTMLButtonElement, solo: HTMLButtonElement, volume: HTMLInputElement}} RowEntry
 */

/**
 * @param {number[]} steps
 * @returns {string} "1, 5, 9" (1-based) or "none"
 */
function stepList(steps) {
  const on = steps.flatMap((value, step) => (value ? [step + 1] : []));
  return on.length ? on.join(', ') : 'none';
}

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
    this.bpmNote = byId('bpm-note');
    this.soundSelect = /** @type {HTMLSelectElement} */ (byId('sound'));
    this.masterInput = /** @type {HTMLInputElement} */ (byId('master'));
    this.connection = byId('connection');
    this.reconnectButton = /** @type {HTMLButtonElement} */ (byId('reconnect'));
    this.shareButton = /** @type {HTMLButtonElement} */ (byId('share'));
    this.position = byId('position');
    this.unsent = byId('unsent');
    this.presence = byId('presence');
    this.presenceNote = byId('presence-note');
    this.tempoNote = byId('tempo-note');
    this.message = byId('message');
    this.exportButton = /** @type {HTMLButtonElement} */ (byId('export'));
    this.exportLoops = /** @type {HTMLInputElement} */ (byId('export-loops'));
    this.exportNote = byId('export-note');
    /** @type {Map<string, RowEntry>} */
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
    this.bpmInput.addEventListener('change', () => handlers.onBpm(this.bpmInput.value));
    this.soundSelect.addEventListener('change', () => handlers.onSound(this.soundSelect.value));
    this.masterInput.addEventListener('input', () => handlers.onMaster(Number(this.masterInput.value) / 100));
    this.reconnectButton.addEventListener('click', () => handlers.onReconnect());
    this.shareButton.addEventListener('click', () => handlers.onShare());
    this.exportButton.addEventListener('click', () => handlers.onExport(Number(this.exportLoops.value)));
    /** The control that got focus from a click or tap (not from the keyboard): Space plays there. */
    /** @type {EventTarget | null} */
    this.pointerFocus = null;
    document.addEventListener('pointerdown', (event) => {
      this.pointerFocus = event.target instanceof Element ? event.target.closest('button, a') : null;
    }, true);
    document.addEventListener('focusin', (event) => {
      if (event.target !== this.pointerFocus) this.pointerFocus = null;
    });
    document.addEventListener('keydown', (event) => this._onKeyDown(event));
    document.addEventListener('keyup', (event) => {
      // A focused button activates on Space's keyup: not when Space meant play/pause.
      if (event.code === 'Space' && !this._takesSpace(event.target)) event.preventDefault();
    });
    const join = /** @type {HTMLFormElement} */ (byId('join'));
    join.addEventListener('submit', (event) => {
      event.preventDefault();
      const input = /** @type {HTMLInputElement} */ (byId('join-name'));
      handlers.onJoin(input.value.trim());
    });
    // Touch screens: no keyboard hints. Mobile browsers start audio only from
    // a user gesture: any one, on any part of the page, unlocks it.
    const coarse = typeof matchMedia === 'function' && matchMedia('(hover: none) and (pointer: coarse)').matches;
    if (coarse || (navigator.maxTouchPoints > 0 && 'ontouchstart' in window)) this.setTouch(true);
    // Every gesture until the audio runs: which events count as a user
    // activation differs (a touch's pointerdown does not, its touchend and
    // click do; iOS wants the resume inside the handler itself).
    const gestures = ['pointerdown', 'touchend', 'keydown', 'click'];
    const unlock = () => {
      if (!handlers.onFirstGesture()) return;
      for (const type of gestures) document.removeEventListener(type, unlock, true);
    };
    for (const type of gestures) document.addEventListener(type, unlock, true);
    document.addEventListener('touchstart', () => this.setTouch(true), { once: true, passive: true });
  }

  /** @param {boolean} touch true on a touch screen: touch hints instead of keyboard hints */
  setTouch(touch) {
    this.document.documentElement.classList.toggle('touch', touch);
  }

  /**
   * Ask for a name (first visit, or an invite link).
   * @param {string} room
   * @param {string} [message]
   */
  showJoin(room, message = '') {
    this._byId('room').textContent = `room ${room}`;
    this._byId('join-title').textContent = `Join room ${room}`;
    this._byId('join-message').textContent = message;
    this._byId('join').hidden = false;
    this._byId('app').hidden = true;
    this.connection.hidden = true; // nothing connects before there is a name
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
    this.connection.hidden = false;
    this.shareButton.hidden = this.reconnectButton.hidden === false;
  }

  /**
   * @param {'connecting' | 'open' | 'closed'} state
   * @param {string} text
   */
  setConnection(state, text) {
    this.connection.className = `connection ${state}`;
    this.connection.dataset.state = state;
    if (this.connection.textContent !== text) this.connection.textContent = text;
    // Offline, "Reconnect now" takes the place of "Copy invite link": the
    // header keeps its lines on a phone, so the grid does not move down.
    const offline = state === 'closed';
    this.reconnectButton.hidden = !offline;
    if (!this._byId('app').hidden) this.shareButton.hidden = offline;
  }

  /** @param {boolean} playing */
  setPlaying(playing) {
    this.playButton.textContent = playing ? 'Pause' : 'Play';
    this.playButton.setAttribute('aria-pressed', String(playing));
  }

  /**
   * Show the tempo the clock plays (also when the field held something else).
   * @param {number} bpm
   */
  setBpm(bpm) {
    this.bpmInput.value = String(bpm);
    this.bpmInput.removeAttribute('aria-invalid');
  }

  /**
   * @param {string} text why the field's value was not taken ("" when it was)
   */
  setBpmNote(text) {
    this.bpmNote.textContent = text;
    this.bpmNote.classList.toggle('invalid', text !== '');
  }

  /** @param {string} sound */
  setSound(sound) {
    this.soundSelect.value = sound;
  }

  /** @param {number} volume 0-1 */
  setMaster(volume) {
    this.masterInput.value = String(Math.round(volume * 100));
  }

  /** @param {string} text */
  setMessage(text) {
    this.message.textContent = text;
  }

  /** @param {string} text */
  setUnsent(text) {
    if (this.unsent.textContent !== text) this.unsent.textContent = text;
  }

  /**
   * The invite link, shown (and selected) when it could not be copied, or confirmed when it was.
   * @param {string} link
   * @param {boolean} copied
   */
  showInvite(link, copied) {
    const input = /** @type {HTMLInputElement} */ (this._byId('invite-link'));
    input.value = link;
    this._byId('invite').hidden = false;
    this._byId('invite-note').textContent = copied
      ? 'Copied. Whoever opens it joins this room and picks a name.'
      : 'Copy this link and send it. Whoever opens it joins this room and picks a name.';
    if (!copied) input.select();
  }

  /**
   * @param {boolean} busy
   * @param {string} text
   */
  setExport(busy, text) {
    this.exportButton.disabled = busy;
    this.exportNote.textContent = text;
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

  /**
   * Who is in the room: one item per user (tabs grouped), or why nobody is shown.
   * @param {{user: string, text: string, playing: boolean}[]} items
   * @param {string} note
   * @param {string} tempoNote
   */
  setPresence(items, note, tempoNote) {
    const key = JSON.stringify([items, note, tempoNote]);
    if (this.presence.dataset.key === key) return;
    this.presence.dataset.key = key;
    this.presence.replaceChildren(...items.map(({ user, text, playing }) => {
      const item = this.document.createElement('li');
      item.className = playing ? 'playing' : 'paused';
      item.dataset.user = user;
      item.textContent = text;
      return item;
    }));
    this.presenceNote.textContent = note;
    this.tempoNote.textContent = tempoNote;
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
   * @returns {RowEntry}
   */
  _createRow(user, own, steps) {
    const document = this.document;
    const element = (/** @type {string} */ tag, /** @type {string} */ className) => {
      const node = document.createElement(tag);
      if (className) node.className = className;
      return node;
    };
    const row = element('div', own ? 'row own' : 'row');
    row.dataset.user = user;
    row.setAttribute('role', 'group');
    const who = element('div', 'who');
    const nameLine = element('span', 'name');
    const swatch = element('span', 'swatch');
    swatch.setAttribute('aria-hidden', 'true');
    const name = element('strong', '');
    name.textContent = own ? `${user} (you)` : user;
    const badge = element('span', 'badge away');
    badge.textContent = 'away';
    badge.hidden = true;
    nameLine.append(swatch, name, badge);
    nameLine.title = name.textContent; // a long name is cut short on screen
    const detail = element('small', 'detail');
    const when = element('small', 'when');
    who.append(nameLine, detail, when);
    const cellBox = element('div', 'cells');
    if (!own) cellBox.setAttribute('aria-hidden', 'true'); // the row's label says it all
    /** @type {HTMLElement[]} */
    const cells = [];
    for (let step = 0; step < steps; step++) {
      const cell = element(own ? 'button' : 'span', step % 4 === 0 ? 'cell beat' : 'cell');
      cell.dataset.step = String(step);
      if (own) {
        const button = /** @type {HTMLButtonElement} */ (cell);
        button.type = 'button';
        button.tabIndex = step === 0 ? 0 : -1; // one tab stop; arrows move inside the row
        button.addEventListener('click', () => this.handlers.onToggle(step));
      }
      cells.push(cell);
      cellBox.append(cell);
    }
    if (this.playheadStep >= 0) cells[this.playheadStep]?.classList.add('now');
    const mixBox = element('div', 'mix');
    const mute = /** @type {HTMLButtonElement} */ (element('button', 'mute'));
    mute.type = 'button';
    mute.textContent = 'M';
    mute.title = 'Mute (this page only)';
    mute.setAttribute('aria-label', `Mute ${own ? 'your row' : user}`);
    mute.addEventListener('click', () => this.handlers.onMix(user, { mute: mute.getAttribute('aria-pressed') !== 'true' }));
    const solo = /** @type {HTMLButtonElement} */ (element('button', 'solo'));
    solo.type = 'button';
    solo.textContent = 'S';
    solo.title = 'Solo (this page only)';
    solo.setAttribute('aria-label', `Solo ${own ? 'your row' : user}`);
    solo.addEventListener('click', () => this.handlers.onMix(user, { solo: solo.getAttribute('aria-pressed') !== 'true' }));
    const volume = /** @type {HTMLInputElement} */ (element('input', 'volume'));
    volume.type = 'range';
    volume.min = '0';
    volume.max = '100';
    volume.step = '1';
    volume.setAttribute('aria-label', `Volume of ${own ? 'your row' : user}`);
    volume.addEventListener('input', () => this.handlers.onMix(user, { volume: Number(volume.value) / 100 }));
    mixBox.append(mute, solo, volume);
    row.append(who, cellBox, mixBox);
    return { row, name, badge, detail, when, cells, mute, solo, volume };
  }

  /**
   * @param {RowEntry} entry
   * @param {RowView} view
   */
  _updateRow(entry, view) {
    const row = entry.row;
    row.style.setProperty('--user', view.colour);
    entry.badge.hidden = !view.away;
    if (entry.detail.textContent !== view.detail) entry.detail.textContent = view.detail;
    // A non-breaking space keeps the line's height when there is nothing to say.
    const when = view.when || '\u00a0';
    if (entry.when.textContent !== when) entry.when.textContent = when;
    row.classList.toggle('pending', view.incoming !== null);
    row.classList.toggle('away', view.away);
    row.classList.toggle('silenced', view.silenced);
    entry.mute.setAttribute('aria-pressed', String(view.mix.mute));
    entry.solo.setAttribute('aria-pressed', String(view.mix.solo));
    const volume = String(Math.round(view.mix.volume * 100));
    if (entry.volume.value !== volume && this.document.activeElement !== entry.volume) entry.volume.value = volume;
    entry.cells.forEach((cell, step) => {
      const on = view.steps[step] === 1;
      const next = view.incoming ? view.incoming[step] === 1 : on;
      cell.classList.toggle('on', on);
      cell.classList.toggle('incoming-on', !on && next);
      cell.classList.toggle('incoming-off', on && !next);
      if (view.own) {
        const unsent = view.unsent !== null && view.unsent[step] === true;
        cell.classList.toggle('unsent', unsent);
        cell.setAttribute('aria-pressed', String(on));
        cell.setAttribute('aria-label', `Your step ${step + 1}${unsent ? ', not sent yet' : ''}`);
      } else {
        cell.title = on !== next ? `step ${step + 1}: ${next ? 'starts' : 'stops'} at your next Loop Start` : '';
      }
    });
    // What a screen reader hears of the row: who, what, which steps, what changes.
    const parts = [view.own ? `Your row, ${view.user}` : `${view.user}${view.away ? ' (away)' : ''}`];
    if (!view.own) {
      parts.push(view.detail);
      parts.push(`plays steps ${stepList(view.steps)}`);
      if (view.incoming) parts.push(`from your next Loop Start: steps ${stepList(view.incoming)}${view.when ? `, ${view.when}` : ''}`);
    }
    if (view.silenced) parts.push('silent in your mix');
    const label = parts.filter(Boolean).join('; ');
    if (row.getAttribute('aria-label') !== label) row.setAttribute('aria-label', label);
  }

  /** @param {KeyboardEvent} event */
  _onKeyDown(event) {
    const target = /** @type {HTMLElement} */ (event.target);
    if (event.code === 'Space' && !this._takesSpace(target)) {
      event.preventDefault();
      if (!event.repeat) this.handlers.onPlayPause();
      return;
    }
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
   * Space plays and pauses unless the focus is on a control Space operates:
   * a button reached with the keyboard (a step toggles, Play plays, Mute
   * mutes), a text field, a list. A button that has focus only because it
   * was clicked does not take Space (click a step, then Space plays), nor do
   * the tempo field and the sliders, which take no spaces.
   * @param {EventTarget | null} target
   * @returns {boolean}
   */
  _takesSpace(target) {
    if (!(target instanceof HTMLElement)) return false;
    if (target instanceof HTMLInputElement) return !['number', 'range'].includes(target.type);
    if (target.tagName === 'BUTTON' || target.tagName === 'A') return target !== this.pointerFocus;
    return ['SELECT', 'TEXTAREA'].includes(target.tagName) || target.isContentEditable;
  }

  /**
   * @param {string} id
   * @returns {HTMLElement}
   */
  _byId(id) {
    return /** @type {HTMLElement} */ (this.document.getElementById(id));
  }
}
