"""client/node (npm package pg-oauth-client) with node-postgres against oidc-provider and a
real cluster: a pool lives through several token lifetimes with
``pg_oauth.session_expiry = always`` and the application sees no error, pg-oauth runs
once per token lifetime (not per connection); TLS comes from the profile (verify-full
against the cluster's certificate, no NODE_EXTRA_CA_CERTS), a wrong CA or host name is
refused; PGSSLROOTCERT is honoured; errors are pg-oauth's one line, without the token.
The scripts are plain .js files, CommonJS or ES modules by package.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_app import run_node
from short_tokens import PROFILE, ShortLived, short_lived

__all__ = ["short_lived"]  # the fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]

LIFETIMES = 3

POOL_SCRIPT = """
const pg = require('pg');
const { createPool } = require('pg-oauth-client');

const QUERY = `SELECT (oauth.session()).token_id AS jti, pg_backend_pid() AS pid,
                      current_user AS who, pg_sleep(0.2),
                      (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl`;

async function main() {
  const pool = await createPool(pg, process.env.PROFILE, { max: 3, maxUses: 8 });
  const errors = [];
  pool.on('error', (error) => errors.push(`pool: ${error.message}`));
  const tokens = new Set();
  const pids = new Set();
  const seen = new Set();
  const giveUp = Date.now() + 120000;  // a guard, not a measure
  while (tokens.size < Number(process.env.LIFETIMES) && Date.now() < giveUp) {
    await Promise.all([0, 1, 2, 3].map(async () => {
      try {
        const { rows: [row] } = await pool.query(QUERY);
        tokens.add(row.jti);
        pids.add(row.pid);
        seen.add(`${row.who} ssl=${row.ssl}`);
      } catch (error) {
        errors.push(error.message);
      }
    }));
  }
  await pool.end();
  console.log(JSON.stringify({ tokens: tokens.size, pids: pids.size, seen: [...seen], errors }));
}

main().catch((error) => { console.error(error); process.exit(1); });
"""


def test_pool_lives_through_token_lifetimes_with_one_pg_oauth_run_each(
        short_lived: ShortLived, tmp_path: Path) -> None:
    short_lived.reset_calls()
    env = {**short_lived.env, "PROFILE": PROFILE, "LIFETIMES": str(LIFETIMES)}
    done = run_node(POOL_SCRIPT, tmp_path, env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["errors"] == []
    assert out["tokens"] == LIFETIMES
    # every connection over TLS verify-full, as the profile's user
    assert out["seen"] == ["svc ssl=true"]
    # the profile's settings once; a token once per lifetime, shared by all connections
    assert short_lived.calls("exec") == 1
    assert short_lived.calls("token") == out["tokens"]
    assert out["pids"] >= 2 * out["tokens"]


PLAIN_POOL_SCRIPT = """
import pg from 'pg';
import { connectionConfig } from 'pg-oauth-client';

const pool = new pg.Pool(await connectionConfig(process.env.PROFILE));
const ended = new Promise((resolve) => pool.on('error', (error) => resolve(error.message)));
await pool.query('SELECT 1');
// the connection waits in the pool; its token expires
const guard = new Promise((resolve) => setTimeout(() => resolve('no error'), 60000).unref());
console.log(await Promise.race([ended, guard]));
await pool.end();
"""


def test_plain_pool_loses_idle_connections_at_token_expiry(
        short_lived: ShortLived, tmp_path: Path) -> None:
    """What createPool prevents: the server ends the session of an idle connection when
    its token expires, and pg.Pool reports it as an error."""
    done = run_node(PLAIN_POOL_SCRIPT, tmp_path, {**short_lived.env, "PROFILE": PROFILE},
                    esm=True)
    assert done.returncode == 0, done.stderr
    assert "token expired" in done.stdout


TLS_SCRIPT = """
import net from 'node:net';
import pg from 'pg';
import { SettingsError, connectionConfig, createPool } from 'pg-oauth-client';

async function attempt(profile, config = {}) {
  try {
    const client = new pg.Client(await connectionConfig(profile, config));
    await client.connect();
    try {
      const { rows: [row] } = await client.query(
        'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      return `ssl=${row.ssl}`;
    } finally {
      await client.end();
    }
  } catch (error) {
    return `${error instanceof SettingsError ? 'SettingsError: ' : ''}${error.message}`;
  }
}

// a name the certificate does not hold, reaching the same server (as DNS would)
function redirected() {
  const socket = new net.Socket();
  const connect = socket.connect.bind(socket);
  socket.connect = (port) => connect(port, '127.0.0.1');
  return socket;
}

const { PROFILE, CLUSTER_CERT, OTHER_CERT, SOCKDIR, ...env } = process.env;
const results = {};
results.profile = await attempt(PROFILE);
process.env.PGSSLROOTCERT = OTHER_CERT;              // your PG* variables win
results.other_ca = await attempt(PROFILE);
delete process.env.PGSSLROOTCERT;
results.other_name = await attempt(PROFILE, { host: 'db.example.test', stream: redirected });
process.env.PGHOST = '127.0.0.1';
process.env.PGPORT = env.PORT;
process.env.PGDATABASE = 'postgres';
process.env.PGSSLROOTCERT = CLUSTER_CERT;
results.pgsslrootcert = await attempt(`${PROFILE}-no-tls`);
delete process.env.PGSSLROOTCERT;
results.no_root_cert = await attempt(`${PROFILE}-no-tls`);
process.env.PGSSLMODE = 'require';                  // encrypted, nothing verified
results.require = await attempt(`${PROFILE}-no-tls`);
process.env.PGSSLMODE = 'verify-ca';                // signed by the CA, any name
process.env.PGSSLROOTCERT = CLUSTER_CERT;
results.verify_ca = await attempt(`${PROFILE}-no-tls`, { host: 'db.example.test',
                                                         stream: redirected });
process.env.PGSSLROOTCERT = '/nonexistent/root.crt';
results.unreadable = await attempt(`${PROFILE}-no-tls`);
delete process.env.PGSSLROOTCERT;
process.env.PGSSLMODE = 'prefer';
results.prefer = await attempt(`${PROFILE}-no-tls`);
delete process.env.PGSSLMODE;
process.env.PGHOST = SOCKDIR;
results.unix_socket = await attempt(`${PROFILE}-no-tls`);
console.log(JSON.stringify(results));
"""


def _other_ca(path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 that did not sign the server's."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_from_the_profile_and_libpq_variables(short_lived: ShortLived,
                                                  tmp_path: Path) -> None:
    cluster = short_lived.cluster
    env = {**short_lived.env, "PROFILE": PROFILE, "PORT": str(cluster.port),
           "CLUSTER_CERT": str(cluster.base / "server.crt"), "SOCKDIR": str(cluster.sockdir),
           "OTHER_CERT": str(_other_ca(tmp_path / "other-ca.crt"))}
    done = run_node(TLS_SCRIPT, tmp_path, env, esm=True)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    # verify-full with the profile's sslrootcert; no NODE_EXTRA_CA_CERTS anywhere
    assert results["profile"] == "ssl=true"
    assert "self-signed certificate" in results["other_ca"]
    assert "does not match certificate's altnames" in results["other_name"]
    # the DBA guide's case: the server's CA in PGSSLROOTCERT, which node-postgres ignores
    assert results["pgsslrootcert"] == "ssl=true"
    # verify-full by default: without a root certificate, Node's own CAs do not know it
    assert "self-signed certificate" in results["no_root_cert"]
    assert results["require"] == "ssl=true"
    assert results["verify_ca"] == "ssl=true"
    assert results["unreadable"].startswith("SettingsError: pg-oauth-client: cannot read the "
                                            "root certificate /nonexistent/root.crt (sslrootcert)")
    assert results["prefer"].startswith("SettingsError: pg-oauth-client: sslmode prefer")
    assert results["unix_socket"] == "ssl=false"


FAILING_SCRIPT = """
const pg = require('pg');
const { TokenError, createPool, tlsOptions, tokenPassword } = require('pg-oauth-client');

function described(error) {
  return { token_error: error instanceof TokenError, status: error.exitStatus,
           message: error.message };
}

async function main() {
  const out = {};
  try {
    await createPool(pg, process.env.PROFILE);
  } catch (error) {
    out.create_pool = described(error);
  }
  const client = new pg.Client({
    password: tokenPassword(process.env.PROFILE),
    ssl: tlsOptions({ host: process.env.PGHOST, sslrootcert: process.env.CLUSTER_CERT }),
  });
  try {
    await client.connect();
  } catch (error) {
    out.connect = described(error);
    client.end();
  }
  for (const [name, command] of [['missing', ['/nonexistent/pg-oauth']],
                                 ['hanging', ['sh', '-c', 'exec sleep 30']]]) {
    try {
      await tokenPassword(process.env.PROFILE, { command, timeout: 500 })();
    } catch (error) {
      out[name] = described(error);
    }
  }
  console.log(JSON.stringify(out));
}

main();
"""


def test_a_refused_token_request_is_pg_oauths_one_line(short_lived: ShortLived,
                                                      tmp_path: Path) -> None:
    cluster = short_lived.cluster
    env = {**short_lived.env, "PROFILE": f"{PROFILE}-wrong-secret", "PGHOST": "127.0.0.1",
           "PGPORT": str(cluster.port), "PGUSER": "svc", "PGDATABASE": "postgres",
           "CLUSTER_CERT": str(cluster.base / "server.crt")}
    done = run_node(FAILING_SCRIPT, tmp_path, env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # at createPool (the profile's settings), and when a connection asks for the token
    for where in ("create_pool", "connect"):
        assert out[where]["token_error"] is True and out[where]["status"] == 1, out
        assert out[where]["message"].startswith(
            f"pg-oauth: client credentials for profile '{PROFILE}-wrong-secret' refused")
    # options.command, and options.timeout on a pg-oauth that never answers
    assert out["missing"]["token_error"] is True
    assert out["missing"]["message"] == ("pg-oauth-client: cannot run /nonexistent/pg-oauth: "
                                         "not found; install the pg_oauth client (pip install "
                                         "./client) or set options.command")
    assert out["hanging"]["token_error"] is True
    assert out["hanging"]["message"] == ("pg-oauth-client: sh was stopped (SIGTERM; "
                                         "options.timeout is 500 ms)")
