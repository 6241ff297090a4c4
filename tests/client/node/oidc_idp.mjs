// A real OpenID provider for the client tests: oidc-provider (OpenID Certified),
// on 127.0.0.1, configured from a JSON file (argv[2]) written by the tests:
//
//   { "resources": ["urn:...", ...], "access_token_ttl": 300, "device_interval": 1,
//     "clients": [ oidc-provider client metadata ... ],
//     "short_refresh_clients": ["..."],            // refresh tokens live 1 second
//     "resource_ttls": { "urn:...": 4 },             // access tokens for it live 4 s
//     "trusted_issuer": { "issuer": "...", "jwks_uri": "...", "audience": "..." },
//     "groups_file": "groups.json",                   // { "<account>": ["group", ...] }
//     "tls": { "key": "key.pem", "cert": "cert.pem" } }  // optional: https:// instead
//
// It issues JWT access tokens (typ at+jwt, aud = the resource indicator) for client
// credentials, the device authorization grant (approved over HTTP at /interaction/:uid),
// refresh tokens, and RFC 8693 token exchange of a workload JWT signed by
// `trusted_issuer`.  Prints one JSON line {"issuer": ...} once it listens.

import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const USER_SCOPES = 'openid offline_access';
const DB_SCOPE = 'db';
const RESOURCES = new Set(cfg.resources);
const [DEFAULT_RESOURCE] = cfg.resources;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const server = cfg.tls
  ? https.createServer({ key: readFileSync(cfg.tls.key), cert: readFileSync(cfg.tls.cert) })
  : http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `${cfg.tls ? 'https' : 'http'}://127.0.0.1:${server.address().port}`;

function resourceServerInfo(resource) {
  if (!RESOURCES.has(resource)) throw new errors.InvalidTarget(`unknown resource ${resource}`);
  return {
    scope: DB_SCOPE,
    audience: resource,
    accessTokenFormat: 'jwt',
    accessTokenTTL: (cfg.resource_ttls || {})[resource] || cfg.access_token_ttl,
    jwt: { sign: { alg: 'RS256' } },
  };
}

const shortRefresh = new Set(cfg.short_refresh_clients || []);

const provider = new Provider(issuer, {
  clients: cfg.clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: ['pg-oauth-client-tests'] },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  extraTokenClaims: async (ctx, token) => {
    if (token.gty === 'token_exchange') return { act: { sub: token.clientId } };
    if (token.accountId) {
      // the user's groups as the directory has them at this moment (the tests edit the file)
      const groups = cfg.groups_file
        ? JSON.parse(readFileSync(cfg.groups_file, 'utf8'))[token.accountId]
        : undefined;
      return { email: `${token.accountId}@example.com`, ...(groups ? { groups } : {}) };
    }
    return undefined;
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || DEFAULT_RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => resourceServerInfo(resource),
    },
  },
  // first-party clients: the user's sign-in is the consent
  loadExistingGrant: async (ctx) => {
    const existing = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (existing) return ctx.oidc.provider.Grant.find(existing);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(USER_SCOPES);
    for (const resource of RESOURCES) grant.addResourceScope(resource, DB_SCOPE);
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || cfg.access_token_ttl,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || cfg.access_token_ttl,
    DeviceCode: () => 600,
    Grant: () => 3600,
    IdToken: () => 300,
    Interaction: () => 600,
    Session: () => 3600,
    RefreshToken: (ctx, token, client) => (shortRefresh.has(client.clientId) ? 1 : 3600),
  },
});

// RFC 8628 lets the server choose the polling interval (5 s when absent): 1 s keeps
// the tests short.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/device/auth' && ctx.body && ctx.body.device_code) {
    ctx.body.interval = cfg.device_interval;
  }
});

// RFC 8693: a workload JWT from the trusted issuer in, a database access token out.
const trusted = cfg.trusted_issuer;
const trustedKeys = trusted ? createRemoteJWKSet(new URL(trusted.jwks_uri)) : null;

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('subject_token is missing');
  if (params.subject_token_type !== 'urn:ietf:params:oauth:token-type:jwt') {
    throw new errors.InvalidRequest('subject_token_type must be urn:ietf:params:oauth:token-type:jwt');
  }
  if (!trustedKeys) throw new errors.InvalidGrant('no trusted workload issuer');
  let workload;
  try {
    ({ payload: workload } = await jwtVerify(params.subject_token, trustedKeys, {
      issuer: trusted.issuer, audience: trusted.audience,
    }));
  } catch (err) {
    throw new errors.InvalidGrant(`subject_token refused: ${err.code || err.message}`);
  }
  const resource = params.resource || params.audience || DEFAULT_RESOURCE;
  const info = resourceServerInfo(resource);
  const grant = new provider.Grant({ accountId: workload.sub, clientId: client.clientId });
  grant.addResourceScope(resource, DB_SCOPE);
  const grantId = await grant.save();
  const token = new provider.AccessToken({
    accountId: workload.sub, client, grantId, gty: 'token_exchange', scope: DB_SCOPE,
  });
  token.resourceServer = new provider.ResourceServer(resource, info);
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}
provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
  'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type', 'audience', 'resource', 'scope',
]);

// The sign-in page of a real provider, reduced to what a test can drive over HTTP:
// GET shows the pending interaction as JSON; POST login=<user>&decision=approve|deny.
async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      uid: details.uid, prompt: details.prompt.name, client_id: details.params.client_id,
    }));
    return;
  }
  const form = await readForm(req);
  const result = form.get('decision') === 'deny'
    ? { error: 'access_denied', error_description: 'the user denied the request' }
    : { login: { accountId: form.get('login') } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      res.statusCode = 400;
      res.end(String(err && err.message));
    });
    return;
  }
  callback(req, res);
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
