// ESLint (flat config): `npm run lint`, run by scripts/test.sh.
// TypeScript files get typescript-eslint's recommended rules plus the
// type-aware rules that catch real bugs in this code base (a forgotten
// promise is an unhandled rejection that ends the VMM); plain JS files
// (build scripts, jest configs, bench, fuzz harness) get ESLint's recommended
// rules with Node's globals. Formatting is Prettier's job, not ESLint's.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: ['**/node_modules/', '**/dist/', '**/build/', '.nx/', 'coverage/', '**/fuzz/corpus/', '**/fuzz/regressions/'],
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'commonjs', globals: { ...globals.node } },
  },
  { files: ['**/*.mjs'], languageOptions: { sourceType: 'module' } },
  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommended],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
      globals: { ...globals.node },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/no-for-in-array': 'error',
      '@typescript-eslint/no-implied-eval': 'error',
      // TaskAborted (libs/scsi) is a sentinel thrown without a stack on purpose.
      '@typescript-eslint/only-throw-error': ['error', { allow: [{ from: 'file', name: 'TaskAborted' }] }],
      // A switch with a default is complete (e.g. over an errno code: string | undefined).
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // `import x = require('...')` is TypeScript's typed CommonJS import.
      '@typescript-eslint/no-require-imports': ['error', { allowAsImport: true }],
      // Unused parameters are how a method shows the interface it implements.
      '@typescript-eslint/no-unused-vars': ['error', { args: 'none', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    rules: { 'no-unused-vars': ['error', { args: 'none', caughtErrors: 'none' }] },
  },
  {
    files: ['**/test/**/*.ts', '**/e2e-linux/**/*.ts', '**/*.test.ts'],
    languageOptions: { globals: { ...globals.jest } },
    // Tests poke at private state and build hostile inputs.
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // Generated files turn ESLint off wholesale.
    files: ['**/src/generated/**'],
    linterOptions: { reportUnusedDisableDirectives: 'off' },
  },
  {
    // Regexes that match column-aligned output spell out the spaces.
    rules: { 'no-regex-spaces': 'off' },
  },
);
