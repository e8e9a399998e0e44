// Renders the live page's PNG icons from web/live/icon.svg with Debian's Chromium
// (the same playwright-core the browser tests use, from tests/browser/node_modules;
// run scripts/setup.sh first). The SVG is the source; the PNGs are committed so the
// bridge embeds them and nothing is rendered at build or run time. Run it again
// after changing the SVG:
//
//   node scripts/make-icons.mjs
//
// Writes icon-192.png and icon-512.png (purpose "any": the SVG as it is, rounded
// corners transparent) and icon-maskable-512.png (purpose "maskable": the corners
// filled with the background colour, because a launcher crops the icon to its own
// shape and a transparent corner would show as a notch).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'tests/browser/package.json'));
const { chromium } = require('playwright-core');

const web = join(root, 'web/live');
const svg = readFileSync(join(web, 'icon.svg'), 'utf8');
const BACKGROUND = '#10151c'; // --bg in style.css, background_color in the manifest

const outputs = [
  { file: 'icon-192.png', size: 192, fill: null },
  { file: 'icon-512.png', size: 512, fill: null },
  { file: 'icon-maskable-512.png', size: 512, fill: BACKGROUND },
];

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
});
try {
  for (const { file, size, fill } of outputs) {
    const page = await browser.newPage({ viewport: { width: size, height: size }, deviceScaleFactor: 1 });
    const source = `data:image/svg+xml;base64,${Buffer.from(svg).toString('base64')}`;
    const background = fill ? `background:${fill}` : 'background:transparent';
    await page.setContent(
      `<html><body style="margin:0;${background}"><img id="icon" src="${source}" width="${size}" height="${size}" style="display:block"></body></html>`,
    );
    await page.waitForFunction(() => document.getElementById('icon').complete);
    await page.screenshot({ path: join(web, file), omitBackground: !fill });
    await page.close();
    console.log(`wrote web/live/${file} (${size}x${size})`);
  }
} finally {
  await browser.close();
}
