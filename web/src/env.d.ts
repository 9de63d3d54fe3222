/** The traded pairs, read from config/pairs.toml when the page was built (vite.config.ts). */
declare const __PAIRS__: import('./pairs').PairInfo[];
