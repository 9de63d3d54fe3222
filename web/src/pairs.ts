/** A traded pair as config/pairs.toml defines it (the fields the page needs). */
export interface PairInfo {
  symbol: string;
  price_decimals: number;
  qty_decimals: number;
  tick_size: string;
  lot_size: string;
  min_qty: string;
}

export const PAIRS: PairInfo[] = __PAIRS__;
