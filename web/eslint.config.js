// Lint for the web view and its browser tests: ESLint's recommended rules and typescript-eslint's
// strict set, as in deploy/ (`tsc --noEmit` with strict settings does the type checking).
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  ...tseslint.configs.stylistic,
  { files: ['src/**/*.ts'], languageOptions: { globals: globals.browser } },
  { files: ['*.config.*'], languageOptions: { globals: globals.node } },
  // Tests run in node; the functions they hand to page.evaluate run in the page.
  { files: ['test/**/*.mjs'], languageOptions: { globals: { ...globals.node, ...globals.browser } } },
);
