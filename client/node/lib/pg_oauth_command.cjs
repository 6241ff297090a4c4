'use strict';

// Runs the pg-oauth command (pip install ./client), which owns the profiles, every flow
// and the per-profile token cache file shared with psql, psycopg and the other processes
// of the machine. Its standard output may hold a token: it is parsed, never shown.

const { spawn } = require('node:child_process');

const { TokenError } = require('./errors.cjs');

const DEFAULT_TIMEOUT_MS = 60_000;

/**
 * The command and its leading arguments: options.command (an array, e.g.
 * ['/opt/pg-oauth/bin/pg-oauth']), else `pg-oauth` from PATH.
 */
function commandOf(options) {
  const command = options.command ?? ['pg-oauth'];
  if (!Array.isArray(command) || command.length === 0
      || !command.every((part) => typeof part === 'string' && part !== '')) {
    throw new TypeError('pg-oauth-client: options.command must be a non-empty array of strings');
  }
  return command;
}

/** `-p PROFILE` unless the profile is left to pg-oauth ($PG_OAUTH_PROFILE, else default). */
function profileArgs(profile) {
  return profile == null ? [] : ['--profile', String(profile)];
}

function describe(profile) {
  return profile == null ? 'the default profile' : `profile '${profile}'`;
}

/**
 * Run pg-oauth with args, never interactively (a server must not wait on a device-flow
 * sign-in: `pg-oauth login` does that); resolves to its standard output. Standard error
 * is kept for the error message (pg-oauth's "pg-oauth: ..." lines). A run that fails, or
 * outlives options.timeout (ms, default 60000), rejects with a TokenError.
 */
function runPgOAuth(args, { profile, options = {}, env = process.env } = {}) {
  const [program, ...lead] = commandOf(options);
  const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
  // the subcommand's own option: before a `--` that starts exec's command
  const [subcommand, ...rest] = args;
  const fullArgs = [...lead, subcommand, '--no-interactive', ...rest];
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(program, fullArgs, {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout,
        windowsHide: true,
      });
    } catch (error) {
      reject(new TokenError(`pg-oauth-client: cannot run ${program}: ${error.message}`,
                            { profile, cause: error }));
      return;
    }
    const out = [];
    let err = '';
    child.stdout.on('data', (chunk) => out.push(chunk));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => { err = (err + chunk).slice(-8192); });
    child.on('error', (error) => {
      const hint = error.code === 'ENOENT'
        ? ': not found; install the pg_oauth client (pip install ./client) or set options.command'
        : `: ${error.message}`;
      reject(new TokenError(`pg-oauth-client: cannot run ${program}${hint}`,
                            { profile, cause: error }));
    });
    child.on('close', (status, signal) => {
      if (status === 0) {
        resolve(Buffer.concat(out).toString('utf8'));
        return;
      }
      // pg-oauth says what went wrong and what to do, one line each
      const said = err.split('\n').filter((line) => line.startsWith('pg-oauth')).join('\n');
      const why = said || (signal ? `pg-oauth-client: ${program} was stopped (${signal}${
        signal === 'SIGTERM' ? `; options.timeout is ${timeout} ms` : ''})`
        : `pg-oauth-client: ${program} exited with status ${status}`);
      reject(new TokenError(why, { profile, exitStatus: status }));
    });
  });
}

module.exports = { describe, profileArgs, runPgOAuth };
