// The traded pairs, read from the same config/pairs.toml the services load (the image copies it
// to /etc/trading/pairs.toml). A pair's position is its Kafka partition; the engine services are
// generated from this list, so the two cannot disagree as long as the image is built from the
// same commit as the synthesized template.
import { readFileSync } from 'node:fs';
import { parse } from 'smol-toml';

export interface Pair {
  readonly symbol: string;
  /** Position in the file: the pair's partition on `orders` and `events`. */
  readonly index: number;
}

export function parsePairs(toml: string, source = 'pairs.toml'): Pair[] {
  const doc = parse(toml);
  const list = doc.pair;
  if (!Array.isArray(list) || list.length === 0) {
    throw new Error(`${source}: no [[pair]] entries`);
  }
  const seen = new Set<string>();
  return list.map((entry, index) => {
    const symbol = (entry as Record<string, unknown>).symbol;
    if (typeof symbol !== 'string' || !/^[A-Z0-9]+-[A-Z0-9]+$/.test(symbol)) {
      throw new Error(`${source}: pair ${index} has no valid symbol (BASE-QUOTE): ${String(symbol)}`);
    }
    if (seen.has(symbol)) {
      throw new Error(`${source}: pair ${symbol} is listed twice`);
    }
    seen.add(symbol);
    return { symbol, index };
  });
}

export function loadPairs(path: string): Pair[] {
  return parsePairs(readFileSync(path, 'utf8'), path);
}
