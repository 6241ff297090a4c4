import type { ClientBase, Pool } from 'pg';

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
