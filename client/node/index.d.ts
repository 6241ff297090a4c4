import type { ClientBase, ClientConfig, Pool, PoolConfig } from 'pg';
import type { ConnectionOptions } from 'node:tls';

export interface TokenTransactionOptions {
  /** The role to run as when the token allows several (oauth.authenticate's second argument). */
  role?: string | null;
}

export function authenticatedTransaction<T>(
  client: ClientBase, token: string,
  fn: (client: ClientBase, role: string) => Promise<T> | T,
  options?: TokenTransactionOptions): Promise<T>;

export function withToken<T>(
  pool: Pool, token: string,
  fn: (client: ClientBase, role: string) => Promise<T> | T,
  options?: TokenTransactionOptions): Promise<T>;

export interface TokenOptions {
  /** Seconds a token handed to a new connection stays valid (default 300; at most half its lifetime). */
  minValid?: number;
  /** How to run pg-oauth (default ['pg-oauth'], from PATH). */
  command?: string[];
  /** Milliseconds for one pg-oauth run (default 60000). */
  timeout?: number;
}

/** A password function for pg.Client / pg.Pool: the profile's token, kept in the process until near expiry. */
export function tokenPassword(profile?: string, options?: TokenOptions): () => Promise<string>;

/** host/port/database/user and TLS from the profile (under your PG* variables), password tokenPassword(). */
export function connectionConfig<C extends ClientConfig | PoolConfig>(
  profile?: string, config?: C, options?: TokenOptions): Promise<C & ClientConfig>;

/** A pg.Pool of the pg module given, whose connections close before their token expires. */
export function createPool(
  pg: { Pool: typeof Pool }, profile?: string, config?: PoolConfig,
  options?: TokenOptions): Promise<Pool>;

/** node-postgres's ssl option for libpq's sslmode and sslrootcert (default verify-full). */
export function tlsOptions(settings: {
  host?: string; sslmode?: string; sslrootcert?: string;
}): false | ConnectionOptions;

export class PgOAuthError extends Error {}
export class TokenError extends PgOAuthError {
  profile: string | null;
  exitStatus: number | null;
}
export class SettingsError extends PgOAuthError {}
