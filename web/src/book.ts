// The L2 book of one pair as docs/API.md's `book` channel builds it: a snapshot, then updates
// chained by `prev_seq`. A `prev_seq` that is not the last `seq` seen is a gap: the caller
// subscribes again for a fresh snapshot.

export type Level = [price: string, qty: string];

export interface BookMessage {
  type: 'snapshot' | 'update';
  seq: number;
  prev_seq?: number;
  bids: Level[];
  asks: Level[];
}

export class Book {
  readonly bids = new Map<string, string>();
  readonly asks = new Map<string, string>();
  /** The last book message's `seq` on this connection; null before a snapshot or after a gap. */
  lastSeq: number | null = null;
  snapshots = 0;
  updates = 0;
  gaps = 0;

  reset(): void {
    this.bids.clear();
    this.asks.clear();
    this.lastSeq = null;
  }

  /** Applies one message; false when it shows a gap (the book is then reset, to be rebuilt). */
  apply(msg: BookMessage): boolean {
    if (msg.type === 'snapshot') {
      this.reset();
      setLevels(this.bids, msg.bids);
      setLevels(this.asks, msg.asks);
      this.lastSeq = msg.seq;
      this.snapshots += 1;
      return true;
    }
    if (this.lastSeq === null || msg.prev_seq !== this.lastSeq) {
      this.gaps += 1;
      this.reset();
      return false;
    }
    setLevels(this.bids, msg.bids);
    setLevels(this.asks, msg.asks);
    this.lastSeq = msg.seq;
    this.updates += 1;
    return true;
  }

  /** Best first: bids high to low, asks low to high. */
  sorted(side: 'bids' | 'asks', depth: number): Level[] {
    const levels = [...this[side].entries()];
    levels.sort((a, b) => (side === 'bids' ? Number(b[0]) - Number(a[0]) : Number(a[0]) - Number(b[0])));
    return levels.slice(0, depth);
  }
}

function setLevels(side: Map<string, string>, levels: Level[]): void {
  for (const [price, qty] of levels) {
    // Exactly "0" removes a level (docs/API.md); every other quantity has the pair's decimals.
    if (qty === '0') side.delete(price);
    else side.set(price, qty);
  }
}
