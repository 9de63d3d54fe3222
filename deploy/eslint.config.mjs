// Lint for the CDK app and its tests: ESLint's recommended rules and typescript-eslint's strict
// set (no type information: `tsc --noEmit` with strict settings does the type checking).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', 'cdk.out/'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  ...tseslint.configs.stylistic,
  {
    rules: {
      // Asserted non-null after a check the compiler cannot follow (array lookups).
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    // The checks' tests break templates on purpose, deleting resources by logical id.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-dynamic-delete': 'off' },
  },
);
