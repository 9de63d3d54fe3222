// The live trading view: one connection to the gateway's public WebSocket API (docs/API.md), the
// market data of the chosen pair, and, after a login with an API key, the account's orders,
// fills and balances. Everything shown comes from that socket, except the operations strip,
// read from the gateway's /ops/metrics.
import './style.css';
import { ColorType, LineSeries, createChart, type UTCTimestamp } from 'lightweight-charts';

import { Api, ApiError, type Push } from './api';
import { Book, type BookMessage, type Level } from './book';
import { HMAC, KEY_KINDS, loginParams, type Credentials } from './keys';
import { reading, strip, type OpsSource, type Reading } from './ops';
import { PAIRS } from './pairs';

const BOOK_DEPTH = 15;
const TRADES_SHOWN = 30;
const FILLS_SHOWN = 50;
const ERRORS_SHOWN = 50;
const OPS_EVERY_MS = 2_000;

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from index.html`);
  return el as T;
}

function el(tag: string, text?: string, cls?: string): HTMLElement {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function row(cells: (string | HTMLElement)[], cls?: string): HTMLTableRowElement {
  const tr = document.createElement('tr');
  if (cls) tr.className = cls;
  for (const c of cells) {
    const td = document.createElement('td');
    if (typeof c === 'string') td.textContent = c;
    else td.append(c);
    tr.append(td);
  }
  return tr;
}

const time = (tsMs: number) => new Date(tsMs).toLocaleTimeString([], { hour12: false });

// --- errors: every one with the API's code and message ------------------------------------------
function showError(code: string, message: string, context?: string): void {
  const list = $('errors');
  const li = el('li');
  li.dataset.code = code;
  li.append(el('time', time(Date.now())), el('code', code), el('span', message));
  if (context) li.append(el('small', context));
  list.prepend(li);
  while (list.children.length > ERRORS_SHOWN) list.lastElementChild?.remove();
}

function reportError(e: unknown, context: string): void {
  if (e instanceof ApiError) showError(e.code, e.message, context);
  else showError('page', e instanceof Error ? e.message : String(e), context);
}

// --- state -------------------------------------------------------------------------------------
let pair = PAIRS[0]?.symbol ?? 'BTC-EUR';
const book = new Book();
let credentials: Credentials | null = null;
let accountId: number | null = null;

interface Order {
  pair: string;
  order_id: number;
  client_order_id?: string;
  side: string;
  type: string;
  price?: string;
  qty: string;
  filled_qty: string;
  remaining_qty: string;
}
interface Fill {
  pair: string;
  trade_id: number;
  side: string;
  price: string;
  qty: string;
  fee?: string;
  fee_asset?: string;
  ts_ms: number;
}
interface Balance {
  asset: string;
  available: string;
  reserved: string;
}
let openOrders: Order[] = [];
let fills: Fill[] = [];
const balances = new Map<string, Balance & { offset: number }>();

// --- the chart -------------------------------------------------------------------------------
const chart = createChart($('chart'), {
  autoSize: true,
  layout: { background: { type: ColorType.Solid, color: 'transparent' }, textColor: '#9aa4b2' },
  grid: { vertLines: { color: '#1f2630' }, horzLines: { color: '#1f2630' } },
  timeScale: { timeVisible: true, secondsVisible: true },
  rightPriceScale: { borderColor: '#2a323d' },
});
const priceSeries = chart.addSeries(LineSeries, { color: '#4aa3ff', lineWidth: 2 });
let lastChartTime = 0;

// --- the connection --------------------------------------------------------------------------
const wsUrl = new URL('ws', location.href);
wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
const api = new Api(wsUrl.href, {
  onOpen() {
    setConn('open', api.connects > 1 ? `connected (reconnected ×${api.connects - 1})` : 'connected');
    subscribeMarket(pair);
    if (credentials) void login(credentials);
  },
  onClose(code, reason) {
    setConn('closed', `disconnected (${code}${reason ? ` ${reason}` : ''}), reconnecting…`);
    book.reset();
    renderBook();
  },
  onPush: handlePush,
  onOrphanError: (e) => showError(e.code, e.message, 'answer without id'),
});

function setConn(state: string, text: string): void {
  const c = $('conn');
  c.dataset.state = state;
  c.dataset.connects = String(api.connects);
  c.textContent = text;
}

function subscribeMarket(p: string): void {
  for (const channel of ['book', 'trades', 'ticker']) {
    api.request('subscribe', { channel, pair: p }).catch((e: unknown) => reportError(e, `subscribe ${channel} ${p}`));
  }
}

function unsubscribeMarket(p: string): void {
  for (const channel of ['book', 'trades', 'ticker']) {
    api.request('unsubscribe', { channel, pair: p }).catch((e: unknown) => reportError(e, `unsubscribe ${channel} ${p}`));
  }
}

function handlePush(msg: Push): void {
  switch (msg.channel) {
    case 'book':
      if (msg.pair !== pair) return;
      if (!book.apply(msg as unknown as BookMessage)) {
        // A gap (docs/API.md): subscribing again sends a fresh snapshot.
        api.request('subscribe', { channel: 'book', pair }).catch((e: unknown) => reportError(e, 'resubscribe book'));
      }
      renderBook();
      return;
    case 'trades':
      if (msg.pair === pair) addTrades(msg.trades as { price: string; qty: string; taker_side: string; ts_ms: number }[]);
      return;
    case 'ticker':
      if (msg.pair !== pair) return;
      $('best-bid').textContent = level(msg.bid as Level | undefined);
      $('best-ask').textContent = level(msg.ask as Level | undefined);
      return;
    case 'orders':
      onOrderEvent(msg);
      return;
    case 'balances':
      applyBalance(msg as unknown as Balance & { accounts_offset: number });
      return;
    case 'status':
      showError(String(msg.status), String(msg.message), 'the gateway is closing the connection');
      return;
    default:
      return;
  }
}

const level = (l: Level | undefined) => (l ? `${l[0]} × ${l[1]}` : '—');

// --- market data -------------------------------------------------------------------------------
function renderBook(): void {
  const asks = book.sorted('asks', BOOK_DEPTH);
  const bids = book.sorted('bids', BOOK_DEPTH);
  const max = Math.max(1e-12, ...asks.map((l) => Number(l[1])), ...bids.map((l) => Number(l[1])));
  const ladder = (levels: Level[], side: string) =>
    levels.map(([price, qty]) => {
      const tr = row([price, qty], side);
      tr.dataset.price = price;
      tr.style.setProperty('--depth', `${Math.round((Number(qty) / max) * 100)}%`);
      return tr;
    });
  $('asks').replaceChildren(...ladder([...asks].reverse(), 'sell'));
  $('bids').replaceChildren(...ladder(bids, 'buy'));
  const bestAsk = asks[0];
  const bestBid = bids[0];
  $('spread').textContent =
    bestAsk && bestBid ? `spread ${(Number(bestAsk[0]) - Number(bestBid[0])).toFixed(decimals(bestAsk[0]))}` : '—';
  const b = $('book');
  b.dataset.seq = String(book.lastSeq ?? '');
  b.dataset.snapshots = String(book.snapshots);
  b.dataset.updates = String(book.updates);
  b.dataset.gaps = String(book.gaps);
  $('book-seq').textContent = book.lastSeq === null ? 'waiting for a snapshot' : `seq ${book.lastSeq}`;
}

const decimals = (s: string) => s.split('.')[1]?.length ?? 0;

function addTrades(trades: { price: string; qty: string; taker_side: string; ts_ms: number }[]): void {
  const list = $('trades');
  for (const t of trades) {
    list.prepend(row([time(t.ts_ms), t.price, t.qty], t.taker_side === 'buy' ? 'buy' : 'sell'));
    const s = Math.floor(t.ts_ms / 1000);
    if (s >= lastChartTime) {
      priceSeries.update({ time: s as UTCTimestamp, value: Number(t.price) });
      lastChartTime = s;
    }
  }
  while (list.children.length > TRADES_SHOWN) list.lastElementChild?.remove();
}

function choosePair(p: string): void {
  if (p === pair) return;
  if (api.open) unsubscribeMarket(pair);
  pair = p;
  book.reset();
  renderBook();
  $('trades').replaceChildren();
  $('best-bid').textContent = '—';
  $('best-ask').textContent = '—';
  priceSeries.setData([]);
  lastChartTime = 0;
  if (api.open) subscribeMarket(pair);
}

// --- the account -------------------------------------------------------------------------------
async function login(c: Credentials): Promise<void> {
  try {
    if (!crypto.subtle) throw new Error('signing needs a secure context: open the page over https or on localhost');
    const r = await api.request<{ account_id: number }>('login', await loginParams(c));
    credentials = c;
    accountId = r.account_id;
    showAccount();
    await refreshAccount();
  } catch (e) {
    reportError(e, 'login');
    if (!accountId) credentials = null;
  }
}

function showAccount(): void {
  const loggedIn = accountId !== null;
  $('login').hidden = loggedIn;
  $('logout').hidden = !loggedIn;
  $('order').hidden = !loggedIn;
  $('private').hidden = !loggedIn;
  $('account-id').textContent = loggedIn ? `#${accountId}` : '';
}

async function refreshAccount(): Promise<void> {
  try {
    await api.request('subscribe', { channel: 'balances' });
    $('balances-note').textContent = '';
  } catch (e) {
    if (e instanceof ApiError && e.code === 'accounts_disabled') {
      $('balances-note').textContent = 'No balances: the gateway runs without the account stage (accounts_disabled).';
    } else reportError(e, 'subscribe balances');
  }
  await Promise.all([refreshOrders(), refreshFills(), refreshBalances()]);
}

let ordersTimer: ReturnType<typeof setTimeout> | null = null;
/** Orders pushes arrive in bursts; one query after a burst gives the state (docs/API.md). */
function scheduleOrdersRefresh(): void {
  if (ordersTimer) return;
  ordersTimer = setTimeout(() => {
    ordersTimer = null;
    void refreshOrders();
  }, 150);
}

async function refreshOrders(): Promise<void> {
  try {
    const r = await api.request<{ orders: Order[] }>('open_orders');
    openOrders = r.orders;
    renderOrders();
  } catch (e) {
    reportError(e, 'open_orders');
  }
}

async function refreshFills(): Promise<void> {
  try {
    const r = await api.request<{ trades: (Fill & { liquidity: string })[] }>('my_trades', { limit: FILLS_SHOWN });
    const known = new Set(fills.map((f) => `${f.pair}/${f.trade_id}`));
    fills = [...fills, ...r.trades.filter((f) => !known.has(`${f.pair}/${f.trade_id}`))];
    fills.sort((a, b) => b.ts_ms - a.ts_ms);
    renderFills();
  } catch (e) {
    reportError(e, 'my_trades');
  }
}

async function refreshBalances(): Promise<void> {
  try {
    const r = await api.request<{ balances: Balance[]; as_of_offset: number }>('balances');
    for (const b of r.balances) {
      const mine = balances.get(b.asset);
      if (!mine || mine.offset <= r.as_of_offset) balances.set(b.asset, { ...b, offset: r.as_of_offset });
    }
    renderBalances();
  } catch (e) {
    if (!(e instanceof ApiError && e.code === 'accounts_disabled')) reportError(e, 'balances');
  }
}

function applyBalance(b: Balance & { accounts_offset: number }): void {
  const mine = balances.get(b.asset);
  if (mine && mine.offset >= b.accounts_offset) return;
  balances.set(b.asset, { asset: b.asset, available: b.available, reserved: b.reserved, offset: b.accounts_offset });
  renderBalances();
}

function onOrderEvent(msg: Push): void {
  const type = String(msg.type);
  if (type === 'rejected') {
    showError(String(msg.code), String(msg.message), `${String(msg.command ?? 'command')} rejected, order ${String(msg.order_id ?? '?')}`);
  }
  if (type === 'fill') {
    const f = msg as unknown as Fill;
    if (!fills.some((x) => x.pair === f.pair && x.trade_id === f.trade_id)) {
      fills.unshift({ ...f, side: String(msg.side) });
      renderFills();
    }
  }
  if (msg.req_id !== undefined) $('order-status').textContent = `${type}: order ${String(msg.order_id ?? '')}`;
  scheduleOrdersRefresh();
}

function renderOrders(): void {
  $('open-orders').replaceChildren(
    ...openOrders.map((o) => {
      const price = el('input') as HTMLInputElement;
      price.value = o.price ?? '';
      price.size = 8;
      price.setAttribute('aria-label', 'new price');
      const qty = el('input') as HTMLInputElement;
      qty.value = o.qty;
      qty.size = 8;
      qty.setAttribute('aria-label', 'new total qty');
      const amend = el('button', 'amend', 'small');
      amend.dataset.action = 'amend';
      amend.onclick = () => {
        const params: Record<string, string | number> = { pair: o.pair, order_id: o.order_id };
        if (price.value !== (o.price ?? '')) params.price = price.value;
        if (qty.value !== o.qty) params.qty = qty.value;
        void command('amend', params);
      };
      const cancel = el('button', 'cancel', 'small');
      cancel.dataset.action = 'cancel';
      cancel.onclick = () => void command('cancel', { pair: o.pair, order_id: o.order_id });
      const actions = el('span', undefined, 'actions');
      actions.append(amend, cancel);
      const tr = row([o.pair, o.side, price, qty, o.filled_qty, actions], o.side === 'buy' ? 'buy' : 'sell');
      tr.dataset.orderId = String(o.order_id);
      tr.dataset.price = o.price ?? '';
      return tr;
    }),
  );
}

function renderFills(): void {
  fills = fills.slice(0, FILLS_SHOWN);
  $('fills').replaceChildren(
    ...fills.map((f) =>
      row([time(f.ts_ms), f.pair, f.side, f.price, f.qty, f.fee ? `${f.fee} ${f.fee_asset ?? ''}` : ''], f.side === 'buy' ? 'buy' : 'sell'),
    ),
  );
}

function renderBalances(): void {
  const rows = [...balances.values()].sort((a, b) => a.asset.localeCompare(b.asset));
  $('balances').replaceChildren(...rows.map((b) => row([b.asset, b.available, b.reserved])));
}

async function command(method: string, params: Record<string, unknown>): Promise<void> {
  try {
    const r = await api.request<{ status: string; order_id?: number }>(method, params);
    $('order-status').textContent = `${method}: ${r.status}${r.order_id ? `, order ${r.order_id}` : ''}`;
  } catch (e) {
    reportError(e, method);
  }
}

// --- forms -------------------------------------------------------------------------------------
function setUpForms(): void {
  const kindSelect = $<HTMLSelectElement>('key-kind');
  for (const k of KEY_KINDS) kindSelect.append(new Option(k.label, k.id));
  const kindOf = () => KEY_KINDS.find((k) => k.id === kindSelect.value) ?? HMAC;
  kindSelect.onchange = () => ($('secret-label').textContent = kindOf().secretLabel);

  $<HTMLFormElement>('login').onsubmit = (ev) => {
    ev.preventDefault();
    const keyId = $<HTMLInputElement>('key-id').value.trim();
    const secret = $<HTMLInputElement>('key-secret').value;
    void login({ kind: kindOf(), keyId, secret });
  };
  $('logout').onclick = () => location.reload();

  const form = $<HTMLFormElement>('order');
  const typeSelect = form.elements.namedItem('type') as HTMLSelectElement;
  typeSelect.onchange = () => {
    const market = typeSelect.value === 'market';
    for (const e of form.querySelectorAll<HTMLElement>('.market-only')) e.hidden = !market;
  };
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const field = (name: string) => String(data.get(name) ?? '').trim();
    const params: Record<string, unknown> = { pair, side: field('side'), type: field('type'), qty: field('qty') };
    if (field('type') === 'limit') params.price = field('price');
    else if (field('quote_qty')) params.quote_qty = field('quote_qty');
    if (field('tif')) params.tif = field('tif');
    if (data.get('post_only')) params.post_only = true;
    if (field('client_order_id')) params.client_order_id = field('client_order_id');
    void command('place', params);
  };
  $('cancel-all').onclick = () => void command('cancel_all', { pair });

  const pairSelect = $<HTMLSelectElement>('pair');
  for (const p of PAIRS) pairSelect.append(new Option(p.symbol, p.symbol));
  pairSelect.value = pair;
  pairSelect.onchange = () => choosePair(pairSelect.value);
}

// --- the operations strip ----------------------------------------------------------------------
let lastReading: Reading | null = null;

async function pollOps(): Promise<void> {
  try {
    const res = await fetch('ops/metrics', { cache: 'no-store' });
    if (!res.ok) throw new Error(`/ops/metrics answered ${res.status}`);
    const body = (await res.json()) as { ts_ms: number; sources: OpsSource[] };
    const cur = reading(body.ts_ms, body.sources);
    $('ops-note').textContent = cur.errors.length ? `not read: ${cur.errors.join('; ')}` : '';
    if (lastReading) {
      const s = strip(lastReading, cur);
      $('ops-cmds').textContent = s.commandsPerS.toFixed(0);
      $('ops-shed').textContent = `${s.shedPerS.toFixed(0)}/s (${(s.shedShare * 100).toFixed(1)}%)`;
      const lag = [
        s.engineLag === null ? null : `engine ${s.engineLag}`,
        s.accountsLag === null ? null : `accounts ${s.accountsLag}`,
      ].filter((x) => x !== null);
      $('ops-lag').textContent = lag.length ? `${lag.join(' · ')} records` : 'not reported';
      const ms = (v: number | null) => (v === null ? '—' : `${v.toFixed(1)} ms`);
      $('ops-verdict').textContent = `mean ${ms(s.verdictMeanMs)} · p99 ${ms(s.verdictP99Ms)}`;
    }
    lastReading = cur;
  } catch (e) {
    $('ops-note').textContent = `operations figures unavailable: ${e instanceof Error ? e.message : String(e)}`;
  }
}

setUpForms();
renderBook();
api.connect();
void pollOps();
setInterval(() => void pollOps(), OPS_EVERY_MS);
