'use strict';

// One error class per reason. Messages carry pg-oauth's own one-line explanation and
// never a token.

class PgOAuthError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** pg-oauth could not give a token (the IdP refused, the profile is wrong, no pg-oauth). */
class TokenError extends PgOAuthError {
  constructor(message, { profile = null, exitStatus = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.profile = profile;
    this.exitStatus = exitStatus;
  }
}

/** The connection settings cannot be used as they are (sslmode, sslrootcert). */
class SettingsError extends PgOAuthError {}

module.exports = { PgOAuthError, SettingsError, TokenError };
