// The Yjs updates a load client of bench/fanout.py sends to the y-websocket server.
//
// Made beforehand with Yjs itself, as a real client makes them: each user has
// its own Y.Doc (clientID = its index + 1, see "generation") and sets its own entry of the map
// "parts" (each user owns one part, as in loopsync) to {sound, steps, mark},
// once per update; an update also deletes the user's previous value. `mark`
// is "u=<index, 6 digits> t=<16 zeros>": the worker writes the send time over
// the zeros (the update's bytes keep their length, so it stays valid) and finds
// it again in what the server broadcasts.
//
// A later step of a ramp asks for a new "generation": its docs are new Yjs
// clients (clientID = generation * 1,000,000 + index + 1), since a client's
// updates are a chain the server already has the start of.
//
// stdin: {"users": [[index, name], ...], "count": N, "generation": G}
// stdout: for each user in turn, N updates, each as a 4-byte big-endian length and the update.
const Y = require('yjs')

const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
const chunks = []
for (const [index, name] of input.users) {
  const doc = new Y.Doc()
  doc.clientID = (input.generation || 0) * 1000000 + index + 1
  doc.on('update', update => {
    const length = Buffer.alloc(4)
    length.writeUInt32BE(update.length)
    chunks.push(length, Buffer.from(update))
  })
  const parts = doc.getMap('parts')
  const mark = `u=${String(index).padStart(6, '0')} t=${'0'.repeat(16)}`
  for (let k = 0; k < input.count; k++) {
    const steps = Array.from({ length: 16 }, () => (Math.random() < 0.5 ? 0 : 1))
    parts.set(name, { sound: 'kick', steps, mark })
  }
}
process.stdout.write(Buffer.concat(chunks))
