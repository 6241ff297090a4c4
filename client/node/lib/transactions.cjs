'use strict';

// Behind a pooler (PgBouncer in transaction mode), an application logs in as the
// pooler's gateway role and starts each transaction with oauth.authenticate($1), the
// end user's token as a bind parameter; COMMIT or ROLLBACK ends that identity.
// docs/clients.md, "Behind a pooler: one token per transaction".

const AUTHENTICATE = 'SELECT oauth.authenticate($1) AS role';
const AUTHENTICATE_AS = 'SELECT oauth.authenticate($1, $2) AS role';

// A connection whose ROLLBACK failed may still be in its transaction, as the end
// user: withToken() destroys it rather than give it back to the pool.
const unsafe = new WeakSet();

/**
 * One transaction as the end user on a connected client (a pg.Client, or a client
 * checked out of a pool): BEGIN, oauth.authenticate($1), fn(client, role), COMMIT;
 * ROLLBACK if anything throws. Resolves to what fn resolves to.
 */
async function authenticatedTransaction(client, token, fn, { role = null } = {}) {
  if (typeof token !== 'string' || token === '') {
    throw new TypeError('authenticatedTransaction: no end-user token for this transaction');
  }
  await client.query('BEGIN');
  let result;
  try {
    // a bind parameter: the token never appears in the statement (or the server log)
    const { rows } = role == null
      ? await client.query(AUTHENTICATE, [token])
      : await client.query(AUTHENTICATE_AS, [token, role]);
    result = await fn(client, rows[0].role);
  } catch (error) {
    try {
      await client.query('ROLLBACK');
    } catch {
      unsafe.add(client);
    }
    throw error;
  }
  // a COMMIT that fails has ended the transaction too
  await client.query('COMMIT');
  return result;
}

/**
 * authenticatedTransaction() on a client of pool (a pg.Pool), given back afterwards.
 */
async function withToken(pool, token, fn, options = {}) {
  if (typeof token !== 'string' || token === '') {
    // before a connection is taken
    throw new TypeError('withToken: no end-user token for this transaction');
  }
  const client = await pool.connect();
  let destroy;
  try {
    return await authenticatedTransaction(client, token, fn, options);
  } catch (error) {
    if (unsafe.has(client)) destroy = error;
    throw error;
  } finally {
    client.release(destroy);
  }
}

module.exports = { authenticatedTransaction, withToken };
