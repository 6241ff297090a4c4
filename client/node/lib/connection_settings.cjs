'use strict';

// Where to connect and how to trust the server, as libpq would have it. node-postgres
// reads PGHOST, PGPORT, PGDATABASE, PGUSER, but not PGSSLROOTCERT, and without PGSSLMODE
// it sends the password (here a bearer token) over plain TCP. So: the settings are what
// `pg-oauth exec` gives a program (the profile's host/port/dbname/user/sslmode/
// sslrootcert under your own PG* variables, sslmode verify-full unless set), and TLS is
// built from sslmode and sslrootcert the way libpq uses them.

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');

const { SettingsError } = require('./errors.cjs');
const { profileArgs, runPgOAuth } = require('./pg_oauth_command.cjs');
const { tokenPassword } = require('./token_source.cjs');

const KEYS = ['PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER', 'PGSSLMODE', 'PGSSLROOTCERT'];
const MARK = 'pg-oauth-client settings:';
// run by `pg-oauth exec` in the environment it makes (PGPASSWORD is left out)
const DUMP = `process.stdout.write(${JSON.stringify(`\n${MARK}`)} + JSON.stringify(`
  + `Object.fromEntries(${JSON.stringify(KEYS)}.filter((k) => k in process.env)`
  + '.map((k) => [k, process.env[k]]))) + "\\n")';

/** The libpq variables `pg-oauth exec --profile PROFILE` gives a program. */
async function profileSettings(profile, options = {}) {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // nothing but DUMP may write to the child's standard output
  const args = ['exec', ...profileArgs(profile), '--', process.execPath, '-e', DUMP];
  const stdout = await runPgOAuth(args, { profile, options, env });
  const line = stdout.split('\n').reverse().find((l) => l.startsWith(MARK));
  if (!line) throw new SettingsError('pg-oauth-client: pg-oauth exec gave no settings');
  return JSON.parse(line.slice(MARK.length));
}

function readRootCert(file) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new SettingsError(`pg-oauth-client: cannot read the root certificate ${file} `
      + `(sslrootcert): ${error.code || error.message}; set sslrootcert in the profile `
      + 'or PGSSLROOTCERT to the CA file that signed the server\'s certificate', { cause: error });
  }
}

/**
 * node-postgres's `ssl` for sslmode and sslrootcert, as libpq would connect:
 *   disable          no TLS (the token crosses the network in clear)
 *   require          TLS; the certificate is checked against sslrootcert only if given
 *   verify-ca        TLS, a certificate signed by sslrootcert (the name is not checked)
 *   verify-full      TLS, signed by sslrootcert and issued for host (the default)
 * sslrootcert: a PEM file; "system" for Node's trusted CAs; unset: ~/.postgresql/root.crt
 * if it exists, else Node's trusted CAs (with NODE_EXTRA_CA_CERTS). allow and prefer
 * fall back to plain TCP, which node-postgres cannot do: an error, not a guess.
 * A Unix-socket host has no TLS (libpq ignores sslmode there too).
 */
function tlsOptions({ host, sslmode, sslrootcert } = {}) {
  const mode = sslmode || 'verify-full';
  const server = host || 'localhost';
  if (server.startsWith('/')) return false;
  if (mode === 'disable') return false;
  if (mode === 'allow' || mode === 'prefer') {
    throw new SettingsError(`pg-oauth-client: sslmode ${mode} would send the token without `
      + 'TLS to a server that does not offer it; use verify-full (or disable, knowingly)');
  }
  if (!['require', 'verify-ca', 'verify-full'].includes(mode)) {
    throw new SettingsError(`pg-oauth-client: unknown sslmode ${mode}; use verify-full, `
      + 'verify-ca, require or disable');
  }
  let rootcert = sslrootcert || null;
  if (rootcert === 'system' && mode !== 'verify-full') {
    throw new SettingsError(`pg-oauth-client: sslrootcert=system needs sslmode verify-full, `
      + `not ${mode}`);
  }
  if (!rootcert) {
    const home = path.join(os.homedir(), '.postgresql', 'root.crt');
    if (fs.existsSync(home)) rootcert = home;
  }
  const ssl = { rejectUnauthorized: true };
  if (rootcert && rootcert !== 'system') ssl.ca = readRootCert(rootcert);
  if (mode === 'require' && !ssl.ca) {
    ssl.rejectUnauthorized = false; // libpq's require without a root certificate
    return ssl;
  }
  if (mode === 'verify-full') {
    // SNI takes names only; the identity check is pinned to host either way
    if (net.isIP(server) === 0) ssl.servername = server;
    ssl.checkServerIdentity = (_name, cert) => tls.checkServerIdentity(server, cert);
  } else {
    ssl.checkServerIdentity = () => undefined; // verify-ca, and require with a root certificate
  }
  return ssl;
}

/**
 * A config for pg.Client or pg.Pool logging in with the profile's tokens: host, port,
 * database, user and TLS from the profile (under your PG* variables), password a
 * tokenPassword(). What config sets wins; config.ssl replaces the TLS built here.
 */
async function connectionConfig(profile = undefined, config = {}, options = {}) {
  const settings = await profileSettings(profile, options);
  const fromProfile = {};
  if (settings.PGHOST) fromProfile.host = settings.PGHOST;
  if (settings.PGPORT) fromProfile.port = Number(settings.PGPORT);
  if (settings.PGDATABASE) fromProfile.database = settings.PGDATABASE;
  if (settings.PGUSER) fromProfile.user = settings.PGUSER;
  const merged = { ...fromProfile, ...config };
  if (!('ssl' in config)) {
    merged.ssl = tlsOptions({ host: merged.host, sslmode: settings.PGSSLMODE,
                              sslrootcert: settings.PGSSLROOTCERT });
  }
  if (merged.password === undefined) merged.password = tokenPassword(profile, options);
  return merged;
}

module.exports = { connectionConfig, profileSettings, tlsOptions };
