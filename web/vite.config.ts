// The web view's build: one page, everything bundled (no CDN), output in dist/ for the gateway
// to serve (GW_WEB_DIR). The pairs come from config/pairs.toml at build time: the public API has
// no method listing them, and the gateway reads the same file.
import { readFileSync } from 'node:fs';
import { defineConfig } from 'vite';

interface PairInfo {
  symbol: string;
  price_decimals: number;
  qty_decimals: number;
  tick_size: string;
  lot_size: string;
  min_qty: string;
}

function readPairs(path: string): PairInfo[] {
  const text = readFileSync(path, 'utf8');
  return text
    .split(/^\[\[pair\]\]\s*$/m)
    .slice(1)
    .map((block) => {
      const field = (name: string): string => {
        const m = new RegExp(`^${name}\\s*=\\s*"?([^"\\n]*)"?\\s*$`, 'm').exec(block);
        if (!m?.[1]) throw new Error(`${path}: a pair without ${name}`);
        return m[1];
      };
      return {
        symbol: field('symbol'),
        price_decimals: Number(field('price_decimals')),
        qty_decimals: Number(field('qty_decimals')),
        tick_size: field('tick_size'),
        lot_size: field('lot_size'),
        min_qty: field('min_qty'),
      };
    });
}

const gateway = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: './',
  define: { __PAIRS__: JSON.stringify(readPairs(process.env.PAIRS_FILE ?? '../config/pairs.toml')) },
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 400 },
  // `npm run dev`: the page from Vite, /ws and /ops from a gateway (scripts/serve's by default).
  server: {
    proxy: {
      '/ws': { target: gateway.replace(/^http/, 'ws'), ws: true },
      '/ops': gateway,
      '/metrics': gateway,
    },
  },
});
