'use strict';

// A pg.Pool whose connections are closed before their token expires. With
// pg_oauth.session_expiry the server ends a session when its token expires; a pool
// would hand out such a connection, or report the idle one's end as an 'error'. Each
// connection gets pg-pool's own maxLifetimeSeconds treatment (an idle one is closed at
// once, a busy one when it is released), timed from the token it logged in with.

const { connectionConfig } = require('./connection_settings.cjs');
const { issuedTo } = require('./token_source.cjs');

const poolClasses = new WeakMap();

function tokenPoolClass(pg) {
  const Base = pg && pg.Pool;
  if (typeof Base !== 'function' || typeof Base.prototype._afterConnect !== 'function') {
    // _afterConnect: where pg-pool starts a connection's maxLifetimeSeconds (pg 8.23 has it)
    throw new TypeError('pg-oauth-client: createPool(pg, ...) needs the pg module, of a '
      + 'version whose pool times each connection\'s lifetime, as pg 8.23 does');
  }
  let TokenPool = poolClasses.get(Base);
  if (!TokenPool) {
    TokenPool = class TokenPool extends Base {
      // pg-pool reads maxLifetimeSeconds here, once per new connection, synchronously
      _afterConnect(client, ...rest) {
        const record = issuedTo.get(client);
        const own = this.options.maxLifetimeSeconds;
        if (!record || record.retireAt == null) return super._afterConnect(client, ...rest);
        const left = Math.max((record.retireAt - Date.now()) / 1000, 0.001);
        this.options.maxLifetimeSeconds = own ? Math.min(own, left) : left;
        try {
          return super._afterConnect(client, ...rest);
        } finally {
          this.options.maxLifetimeSeconds = own;
        }
      }
    };
    poolClasses.set(Base, TokenPool);
  }
  return TokenPool;
}

/**
 * A pg.Pool (of the pg module you pass) logging in with the profile's tokens, TLS from
 * the profile, each connection closed before its token expires. config: pg.Pool's
 * options (what it sets wins over the profile); options: as tokenPassword().
 */
async function createPool(pg, profile = undefined, config = {}, options = {}) {
  const TokenPool = tokenPoolClass(pg);
  return new TokenPool(await connectionConfig(profile, config, options));
}

module.exports = { createPool };
