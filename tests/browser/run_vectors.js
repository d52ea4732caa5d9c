// @ts-check
/**
 * Test helper, injected into a served loopsync page: run the shared JSON
 * vectors (tests/vectors/, format in its README.md) against web/rules.js.
 * Returns the number of cases run and a description of every failure.
 */

/**
 * @param {any} rules the module web/rules.js
 * @param {{names: any, parts: any, merge: any, client: any, presence: any}} vectors the parsed JSON files
 * @returns {{ran: number, failures: string[]}}
 */
function runVectors(rules, vectors) {
  const failures = [];
  let ran = 0;
  const same = (/** @type {unknown} */ a, /** @type {unknown} */ b) => rules.jsonEqual(a, b);
  const show = (/** @type {unknown} */ value) => JSON.stringify(value);
  const code = (/** @type {any} */ problem) => (problem === null ? null : problem.code);

  for (const [index, c] of vectors.names.cases.entries()) {
    ran += 1;
    const got = code(rules.checkName(c.kind, c.value));
    if (got !== c.expected) failures.push(`names[${index}] ${c.kind}=${show(c.value)}: got ${got}, expected ${c.expected}`);
  }
  for (const [index, c] of vectors.parts.cases.entries()) {
    ran += 1;
    const got = code(rules.checkPart(c.part, c.step_count));
    if (got !== c.expected) failures.push(`parts[${index}] ${show(c.part)}: got ${got}, expected ${c.expected}`);
  }
  for (const c of vectors.merge.merge_at_sync) {
    ran += 1;
    const got = rules.mergeAtSync(c.local, c.shared, c.me);
    if (!same(got, c.expected)) failures.push(`merge_at_sync ${c.name}: got ${show(got)}`);
  }
  for (const c of vectors.merge.differing_users) {
    ran += 1;
    const got = rules.differingUsers(c.playing, c.pending, c.me);
    if (!same(got, c.expected)) failures.push(`differing_users ${c.name}: got ${show(got)}`);
  }

  /** @type {Record<string, (sync: any, step: any) => any>} */
  const actions = {
    message: (sync, step) => sync.onMessage(step.message),
    toggle: (sync, step) => sync.toggle(step.step),
    set_step: (sync, step) => sync.setStep(step.step, step.value),
    set_sound: (sync, step) => sync.setSound(step.sound),
    play: (sync) => sync.play(),
    pause: (sync) => sync.pause(),
    sync: (sync) => sync.sync(),
    disconnect: (sync) => sync.onDisconnect(),
  };
  for (const scenario of vectors.client.scenarios) {
    ran += 1;
    const sync = new rules.ClientSync(scenario.me, scenario.sound ?? 'kick', scenario.steps ?? 16);
    for (const [index, step] of scenario.script.entries()) {
      const where = `client "${scenario.name}" step ${index} ${show(step).slice(0, 100)}`;
      const before = show([sync.loopParts, sync.own, sync.confirmed, sync.confirmedSeq, sync.nextSeq, [...sync.inFlight]]);
      if ('do' in step) {
        const action = actions[step.do];
        if (!action) {
          failures.push(`${where}: unknown action`);
          break;
        }
        if (step.expect_raises) {
          let raised = false;
          try {
            action(sync, step);
          } catch {
            raised = true;
          }
          const after = show([sync.loopParts, sync.own, sync.confirmed, sync.confirmedSeq, sync.nextSeq, [...sync.inFlight]]);
          if (!raised) failures.push(`${where}: did not throw`);
          if (after !== before) failures.push(`${where}: threw but changed the state`);
        } else {
          let sent;
          try {
            sent = action(sync, step) ?? [];
          } catch (error) {
            failures.push(`${where}: threw ${error}`);
            break;
          }
          if (!same(sent, step.expect_sent ?? [])) failures.push(`${where}: sent ${show(sent)}`);
        }
      }
      if ('expect' in step) {
        const expect = step.expect;
        const known = ['loop_parts', 'pending_users', 'dirty', 'confirmed_seq'];
        for (const key of Object.keys(expect)) if (!known.includes(key)) failures.push(`${where}: unknown expectation ${key}`);
        if ('loop_parts' in expect && !same(sync.loopParts, expect.loop_parts)) failures.push(`${where}: loopParts ${show(sync.loopParts)}`);
        if ('pending_users' in expect && !same(sync.pendingUsers(), expect.pending_users)) failures.push(`${where}: pendingUsers ${show(sync.pendingUsers())}`);
        if ('dirty' in expect && sync.dirty() !== expect.dirty) failures.push(`${where}: dirty ${sync.dirty()}`);
        if ('confirmed_seq' in expect && sync.confirmedSeq !== expect.confirmed_seq) failures.push(`${where}: confirmedSeq ${sync.confirmedSeq}`);
      }
    }
  }
  for (const scenario of vectors.presence.scenarios) {
    ran += 1;
    const table = new rules.PresenceTable();
    for (const [index, step] of scenario.script.entries()) {
      const where = `presence "${scenario.name}" step ${index} ${show(step).slice(0, 100)}`;
      if ('message' in step) {
        const changed = table.onMessage(step.message);
        if (changed !== step.expect_changed) failures.push(`${where}: changed ${changed}`);
      }
      if (step.disconnect) table.onDisconnect();
      if ('expect' in step) {
        if (table.ownId !== step.expect.own_id) failures.push(`${where}: ownId ${table.ownId}`);
        if (!same(table.byUser(), step.expect.by_user)) failures.push(`${where}: byUser ${show(table.byUser())}`);
      }
    }
  }
  return { ran, failures };
}

// @ts-ignore
window.runVectors = runVectors;
