// The web view in a real browser (Debian's Chromium driven by playwright-core) against the real
// services that `scripts/serve --debug --demo-accounts 6` runs (scripts/test, step `browser`).
// Environment: WEB_URL (the gateway, which serves the page), SERVE_OUT (serve's directory: the
// demo accounts and the services' pids), LOADTEST_BIN, SCREENSHOT (where the view's picture goes).
//
// The pair is BTC-EUR (tick 0.10, lot 0.00001, min notional 5 EUR). Each order of these tests
// rests at a price where the book has no level yet, so its row is its own.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, test as nodeTest } from 'node:test';

import { chromium } from 'playwright-core';

const WEB_URL = process.env.WEB_URL ?? 'http://127.0.0.1:8080/';
const SERVE_OUT = process.env.SERVE_OUT ?? '../target/serve';
const LOADTEST_BIN = process.env.LOADTEST_BIN ?? '../target/debug/loadtest';
const PAIRS_FILE = process.env.PAIRS_FILE ?? '../config/pairs.toml';
const SCREENSHOT = process.env.SCREENSHOT ?? '../docs/img/web-view.png';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WAIT_MS = 20_000;
const QTY = '0.00100';
/** No test waits forever: the step has a time budget. */
const test = (name, fn) => nodeTest(name, { timeout: 120_000 }, fn);

const accounts = readFileSync(`${SERVE_OUT}/demo-accounts.jsonl`, 'utf8')
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l));
assert.ok(accounts.length >= 6, 'scripts/serve --demo-accounts 6: two for the pages, four for the load');

let browser;
let viewer; // page A: the view under test (logs in with account 0 from the second test on)
let other; // page B: another client (account 1)
const requests = [];
const usedPrices = new Set();
let load = null;
let otherBid = null; // the other client's resting bid, which the viewer later sells into

/** Retries an assertion until it passes or WAIT_MS runs out. */
async function eventually(check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function servicePid(name) {
  const line = readFileSync(`${SERVE_OUT}/pids`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} not in ${SERVE_OUT}/pids`);
  return Number(line.split(' ')[1]);
}

async function openView() {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(WEB_URL);
  await page.locator('#book:not([data-snapshots="0"])').waitFor({ timeout: WAIT_MS });
  return page;
}

async function login(page, account) {
  await page.locator('#key-id').fill(account.key_id);
  await page.locator('#key-secret').fill(account.secret);
  await page.locator('#login button[type=submit]').click();
  await page.locator('#account-id', { hasText: `#${account.account_id}` }).waitFor({ timeout: WAIT_MS });
}

async function place(page, { side, price, qty = QTY, tif = '' }) {
  await page.locator(`#order input[name=side][value=${side}]`).check();
  await page.locator('#order select[name=type]').selectOption('limit');
  await page.locator('#order select[name=tif]').selectOption(tif);
  await page.locator('#order input[name=price]').fill(price);
  await page.locator('#order input[name=qty]').fill(qty);
  await page.locator('#order button[type=submit]').click();
}

const ticks = (price) => Math.round(Number(price) * 10);
const levels = (page, side) =>
  page.$$eval(`#${side} tr`, (rows) => rows.map((r) => ({ price: r.dataset.price, qty: r.cells[1]?.textContent })));

/**
 * A bid price one tick above the best bid (below the best ask), for a bid that a later sell at
 * its price meets first. When the spread has no free tick (orders an earlier load left), the
 * other client first sells into the best bids until it has.
 */
async function newBestBidPrice() {
  for (let i = 0; i < 10; i++) {
    const bids = await levels(viewer, 'bids');
    const asks = (await levels(viewer, 'asks')).reverse();
    if (!bids[0]) return asks[0] ? ((ticks(asks[0].price) - 100) / 10).toFixed(2) : '59990.00';
    if (!asks[0] || ticks(asks[0].price) - ticks(bids[0].price) >= 2) {
      return ((ticks(bids[0].price) + 1) / 10).toFixed(2);
    }
    const qty = Math.max(Number(bids[0].qty), 0.001).toFixed(5);
    await place(other, { side: 'sell', price: bids[0].price, qty, tif: 'ioc' });
    await bidRow(viewer, bids[0].price).waitFor({ state: 'detached', timeout: WAIT_MS });
  }
  throw new Error('could not open a free tick in the spread');
}

/** A bid price (2 decimals) below the best bid where the viewer's book has no level. */
async function freeBidPrice() {
  const bids = await viewer.$$eval('#bids tr', (rows) => rows.map((r) => r.dataset.price));
  const taken = new Set([...bids, ...usedPrices]);
  const asks = await viewer.$$eval('#asks tr', (rows) => rows.map((r) => Number(r.dataset.price)));
  const bestAsk = asks.length ? Math.min(...asks) : 60_000;
  let ticks = Math.round((bids.length ? Number(bids[0]) : bestAsk - 10) * 10);
  while (taken.has((ticks / 10).toFixed(2))) ticks -= 1;
  const price = (ticks / 10).toFixed(2);
  usedPrices.add(price);
  return price;
}

const bidRow = (page, price) => page.locator(`#bids tr[data-price="${price}"]`);
const openOrderRow = (page, price) => page.locator(`#open-orders tr[data-price="${price}"]`);

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Off the network: every host but loopback resolves to nothing, and a proxy that does not
    // exist takes whatever is left (loopback bypasses it). As root, Chromium needs --no-sandbox.
    args: [
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      '--proxy-server=127.0.0.1:9',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
    ],
  });
  viewer = await openView();
  other = await openView();
  await login(other, accounts[1]);
});

after(async () => {
  if (load && load.exitCode === null && load.signalCode === null) {
    const exited = new Promise((resolve) => load.once('exit', resolve));
    load.kill('SIGINT'); // it cancels its orders, then exits
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    load.kill('SIGKILL');
  }
  // Leave no resting order of these tests in the book (the next run looks for free prices).
  for (const page of [viewer, other]) {
    await page?.locator('#cancel-all').click({ timeout: 2_000 }).catch(() => undefined);
  }
  await viewer?.waitForTimeout(500);
  await browser?.close();
});

test('the book renders from its snapshot and updates as another client places an order', async () => {
  const rows = await viewer.locator('#bids tr, #asks tr').count();
  const price = await newBestBidPrice();
  usedPrices.add(price);
  const updates = Number(await viewer.locator('#book').getAttribute('data-updates'));
  await place(other, { side: 'buy', price });
  await bidRow(viewer, price).waitFor({ timeout: WAIT_MS });
  assert.equal(await bidRow(viewer, price).locator('td').nth(1).textContent(), '0.00100000');
  assert.ok(Number(await viewer.locator('#book').getAttribute('data-updates')) > updates);
  assert.ok((await viewer.locator('#bids tr, #asks tr').count()) >= Math.min(rows + 1, 30));
  otherBid = price;
});

test('an order placed from the page appears in the book and in open orders, amends, and cancels', async () => {
  await login(viewer, accounts[0]);
  await viewer.locator('#balances tr', { hasText: 'EUR' }).first().waitFor({ timeout: WAIT_MS });
  const price = await freeBidPrice();
  await place(viewer, { side: 'buy', price });
  await openOrderRow(viewer, price).waitFor({ timeout: WAIT_MS });
  await bidRow(viewer, price).waitFor({ timeout: WAIT_MS });

  // Amend: a new total quantity, then the book and the open order both show it.
  await openOrderRow(viewer, price).locator('input[aria-label="new total qty"]').fill('0.00200');
  await openOrderRow(viewer, price).locator('button[data-action=amend]').click();
  await bidRow(viewer, price).locator('td', { hasText: '0.00200000' }).waitFor({ timeout: WAIT_MS });
  await eventually(async () =>
    assert.equal(await openOrderRow(viewer, price).locator('input[aria-label="new total qty"]').inputValue(), '0.00200000'),
  );

  await openOrderRow(viewer, price).locator('button[data-action=cancel]').click();
  await openOrderRow(viewer, price).waitFor({ state: 'detached', timeout: WAIT_MS });
  await bidRow(viewer, price).waitFor({ state: 'detached', timeout: WAIT_MS });
});

test('a sell against the other client trades: the trade, the fill and the emptied level show', async () => {
  assert.ok(otherBid, 'the first test placed the other client\'s bid');
  await place(viewer, { side: 'sell', price: otherBid });
  await viewer.locator('#trades tr', { hasText: otherBid }).first().waitFor({ timeout: WAIT_MS });
  await viewer.locator('#fills tr', { hasText: otherBid }).first().waitFor({ timeout: WAIT_MS });
  await bidRow(viewer, otherBid).waitFor({ state: 'detached', timeout: WAIT_MS });
  await other.locator('#fills tr', { hasText: otherBid }).first().waitFor({ timeout: WAIT_MS });
});

test('an off-tick price is refused and shown with its code', async () => {
  await place(viewer, { side: 'buy', price: '100.05' });
  const error = viewer.locator('#errors li[data-code=price_off_tick]');
  await error.waitFor({ timeout: WAIT_MS });
  assert.match(await error.textContent(), /tick/);
});

test('a dropped connection reconnects, logs in again and rebuilds the book', async () => {
  // The load generator moves the book from here on (and for the picture below).
  const loadAccounts = `${SERVE_OUT}/browser-load-accounts.jsonl`;
  writeFileSync(loadAccounts, accounts.slice(2).map((a) => JSON.stringify(a)).join('\n') + '\n');
  const wsUrl = new URL('ws', WEB_URL);
  wsUrl.protocol = 'ws:';
  load = spawn(
    LOADTEST_BIN,
    ['--url', wsUrl.href, '--accounts-file', loadAccounts, '--connections', '4', '--rate-per-min', '1200',
      '--duration-s', '120', '--warmup-s', '0', '--live-orders-max', '30', '--reconnect', '--quiet',
      '--pairs-file', PAIRS_FILE, '--out-dir', `${SERVE_OUT}/browser-load`],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, RUST_BACKTRACE: '0' } },
  );
  // Wait until its traders are logged in and move the book (a kill before would stop it).
  const before = Number(await viewer.locator('#book').getAttribute('data-updates'));
  await viewer.waitForFunction(
    (n) => Number(document.getElementById('book')?.dataset.updates) >= n + 5,
    before,
    { timeout: 30_000 },
  );
  const conn = viewer.locator('#conn');
  const connects = Number(await conn.getAttribute('data-connects'));
  const snapshots = Number(await viewer.locator('#book').getAttribute('data-snapshots'));

  // SIGKILL: no close frame, the socket just drops; scripts/serve starts the gateway again.
  process.kill(servicePid('gateway'), 'SIGKILL');
  await viewer.locator('#conn[data-state=closed]').waitFor({ timeout: WAIT_MS });
  await viewer
    .locator(`#conn[data-state=open]:not([data-connects="${connects}"])`)
    .waitFor({ timeout: 60_000 });
  await viewer.waitForFunction(
    (n) => Number(document.getElementById('book')?.dataset.snapshots) > n,
    snapshots,
    { timeout: WAIT_MS },
  );
  await viewer.locator('#bids tr').first().waitFor({ timeout: WAIT_MS });
  // Logged in again on the new connection: a new order still works.
  await viewer.locator('#account-id', { hasText: `#${accounts[0].account_id}` }).waitFor();
  const price = await freeBidPrice();
  await place(viewer, { side: 'buy', price });
  await openOrderRow(viewer, price).waitFor({ timeout: WAIT_MS });
});

test('a book update lost on the way is a gap: the page subscribes again and rebuilds the book', async () => {
  // Between this page and the gateway, drop the third book update (the load moves the book).
  const page = await browser.newPage();
  let updates = 0;
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => server.send(m));
    server.onMessage((m) => {
      if (typeof m === 'string' && m.includes('"channel":"book"') && m.includes('"type":"update"')) {
        updates += 1;
        if (updates === 3) return;
      }
      ws.send(m);
    });
  });
  await page.goto(WEB_URL);
  const book = (key) => page.evaluate((k) => Number(document.getElementById('book')?.dataset[k]), key);
  await eventually(async () => assert.ok((await book('gaps')) >= 1, 'no gap seen yet'));
  await eventually(async () => assert.ok((await book('snapshots')) >= 2, 'no second snapshot'));
  const after = await book('updates');
  await eventually(async () => assert.ok((await book('updates')) > after, 'no update after the new snapshot'));
  assert.ok((await page.locator('#bids tr').count()) > 0);
  await page.close();
});

test('the view under load: a picture for the README, and a phone-sized layout', async () => {
  await viewer.locator('#trades tr').nth(4).waitFor({ timeout: 60_000 });
  await viewer.waitForFunction(() => document.getElementById('ops-cmds')?.textContent !== '—');
  await viewer.waitForTimeout(3_000); // a few more seconds of chart
  await viewer.screenshot({ path: SCREENSHOT });

  await viewer.setViewportSize({ width: 390, height: 844 });
  const overflow = await viewer.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone's screen`);
});

test('the page loaded nothing from anywhere but the gateway', () => {
  const origin = new URL(WEB_URL).origin;
  const wsOrigin = origin.replace(/^http/, 'ws');
  const foreign = requests.filter((u) => !u.startsWith(origin) && !u.startsWith(wsOrigin) && !u.startsWith('data:'));
  assert.deepEqual(foreign, []);
  assert.ok(requests.length > 3);
});
