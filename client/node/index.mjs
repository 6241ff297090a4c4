// The ES module face of index.cjs: one copy of the package's state (the tokens held)
// whether it is imported or required.
import pgOAuth from './index.cjs';

export const {
  PgOAuthError,
  SettingsError,
  TokenError,
  authenticatedTransaction,
  connectionConfig,
  createPool,
  tlsOptions,
  tokenPassword,
  withToken,
} = pgOAuth;
export default pgOAuth;
