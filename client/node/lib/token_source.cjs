'use strict';

// Tokens for node-postgres, kept in the process: `pg-oauth token -o json` runs only when
// the process holds no token with enough life left (once per token lifetime, not once
// per connection), and connections opened meanwhile wait for that one run.

const { TokenError } = require('./errors.cjs');
const { describe, profileArgs, runPgOAuth } = require('./pg_oauth_command.cjs');

const DEFAULT_MIN_VALID = 300;   // seconds, as pg-oauth's own min_valid
const RETIRE_BEFORE = 30;        // seconds before expiry a pooled connection is closed

// The pg.Client a token was handed to -> that token's record: the pool (token_pool.cjs)
// closes the connection before its token expires.
const issuedTo = new WeakMap();

// one source per profile and settings, shared by every pool and client of the process
const sources = new Map();

/** The claims of a JWT, unverified (the server verifies); {} if it is not one. */
function claimsOf(token) {
  const payload = token.split('.')[1];
  if (!payload) return {};
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    return claims && typeof claims === 'object' ? claims : {};
  } catch {
    return {};
  }
}

/**
 * A token and when to stop using it: handed to new connections until renewAt (min_valid
 * before expiry, or half the token's lifetime when that is shorter, as pg-oauth's cache
 * does); a pooled connection is closed at retireAt, well before the server would end it.
 */
function tokenRecord(token, expiresAtSeconds, minValid, now) {
  if (typeof expiresAtSeconds !== 'number') {
    // no expiry known: nothing to keep, ask pg-oauth (and its cache) every time
    return { token, expiresAt: null, renewAt: now, retireAt: null };
  }
  const expiresAt = expiresAtSeconds * 1000;
  const { iat } = claimsOf(token);
  const issuedAt = typeof iat === 'number' && iat * 1000 <= now ? iat * 1000 : now;
  const lifetime = Math.max(expiresAt - issuedAt, 0);
  return {
    token,
    expiresAt,
    renewAt: expiresAt - Math.min(minValid * 1000, lifetime / 2),
    retireAt: expiresAt - Math.min(RETIRE_BEFORE * 1000, lifetime / 4),
  };
}

class TokenSource {
  constructor(profile, options) {
    this.profile = profile;
    this.options = options;
    this.minValid = options.minValid ?? DEFAULT_MIN_VALID;
    if (typeof this.minValid !== 'number' || !(this.minValid >= 0)) {
      throw new TypeError('pg-oauth-client: options.minValid must be a number of seconds');
    }
    this.current = null;
    this.pending = null;
  }

  /** A token record with enough life left: the one held, or one fetch shared by all. */
  get() {
    if (this.current && Date.now() < this.current.renewAt) return Promise.resolve(this.current);
    if (!this.pending) {
      this.pending = this.fetch().then((record) => {
        this.current = record;
        return record;
      }).finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  async fetch() {
    const args = ['token', ...profileArgs(this.profile), '--output', 'json',
                  '--min-valid', String(this.minValid)];
    const stdout = await runPgOAuth(args, { profile: this.profile, options: this.options });
    let answer;
    try {
      answer = JSON.parse(stdout);
    } catch {
      // not the output itself: it may hold the token
      throw new TokenError(`pg-oauth-client: pg-oauth token printed no JSON for ${
        describe(this.profile)}; is it pg_oauth's pg-oauth (pip install ./client)?`,
                           { profile: this.profile });
    }
    if (!answer || typeof answer.access_token !== 'string' || answer.access_token === '') {
      throw new TokenError(`pg-oauth-client: pg-oauth token gave no access_token for ${
        describe(this.profile)}`, { profile: this.profile });
    }
    return tokenRecord(answer.access_token, answer.expires_at ?? null, this.minValid,
                       Date.now());
  }
}

function sourceFor(profile, options) {
  const key = JSON.stringify([profile ?? null, options.command ?? null,
                              options.minValid ?? null, options.timeout ?? null]);
  let source = sources.get(key);
  if (!source) {
    source = new TokenSource(profile ?? null, options);
    sources.set(key, source);
  }
  return source;
}

/**
 * A `password` for pg.Client / pg.Pool: an async function giving each new connection a
 * token of the profile (undefined: $PG_OAUTH_PROFILE, else pg-oauth's default).
 *
 * options: minValid (seconds a token handed to a new connection stays valid, default
 * 300, at most half its lifetime), command (how to run pg-oauth, default ['pg-oauth']),
 * timeout (ms for one pg-oauth run, default 60000). pg-oauth never prompts here: sign in
 * to a device_code profile beforehand with `pg-oauth login`.
 */
function tokenPassword(profile = undefined, options = {}) {
  const source = sourceFor(profile, options);
  // a function, not an arrow: node-postgres calls it as a method of the connecting client
  return async function pgOAuthPassword() {
    const record = await source.get();
    if (this !== null && typeof this === 'object') issuedTo.set(this, record);
    return record.token;
  };
}

module.exports = { issuedTo, tokenPassword, tokenRecord };
