// Drives the live-talk page in Debian's headless Chromium (playwright-core, no
// downloaded browser). Run by tests/live_browser.rs and benches/live_latency.rs,
// which start Synapse and the bridge first.
//
// In (environment): PAGE_URL, HS_URL, MATRIX_USER, MATRIX_PASSWORD, CHANNEL,
// FAKE_AUDIO (a WAV the fake microphone plays), SCREENSHOT (optional: PNG taken
// while talking), HOLD_MS (default 2000), MODE ("test" or "bench"), PRESSES (bench).
// Out: one JSON object per line on stdout, {"event": ...}; the Rust side waits
// for each before it acts. Exit code 0 only when every step passed.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const STEP_TIMEOUT = 30_000;

const pageUrl = env('PAGE_URL');
const hsUrl = env('HS_URL');
const user = env('MATRIX_USER');
const password = env('MATRIX_PASSWORD');
const channel = env('CHANNEL', 'ops');
const fakeAudio = env('FAKE_AUDIO');
const screenshot = process.env.SCREENSHOT || '';
const holdMs = Number(env('HOLD_MS', '2000'));
const mode = env('MODE', 'test');
const presses = Number(env('PRESSES', '50'));

const profile = mkdtempSync(join(tmpdir(), 'walkie-chromium-'));
let context;

async function main() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 520, height: 860 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${fakeAudio}`,
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });

  await page.goto(pageUrl);
  // The bridge's config.json fills in the homeserver.
  await page.waitForFunction(() => document.getElementById('homeserver').value !== '');
  const prefilled = await page.inputValue('#homeserver');
  if (prefilled.replace(/\/$/, '') !== hsUrl.replace(/\/$/, '')) {
    throw new Error(`homeserver prefilled as ${prefilled}, expected ${hsUrl}`);
  }
  await page.fill('#user', user);
  await page.fill('#password', password);
  await page.click('#login-button');
  const room = page.locator(`#rooms input[data-channel="${channel}"]`);
  await room.waitFor();
  if (await room.isDisabled()) throw new Error(`the page says ${user} is not in the room of ${channel}`);
  await room.check();
  await page.click('#start');
  await page.waitForSelector('#connection[data-state="online"]');
  await page.waitForSelector('#talk-button:not([disabled])');
  emit('logged_on');

  // Times taken inside the page: pointer press → the button shows the grant.
  await page.evaluate(() => {
    const button = document.getElementById('talk-button');
    window.__walkie = { pressAt: 0, grantAt: 0 };
    button.addEventListener('pointerdown', (e) => { window.__walkie.pressAt = e.timeStamp; }, true);
    new MutationObserver(() => {
      if (button.dataset.state === 'talking' && !window.__walkie.grantAt) {
        window.__walkie.grantAt = performance.now();
      }
    }).observe(button, { attributes: true, attributeFilter: ['data-state'] });
  });
  const button = page.locator('#talk-button');
  const box = await button.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);

  const pressOnce = async () => {
    await page.evaluate(() => { window.__walkie.pressAt = 0; window.__walkie.grantAt = 0; });
    await page.mouse.down();
    await page.waitForSelector('#talk-button[data-state="talking"]');
    return page.evaluate(() => window.__walkie.grantAt - window.__walkie.pressAt);
  };

  if (mode === 'bench') {
    const samples = [];
    for (let i = 0; i < presses; i++) {
      samples.push(await pressOnce());
      await page.mouse.up();
      await page.waitForSelector('#talk-button[data-state="idle"]');
      // The released floor must be idle again before the next press, or the
      // press would measure the queue rather than the grant.
      await page.waitForSelector('#floor[data-state="idle"]');
    }
    emit('bench', { press_to_grant_ms: samples });
  } else {
    const pressToGrant = await pressOnce();
    const grantedAt = Date.now();
    emit('talking', { press_to_grant_ms: pressToGrant });
    // The mic meter moves while talking: the fake microphone's speech is encoded.
    await page.waitForFunction(() => Number(document.getElementById('mic-level').dataset.level) > 0.2);
    if (screenshot) await page.screenshot({ path: screenshot });
    // Holding the button is the scenario itself (a person talks for HOLD_MS).
    await page.waitForTimeout(Math.max(0, holdMs - (Date.now() - grantedAt)));
    await page.mouse.up();
    const heldMs = Date.now() - grantedAt;
    await page.waitForSelector('#talk-button[data-state="idle"]');
    emit('released', { held_ms: heldMs });

    // The Rust side transmits from its test endpoint now; the incoming meter
    // must show it being played.
    emit('listening');
    await page.waitForSelector('#floor[data-state="taken"]');
    const talker = await page.textContent('#floor');
    await page.waitForFunction(
      () => Number(document.getElementById('in-level').dataset.level) > 0.3,
      undefined,
      { polling: 20 },
    );
    const level = Number(await page.getAttribute('#in-level', 'data-level'));
    emit('heard', { level, floor: talker });
  }
  if (problems.length) throw new Error(problems.join('\n'));
  emit('done');
}

try {
  await main();
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  emit('failed', { message: String(e && e.stack ? e.stack : e) });
  try {
    const page = context?.pages()[0];
    if (page) {
      const path = join(tmpdir(), `walkie-live-failure-${process.pid}.png`);
      await page.screenshot({ path });
      emit('failure_screenshot', { path, text: await page.textContent('main') });
    }
    await context?.close();
  } catch (_) {
    // The browser is gone; the error above is what matters.
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
