// @ts-check
/**
 * The page's address: what an invite link carries. No DOM.
 *
 * An invite link names the room and nothing else: never the user (whoever
 * opens it picks their own name), nor the inviter's tempo or lead.
 */

/**
 * @param {string} href the page's address
 * @param {string} room
 * @returns {string} the same page with `?room=ROOM` as its only parameter
 */
export function inviteLink(href, room) {
  const url = new URL(href);
  url.search = new URLSearchParams({ room }).toString();
  url.hash = '';
  return url.toString();
}
