// Drives the live page monitoring several channels in headless Chromium, with
// the page's speaker output tapped (`/live/?tap`). Run by tests/live_page.rs.
//
// In (environment): PAGE_URL (with ?tap), HS_URL, MATRIX_USER, MATRIX_PASSWORD,
// CHANNELS (comma-separated; the first is selected for talking), FAKE_AUDIO
// (the fake microphone's WAV), SCENARIO: "simultaneous" (two channels talk at
// once) or "while_talking" (hold the button on the first channel while another
// talks), "priority" (the last channel is marked priority before anything
// plays; says `playing` once the first channel is heard, so the test can talk
// on the priority one and interrupt it) or "history" (opens "Recent on" for the
// first channel, asking again until a transmission is listed, and plays it),
// HOLD_MS, SCREENSHOT_DIR (optional: "simultaneous" takes the page
// phone-sized and desktop-sized while one channel plays and the other waits,
// as live-page-phone.png and live-page-desktop.png). Out: one JSON object per line: logged_on, (talking,
// released, playing,) played {pcm: base64 of 48 kHz i16 LE, from "monitoring"
// on; heard: what the page said it played, in order}, done.
// Exit code 0 only when every step passed.

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
const STEP_TIMEOUT = 60_000;

const channels = env('CHANNELS').split(',');
const scenario = env('SCENARIO', 'simultaneous');
const holdMs = Number(env('HOLD_MS', '4000'));
const profile = mkdtempSync(join(tmpdir(), 'walkie-chromium-'));
let context;

async function main() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 520, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${env('FAKE_AUDIO')}`,
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

  await page.goto(env('PAGE_URL'));
  await page.waitForFunction(() => document.getElementById('homeserver').value !== '');
  await page.fill('#homeserver', env('HS_URL'));
  await page.fill('#user', env('MATRIX_USER'));
  await page.fill('#password', env('MATRIX_PASSWORD'));
  await page.click('#login-button');
  for (const channel of channels) {
    const box = page.locator(`#rooms input[data-channel="${channel}"]`);
    await box.waitFor();
    if (await box.isDisabled()) throw new Error(`the page says the user is not in ${channel}'s room`);
    await box.check();
  }
  await page.click('#start');
  for (const channel of channels) {
    await page.waitForSelector(`#channels li[data-channel="${channel}"][data-online="true"]`);
  }
  await page.waitForSelector('#talk-button:not([disabled])');
  if (scenario === 'priority') {
    const star = page.locator(`#channels li[data-channel="${channels.at(-1)}"] button.priority`);
    await star.click();
    await page.waitForSelector(
      `#channels li[data-channel="${channels.at(-1)}"] button.priority[aria-pressed="true"]`,
    );
  }
  // What the speaker played from here on, and what the page said it played
  // ("▶ kilo (Radio) on ops (live)"), each change once.
  await page.evaluate(() => {
    window.__walkieTap.length = 0;
    window.__heard = [];
    const shown = document.getElementById('now-playing');
    new MutationObserver(() => {
      const text = shown.textContent;
      if (text && window.__heard.at(-1) !== text) window.__heard.push(text);
    }).observe(shown, { childList: true, characterData: true, subtree: true });
  });
  emit('logged_on');

  if (scenario === 'priority') {
    await page.waitForFunction(
      (channel) => document.getElementById('now-playing').textContent.includes(`on ${channel} `),
      channels[0],
    );
    // What a screen reader is told about the selected channel's floor.
    const floor = await page.waitForFunction(() => {
      const line = document.getElementById('floor');
      return line.textContent.includes('is talking') && {
        text: line.textContent,
        live: line.getAttribute('aria-live'),
        role: line.getAttribute('role'),
      };
    });
    emit('playing', { channel: channels[0], floor: await floor.jsonValue() });
  }

  if (scenario === 'history') {
    emit('accessible', await accessibility(page));
    await page.click('#history-panel summary');
    // The outbox lists a talk once the homeserver took it: a user asks again.
    const play = page.locator('#history li[data-tx] button');
    const deadline = Date.now() + STEP_TIMEOUT;
    while (!(await play.count())) {
      if (Date.now() > deadline) throw new Error('nothing reached the history');
      await page.click('#history-refresh');
      await page.waitForTimeout(200);
    }
    emit('listed', { text: await page.textContent('#history li[data-tx]') });
    await play.first().click();
  }

  if (scenario === 'while_talking') {
    const button = page.locator('#talk-button');
    const box = await button.boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.waitForSelector('#talk-button[data-state="talking"]');
    const grantedAt = Date.now();
    emit('talking');
    // Someone talks on the other channel while this user holds the button: the
    // page keeps it (shown as waiting) and plays it after the release.
    await page.waitForFunction(() => window.__walkie.stops >= 1);
    await page.waitForSelector('#waiting:not(:empty)');
    const waiting = await page.textContent('#waiting');
    const silentWhileTalking = await page.evaluate(
      () => window.__walkieTap.every((block) => block.every((s) => Math.abs(s) < 1e-4)),
    );
    // Holding the button is the scenario itself (a person talks for HOLD_MS).
    await page.waitForTimeout(Math.max(0, holdMs - (Date.now() - grantedAt)));
    await page.mouse.up();
    await page.waitForSelector('#talk-button[data-state="idle"]');
    emit('released', { waiting, silent_while_talking: silentWhileTalking });
  }

  const shots = process.env.SCREENSHOT_DIR;
  if (shots && scenario === 'simultaneous') {
    await page.waitForSelector('#waiting:not(:empty)');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: join(shots, 'live-page-phone.png') });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.screenshot({ path: join(shots, 'live-page-desktop.png') });
    emit('screenshots', { dir: shots });
  }
  const transmissions = { simultaneous: 2, while_talking: 1, priority: 2, history: 1 }[scenario];
  await page.waitForFunction((n) => window.__walkie.stops >= n, transmissions);
  await page.waitForFunction(() => window.__walkie.waiting() === 0 && !window.__walkie.playing());
  // The jitter buffer's last 60 ms and a margin of silence.
  await page.waitForTimeout(500);
  const pcm = await page.evaluate(() => {
    const blocks = window.__walkieTap;
    const length = blocks.reduce((n, b) => n + b.length, 0);
    const out = new Int16Array(length);
    let at = 0;
    for (const block of blocks) {
      for (const s of block) out[at++] = Math.max(-32768, Math.min(32767, Math.round(s * 32767)));
    }
    let binary = '';
    const bytes = new Uint8Array(out.buffer);
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  });
  emit('played', { pcm, heard: await page.evaluate(() => window.__heard) });
  if (problems.length) throw new Error(problems.join('\n'));
  emit('done');
}

// What a screen reader and a keyboard user get on the monitoring page:
// `unnamed`, the interactive elements in Chromium's accessibility tree without
// a name; `named`, the others ("role: name"); `keys`, where the focus is after
// each key from the "leave" button: Tab into the channels, the arrows through
// them (selecting), Tab on to the ★ buttons and the talk button.
async function accessibility(page) {
  const cdp = await page.context().newCDPSession(page);
  const { nodes } = await cdp.send('Accessibility.getFullAXTree');
  const interactive = new Set(['button', 'checkbox', 'textbox', 'radio', 'combobox', 'link', 'switch', 'slider']);
  const unnamed = [];
  const named = [];
  for (const node of nodes) {
    const role = node.role?.value;
    if (node.ignored || !interactive.has(role)) continue;
    const name = (node.name?.value || '').trim();
    if (name) named.push(`${role}: ${name}`);
    else unnamed.push(`${role} (DOM node ${node.backendDOMNodeId})`);
  }
  await cdp.detach();
  const where = () => page.evaluate(() => {
    const element = document.activeElement;
    const channel = element.closest('li')?.dataset.channel;
    if (element.matches('.pick')) return `radio ${channel} (${element.getAttribute('aria-checked') === 'true' ? 'selected' : 'not selected'}; talk on ${document.getElementById('talk-on').textContent})`;
    if (element.matches('button.priority')) return `priority ${channel}`;
    return element.id || element.tagName;
  });
  await page.focus('#leave');
  const keys = [];
  for (const key of ['Tab', 'ArrowDown', 'ArrowUp', 'Tab', 'Tab', 'Tab']) {
    await page.keyboard.press(key);
    keys.push(`${key} → ${await where()}`);
  }
  return { unnamed, named, keys };
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
      const path = join(tmpdir(), `walkie-channels-failure-${process.pid}.png`);
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
