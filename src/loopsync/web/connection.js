// @ts-check
/**
 * One WebSocket to the server that comes back by itself: on close it
 * reconnects with exponential backoff and jitter (0.25 s doubling to 8 s),
 * and `reconnectNow()` skips the wait (the tab became visible, the network
 * came back). The caller says hello on every open; the server answers with a
 * snapshot, which is how a reconnect catches up.
 */

const FIRST_DELAY_SECONDS = 0.25;
const MAX_DELAY_SECONDS = 8;

/**
 * @typedef {object} ConnectionHandlers
 * @property {() => void} onOpen the socket opened: say hello
 * @property {(message: any) => void} onMessage one parsed server message
 * @property {(info: {code: number, retrySeconds: number}) => void} onClose the socket closed; a retry is scheduled
 */

export class Connection {
  /**
   * @param {string} url ws:// or wss:// URL of the server's /ws
   * @param {ConnectionHandlers} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    /** @type {WebSocket | null} */
    this.socket = null;
    /** 'connecting' | 'open' | 'closed' */
    this.state = 'closed';
    this.attempt = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.retryTimer = null;
    /** performance.now() of the next attempt while closed (the page counts down to it). */
    this.retryAt = 0;
    /** Text frames sent, for tests and the debug hook. */
    this.sentCount = 0;
    /** @type {any[]} the messages sent, newest last (bounded) */
    this.sentLog = [];
  }

  /** Open the socket (and keep it open from now on). */
  start() {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.state = 'connecting';
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.state = 'open';
      this.handlers.onOpen();
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket || typeof event.data !== 'string') return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not our protocol; nothing sensible to do with it
      }
      this.handlers.onMessage(message);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.state = 'closed';
      const retrySeconds = this._nextDelaySeconds();
      this.retryAt = performance.now() + retrySeconds * 1000;
      this.retryTimer = setTimeout(() => this.start(), retrySeconds * 1000);
      this.handlers.onClose({ code: event.code, retrySeconds });
    };
  }

  /** Skip the backoff wait and try now (when the page has reason to think the server is back). */
  reconnectNow() {
    if (this.state === 'closed') this.start();
  }

  /**
   * Send one message if the socket is open.
   * @param {object} message
   * @returns {boolean} false when it could not be sent (the snapshot after the reconnect repairs that)
   */
  send(message) {
    if (this.socket === null || this.state !== 'open') return false;
    this.socket.send(JSON.stringify(message));
    this.sentCount += 1;
    this.sentLog.push(message);
    if (this.sentLog.length > 1000) this.sentLog.splice(0, 500);
    return true;
  }

  /** @returns {number} seconds to wait before the next attempt */
  _nextDelaySeconds() {
    const base = Math.min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** this.attempt);
    this.attempt += 1;
    // Jitter, so a room full of clients does not come back in one burst after a restart.
    return base * (0.5 + Math.random() * 0.5);
  }
}
