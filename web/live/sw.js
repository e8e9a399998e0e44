// walkie-bridge live page: the service worker. It keeps the page's own files so
// the page (an installed app on a phone) opens when the bridge cannot be reached,
// and gets out of the way of everything else.
//
// Scope: its own folder, /live/ (no Service-Worker-Allowed header needed).
//
// Strategy: network first, the cache as the fallback. Not cache first with
// revalidation, because app.js speaks the bridge's protocol (docs/live-protocol.md)
// and that changes with the bridge: serving the cached copy first would run the
// previous version's page against an upgraded bridge for one load after every
// upgrade. The files are small and come from the bridge the page must reach anyway
// to talk, so asking it first costs nothing when it is there. When it is not there,
// a refused connection fails at once, a reverse proxy's 502/503/504 counts as not
// there; a network that swallows packets is cut short
// after NETWORK_TIMEOUT_MS, the cached copy is served, and the network answer, if it
// still comes, refreshes the cache for next time.
//
// Never touched: /live/ws (WebSocket upgrades do not pass through service workers
// at all; the check below says so in code), anything outside /live/ (the
// homeserver, other routes of the listener), anything but GET. /live/config.json is
// always asked of the bridge; its last answer is served only when the bridge cannot
// be reached, so the offline page still knows the homeserver and the channels.
//
// The bridge fills in VERSION (a hash of every file of the page) and FILES (the
// page's files) when it serves this script (src/live/assets.rs). A bridge with
// other files serves a different script, so the browser installs it, which fetches
// the new files and drops the old cache.

const VERSION = '@WALKIE_ASSETS_VERSION@';
const FILES = ['@WALKIE_PAGE_FILES@'];
const CACHE = `walkie-live-${VERSION}`;
const CONFIG_CACHE = 'walkie-live-config';
const NETWORK_TIMEOUT_MS = 4000;
const SCOPE = new URL('./', self.location.href);

/** The cache key of a page file at `path` (relative to the scope), or null. */
function pageFile(path) {
  const name = path === '' || path === 'index.html' ? './' : path;
  return FILES.includes(name) ? new URL(name, SCOPE).href : null;
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // 'reload': past the HTTP cache, so the copy kept is the bridge's current one.
    await cache.addAll(FILES.map((name) => new Request(new URL(name, SCOPE), { cache: 'reload' })));
    // Safe to take over at once: the files are served network first, so a page
    // that is open keeps running what it loaded and gets nothing older from us.
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith('walkie-live-') && name !== CACHE && name !== CONFIG_CACHE) {
        await caches.delete(name);
      }
    }
    // The page that registered us works offline from its first visit on.
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== SCOPE.origin || !url.pathname.startsWith(SCOPE.pathname)) return;
  const path = url.pathname.slice(SCOPE.pathname.length);
  if (path === 'ws') return;
  if (path === 'config.json') {
    event.respondWith(bridgeOrLastAnswer(request));
    return;
  }
  const key = pageFile(path);
  if (!key) return;
  event.respondWith(networkFirst(event, request, key));
});

async function networkFirst(event, request, key) {
  const cache = await caches.open(CACHE);
  const network = fetch(request).then(async (response) => {
    // Only whole, good answers are kept: an error page must not replace a file.
    if (response.status === 200) await cache.put(key, response.clone());
    return response;
  });
  // The refresh may finish after we answered from the cache.
  event.waitUntil(network.catch(() => {}));
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), NETWORK_TIMEOUT_MS);
  });
  // null: unreachable, or no answer in time.
  const first = await Promise.race([network.catch(() => null), timeout]);
  clearTimeout(timer);
  // A reverse proxy (HTTPS in front of the bridge, as the README says) answers
  // 502/503/504 when the bridge is down: that is unreachable too. Other answers (a
  // 404) are the bridge's word.
  if (first && first.status < 500) return first;
  const cached = await cache.match(key);
  if (cached) return cached;
  // Nothing kept yet (the first visit is still installing us): the network's answer.
  return first || network.catch(() => Response.error());
}

async function bridgeOrLastAnswer(request) {
  const cache = await caches.open(CONFIG_CACHE);
  let response = null;
  try {
    response = await fetch(request);
    if (response.ok) {
      await cache.put(request.url, response.clone());
      return response;
    }
  } catch (_) {
    // Unreachable: the last answer below.
  }
  // Unreachable, or a proxy's 5xx for a bridge that is down: the last answer kept.
  if (!response || response.status >= 500) {
    const kept = await cache.match(request.url);
    if (kept) return kept;
  }
  return response || Response.error();
}
