// Drives the live page as an app in Debian's headless Chromium (playwright-core, no
// downloaded browser): the service worker, the manifest, reconnecting, the
// push-to-talk key. Run by tests/live_app.rs, which starts Synapse and the bridge
// and stops and restarts the bridge when this driver says it is ready.
//
// In (environment): SCENARIO ("install" or "reconnect"), PAGE_URL, HS_URL; for
// "reconnect" also MATRIX_USER, MATRIX_PASSWORD, CHANNEL, FAKE_AUDIO (a WAV the
// fake microphone plays), HOLD_MS (default 1500).
// In (stdin): one line per thing the Rust side did that the page cannot see coming
// ("bridge_stopped").
// "install" loads the page through a small reverse proxy of its own in front of the
// bridge (see startProxy), to play an upgraded bridge and a proxy whose bridge is down.
// Out: one JSON object per line on stdout, {"event": ...}. Exit code 0 only when
// every step passed.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, request as httpRequest } from 'node:http';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const STEP_TIMEOUT = 30_000;
// Reconnect tries double up to 30 s; a bridge that takes a few seconds to start
// again can be found by the 16 s or the 30 s try.
const RECONNECT_TIMEOUT = 80_000;

const scenario = env('SCENARIO');
const pageUrl = env('PAGE_URL');
const hsUrl = env('HS_URL');

const commands = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
commands.on('line', (line) => {
  const waiter = waiting.shift();
  if (waiter) waiter(line.trim());
  else pending.push(line.trim());
});
/** The next line from the Rust side, which must be `expected`. */
async function command(expected) {
  const line = pending.length ? pending.shift() : await new Promise((resolve) => waiting.push(resolve));
  if (line !== expected) throw new Error(`expected "${expected}" from the test, got "${line}"`);
}

const profile = mkdtempSync(join(tmpdir(), 'walkie-chromium-app-'));
let context;

async function launch(extraArgs = []) {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 420, height: 860 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      ...extraArgs,
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT);
  const problems = [];
  const watch = { on: true };
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (watch.on && m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (watch.on && r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  return { page, problems, watch };
}

async function waitForConfig(page) {
  // The bridge's config.json (or the service worker's last copy) fills in the homeserver.
  await page.waitForFunction(() => document.getElementById('homeserver').value !== '');
  const prefilled = await page.inputValue('#homeserver');
  if (prefilled.replace(/\/$/, '') !== hsUrl.replace(/\/$/, '')) {
    throw new Error(`homeserver prefilled as ${prefilled}, expected ${hsUrl}`);
  }
}

/** Chooses the push-to-talk key the way a person does: focus the setting, press it. */
async function chooseKey(page, key) {
  const settings = page.locator('details.settings');
  if (!(await settings.evaluate((d) => d.open))) await page.click('details.settings summary');
  await page.focus('#ptt-key');
  await page.keyboard.press(key);
  const chosen = await page.inputValue('#ptt-key');
  await page.locator('#ptt-key').blur();
  return chosen;
}

// ------------------------------------------------------------ install

const MARK = '\n// walkie-test: the upgraded bridge\n';

/**
 * A reverse proxy in front of the bridge, as deployments have one (for HTTPS). It
 * plays two things the test cannot do to the bridge itself: an upgraded bridge
 * (`upgraded`: app.js changed, and so sw.js's VERSION), and the proxy's own answer
 * when the bridge behind it is down (502, as nginx gives).
 */
async function startProxy(upstream) {
  const target = new URL(upstream);
  const proxy = { upgraded: false };
  proxy.server = createServer((req, res) => {
    const path = new URL(req.url, target).pathname;
    const out = httpRequest(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } },
      (up) => {
        const rewrite = proxy.upgraded && up.statusCode === 200 && (path === '/live/app.js' || path === '/live/sw.js');
        if (!rewrite) {
          res.writeHead(up.statusCode, up.headers);
          up.pipe(res);
          return;
        }
        const chunks = [];
        up.on('data', (chunk) => chunks.push(chunk));
        up.on('end', () => {
          let body = Buffer.concat(chunks).toString('utf8');
          body = path === '/live/app.js'
            ? body + MARK
            : body.replace(/const VERSION = '([0-9a-f]+)'/, "const VERSION = 'upgraded$1'");
          const headers = { ...up.headers, 'content-length': Buffer.byteLength(body) };
          delete headers['transfer-encoding'];
          res.writeHead(200, headers);
          res.end(body);
        });
      },
    );
    out.on('error', () => {
      if (res.headersSent) return res.destroy();
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('502 Bad Gateway: the bridge is down');
    });
    req.pipe(out);
  });
  await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
  proxy.origin = `http://127.0.0.1:${proxy.server.address().port}`;
  proxy.close = () => new Promise((resolve) => {
    proxy.server.close(resolve);
    proxy.server.closeAllConnections();
  });
  return proxy;
}

/** Reloads with the bridge unreachable: the page, where each file came from, and what else answers. */
async function reloadUnreachable(page) {
  const responses = [];
  const record = (r) => responses.push({ url: r.url(), status: r.status(), from_service_worker: r.fromServiceWorker() });
  page.on('response', record);
  const reloaded = await page.reload();
  await waitForConfig(page);
  await page.waitForSelector('#login-panel:not([hidden])');
  page.off('response', record);
  const seen = await page.evaluate(async () => {
    // Outside the page's files: the service worker must not answer from a cache.
    const tries = {};
    for (const path of ['/live/ws', '/live/not-a-page-file.js', '/health', '/_matrix/app/v1/ping']) {
      try {
        const response = await fetch(path, { cache: 'no-store' });
        tries[path] = `HTTP ${response.status}`;
      } catch (e) {
        tries[path] = 'network error';
      }
    }
    return {
      title: document.title,
      controlled: navigator.serviceWorker.controller !== null,
      key: document.getElementById('ptt-key').value,
      hint: document.querySelector('.ptt-key-name').textContent,
      tries,
    };
  });
  return {
    ...seen,
    document_status: reloaded?.status() ?? null,
    document_from_service_worker: reloaded?.fromServiceWorker() ?? null,
    responses,
  };
}

async function install() {
  const { page, problems, watch } = await launch();
  const proxy = await startProxy(pageUrl);
  const url = new URL(new URL(pageUrl).pathname, proxy.origin).href;
  await page.goto(url);
  await waitForConfig(page);

  // The service worker installs (keeping the page's files) and takes over.
  const registered = await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.ready;
    return { scope: registration.scope, script: registration.active.scriptURL, state: registration.active.state };
  });
  emit('registered', { page_url: url, ...registered });
  await page.reload();
  await waitForConfig(page);
  const controller = await page.evaluate(() => navigator.serviceWorker.controller?.scriptURL ?? null);
  if (!controller) throw new Error('after a reload the page is not controlled by the service worker');
  emit('controlled', { controller });

  // The bridge is upgraded. The page must get the new app.js at once (network
  // first), and the browser must install the new worker, which keeps the new files
  // and drops the old cache.
  const cachesBefore = await page.evaluate(() => caches.keys());
  proxy.upgraded = true;
  const upgraded = await page.evaluate(async (mark) => {
    const registration = await navigator.serviceWorker.getRegistration();
    const changed = new Promise((resolve) => {
      navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true });
    });
    await registration.update();
    await changed;
    // The controller changes as the new worker starts activating; its clean-up is
    // done once it is activated.
    const worker = navigator.serviceWorker.controller;
    if (worker.state !== 'activated') {
      await new Promise((resolve) => {
        worker.addEventListener('statechange', () => worker.state === 'activated' && resolve());
      });
    }
    const script = await (await fetch('app.js')).text();
    const names = await caches.keys();
    const current = names.find((n) => n.startsWith('walkie-live-upgraded'));
    const kept = current ? await (await caches.open(current)).match('app.js') : null;
    return {
      caches: names,
      served_new_page: script.endsWith(mark),
      kept_new_page: kept ? (await kept.text()).endsWith(mark) : false,
    };
  }, MARK);
  emit('upgraded', { caches_before: cachesBefore, ...upgraded });

  // Chromium's own verdicts: the manifest as parsed, and whether it would offer to install.
  const cdp = await context.newCDPSession(page);
  const manifest = await cdp.send('Page.getAppManifest');
  const installability = await cdp.send('Page.getInstallabilityErrors');
  // The manifest as served, and every icon it names loaded as an image.
  const served = await page.evaluate(async () => {
    const response = await fetch('manifest.webmanifest', { cache: 'no-store' });
    const data = await response.json();
    const icons = [];
    for (const icon of data.icons) {
      const iconUrl = new URL(icon.src, response.url);
      const fetched = await fetch(iconUrl, { cache: 'no-store' });
      const image = new Image();
      image.src = iconUrl;
      let loaded = true;
      try {
        await image.decode();
      } catch (_) {
        loaded = false;
      }
      icons.push({
        ...icon,
        url: iconUrl.href,
        status: fetched.status,
        content_type: fetched.headers.get('content-type'),
        loaded,
        width: image.naturalWidth,
        height: image.naturalHeight,
      });
    }
    return {
      url: response.url,
      content_type: response.headers.get('content-type'),
      linked: document.querySelector('link[rel="manifest"]')?.href ?? null,
      data,
      icons,
    };
  });
  emit('manifest', {
    ...served,
    parse_errors: manifest.errors,
    installability_errors: installability.installabilityErrors,
  });

  // A key chosen now must still be the key on the offline starts below.
  const chosen = await chooseKey(page, 'F8');
  emit('key_chosen', { key: chosen });

  if (problems.length) throw new Error(problems.join('\n'));
  emit('ready_for_offline');
  await command('bridge_stopped');

  // From here on failed loads are the point, not a fault.
  watch.on = false;
  // The proxy is there and says 502; then nothing is there at all.
  emit('bridge_down', await reloadUnreachable(page));
  await proxy.close();
  emit('nothing_there', await reloadUnreachable(page));
  if (problems.length) throw new Error(problems.join('\n'));
  emit('done');
}

// ------------------------------------------------------------ reconnect

async function reconnect() {
  const user = env('MATRIX_USER');
  const password = env('MATRIX_PASSWORD');
  const channel = env('CHANNEL', 'ops');
  const holdMs = Number(env('HOLD_MS', '1500'));
  const { page, problems, watch } = await launch([
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${env('FAKE_AUDIO')}`,
  ]);

  // The first OpenID token the page gets is one the homeserver never issued, as if
  // it had expired while the phone was away: the bridge refuses it and the page
  // must get a new one by itself. Every later request goes to Synapse as it is.
  let tokenRequests = 0;
  await page.route('**/openid/request_token', async (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    tokenRequests += 1;
    if (tokenRequests > 1) return route.continue();
    return route.fulfill({
      status: 200,
      contentType: 'application/json',
      headers: { 'access-control-allow-origin': '*' },
      body: JSON.stringify({
        access_token: 'walkietestnotatokenthehomeserverissued',
        token_type: 'Bearer',
        matrix_server_name: new URL(hsUrl).hostname,
        expires_in: 3600,
      }),
    });
  });

  await page.goto(pageUrl);
  await waitForConfig(page);
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
  const log = await page.textContent('#log');
  emit('logged_on', {
    token_requests: tokenRequests,
    renewed: log.includes('refused the OpenID token'),
    wake_lock: await page.evaluate(() => document.documentElement.dataset.wakeLock ?? null),
  });

  // The push-to-talk key: T instead of Space, held like a PTT button.
  const chosen = await chooseKey(page, 't');
  const hint = await page.textContent('.ptt-key-name');
  emit('key_chosen', { key: chosen, hint });
  await page.keyboard.down('t');
  await page.waitForSelector('#talk-button[data-state="talking"]');
  const grantedAt = Date.now();
  emit('talking');
  await page.waitForFunction(() => Number(document.getElementById('mic-level').dataset.level) > 0.2);
  // Holding the key is the scenario itself (a person talks for HOLD_MS).
  await page.waitForTimeout(Math.max(0, holdMs - (Date.now() - grantedAt)));
  await page.keyboard.up('t');
  const heldMs = Date.now() - grantedAt;
  await page.waitForSelector('#talk-button[data-state="idle"]');
  emit('released', { held_ms: heldMs });

  if (problems.length) throw new Error(problems.join('\n'));
  // The bridge goes away: the refused connections while it is down are expected.
  watch.on = false;
  emit('ready_for_restart');
  await page.waitForSelector('#connection[data-state="offline"]');
  const waitingText = await page.waitForFunction(
    () => {
      const text = document.getElementById('net-status').textContent;
      return /reconnecting in \d+ s/.test(text) ? text : false;
    },
    undefined,
    { polling: 50 },
  );
  emit('reconnecting', { status: await waitingText.jsonValue() });

  // The Rust side starts the bridge again; the page finds it by itself.
  await page.waitForSelector('#connection[data-state="online"]', { timeout: RECONNECT_TIMEOUT });
  await page.waitForSelector('#net-status[data-state="online"]');
  await page.waitForSelector('#talk-button:not([disabled])');
  watch.on = true;
  emit('back_online', {
    status: await page.textContent('#net-status'),
    token_requests: tokenRequests,
    wake_lock: await page.evaluate(() => document.documentElement.dataset.wakeLock ?? null),
  });

  // The Rust side transmits from its test endpoint now.
  emit('listening');
  await page.waitForSelector('#floor[data-state="taken"]', { timeout: STEP_TIMEOUT });
  const floor = await page.textContent('#floor');
  await page.waitForFunction(
    () => Number(document.getElementById('in-level').dataset.level) > 0.3,
    undefined,
    { polling: 20 },
  );
  const level = Number(await page.getAttribute('#in-level', 'data-level'));
  const media = await page.evaluate(() => {
    const metadata = navigator.mediaSession?.metadata;
    return metadata ? { title: metadata.title, artist: metadata.artist } : null;
  });
  emit('heard', { level, floor, media });

  // The network goes away and comes back (a train, a lift, Wi-Fi to mobile): the
  // page says so and connects anew as soon as it is back, without waiting out a try.
  await page.waitForSelector('#floor[data-state="idle"]');
  const logons = () => page.$$eval('#log li', (items) => items.filter((i) => i.textContent.includes('Monitoring ')).length);
  const logonsBefore = await logons();
  await context.setOffline(true);
  await page.waitForSelector('#net-status[data-state="offline"]');
  const offlineStatus = await page.textContent('#net-status');
  await context.setOffline(false);
  await page.waitForSelector('#net-status[data-state="online"]');
  await page.waitForSelector('#connection[data-state="online"]');
  emit('network_back', {
    offline_status: offlineStatus,
    status: await page.textContent('#net-status'),
    new_logons: (await logons()) - logonsBefore,
  });

  // Leaving lets the screen sleep again and ends the tries for good.
  await page.click('#leave');
  await page.waitForSelector('#rooms-panel:not([hidden])');
  await page.waitForFunction(() => document.documentElement.dataset.wakeLock === 'off');
  emit('left', { status: await page.textContent('#net-status') });
  if (problems.length) throw new Error(problems.join('\n'));
  emit('done');
}

try {
  if (scenario === 'install') await install();
  else if (scenario === 'reconnect') await reconnect();
  else throw new Error(`unknown SCENARIO ${scenario}`);
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  emit('failed', { message: String(e && e.stack ? e.stack : e) });
  try {
    const page = context?.pages()[0];
    if (page) {
      const path = join(tmpdir(), `walkie-app-failure-${process.pid}.png`);
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
