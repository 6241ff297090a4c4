'use strict';

// pg-oauth-client: node-postgres and pg_oauth. docs/clients.md, "node-postgres".

const { connectionConfig, tlsOptions } = require('./lib/connection_settings.cjs');
const { PgOAuthError, SettingsError, TokenError } = require('./lib/errors.cjs');
const { tokenPassword } = require('./lib/token_source.cjs');
const { createPool } = require('./lib/token_pool.cjs');
const { authenticatedTransaction, withToken } = require('./lib/transactions.cjs');

module.exports = {
  PgOAuthError,
  SettingsError,
  TokenError,
  authenticatedTransaction,
  connectionConfig,
  createPool,
  tlsOptions,
  tokenPassword,
  withToken,
};
