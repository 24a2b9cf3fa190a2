// An OpenID provider for the console's sign-in tests, on loopback: `oidc-provider` from npm (a
// certified OpenID Connect implementation), not the relay's own code, with the authorization
// code flow and PKCE (S256, required of every client), discovery, JWKS, userinfo and
// RP-initiated logout as that library does them. Its own sign-in page replaces the library's
// development pages; consent is given without asking for every configured client.
//
//     OIDC_PROVIDER_MODULES=DIR node oidc_provider.mjs CONFIG
//
// DIR holds the npm packages (node_modules). CONFIG is JSON:
//   {"clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//    "accounts": {"LOGIN": {"sub", "name", "email", "groups": [...]}}}
// `"rp_initiated_logout": false` leaves out the end_session_endpoint (a provider without
// RP-initiated logout). Other client metadata (e.g. `post_logout_redirect_uris`) is passed to
// the library as is. Any
// password signs a configured LOGIN in. Scope `profile` releases `name`, `preferred_username`
// (the LOGIN unless the account has one) and `groups`, `email` releases `email` and
// `email_verified`; every released claim is in the ID token too (RS256). Prints its port on the
// first line of stdout, and nothing else there; the issuer is `http://127.0.0.1:PORT`. Exits
// when its stdin closes or its parent goes.
//
//   GET  /interaction/UID        the sign-in page: input[name=login], input[name=password],
//                                button#sign-in; an unknown LOGIN shows it again with p#error
//   GET  /session/end            the sign-out page: button#sign-out
//   POST /control/rotate         {"drop_old": bool}: a new RSA signing key (a new kid) signs from
//                                now on; the JWKS lists it first, then the old ones unless
//                                drop_old. Answers {"kid", "keys"}
//   POST /control/tamper         {"kind": K}: the next token response's id_token is replaced by
//                                one with a wrong `nonce`, `expired` (iat 2 h and exp 1 h ago),
//                                a `foreign_key`'s signature (same kid, a key not in the JWKS),
//                                another `audience`, another `issuer`, or `alg_none` (unsigned)
//   GET  /control/state          {"tokens_issued": n, "keys": [kids, signing key first],
//                                 "tamper": the pending kind or null}

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// Only the port goes to stdout: the library prints notices with console.info, and the reader of
// the port closes the pipe after the first line.
console.log = console.info = console.debug = console.error;
process.stdout.on('error', () => {});

const modules = process.env.OIDC_PROVIDER_MODULES;
const require = createRequire(join(modules, 'package.json'));
const load = (name) => import(pathToFileURL(require.resolve(name)).href);
const { default: Provider } = await load('oidc-provider');
const jose = await load('jose');

const config = JSON.parse(process.argv[2] ?? '{}');
const accounts = new Map(); // sub -> claims
const logins = new Map(); // login name -> sub
for (const [login, account] of Object.entries(config.accounts ?? {})) {
  const sub = account.sub ?? login;
  accounts.set(sub, { preferred_username: login, email_verified: true, ...account, sub });
  logins.set(login, sub);
}
const clients = (config.clients ?? []).map((client) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...client,
}));

const TAMPER_KINDS = ['nonce', 'expired', 'foreign_key', 'audience', 'issuer', 'alg_none'];
const cookieKeys = [randomBytes(32).toString('base64url')];
const signingKey = () => ({
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: `key-${randomUUID()}`,
  alg: 'RS256',
  use: 'sig',
});
let jwks = [signingKey()]; // private JWKs, the signing one first
const foreignKey = signingKey(); // never published
const state = { tokens_issued: 0, tamper: null };

// The library's storage (sessions, interactions, grants, codes, tokens), shared by every
// Provider this process makes (see rotate), expiring entries when read.
const stored = new Map(); // MODEL:ID -> {payload, expires (ms since the epoch)}
const indexes = new Map(); // sessionUid:UID or userCode:CODE -> ID
const grantMembers = new Map(); // grant id -> the keys of what it issued
class SharedAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expires = expiresIn ? Date.now() + (expiresIn + 15) * 1000 : Infinity;
    stored.set(key, { payload, expires });
    if (this.model === 'Session') indexes.set(`sessionUid:${payload.uid}`, id);
    if (payload.userCode) indexes.set(`userCode:${payload.userCode}`, id);
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    const entry = stored.get(this.key(id));
    if (entry && entry.expires <= Date.now()) stored.delete(this.key(id));
    else return entry?.payload;
    return undefined;
  }

  async findByUid(uid) {
    const id = indexes.get(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = indexes.get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = stored.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    stored.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) stored.delete(key);
    grantMembers.delete(grantId);
  }
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>
${body}
</body></html>`;

function loginPage(uid, error, login = '') {
  const problem = error ? `<p id="error" role="alert">${escape(error)}</p>` : '';
  return page('Sign in', `${problem}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label>Login <input name="login" value="${escape(login)}" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit" id="sign-in">Sign in</button>
</form>`);
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

// The grant a configured client gets without a consent page: what this request asks for, added
// to what the session's grant for the client already holds.
async function autoGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  const grant = (grantId && (await oidc.provider.Grant.find(grantId)))
    || new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

// The token response's ID token, changed as `kind` says.
async function tampered(idToken, kind, issuer) {
  const header = jose.decodeProtectedHeader(idToken);
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  switch (kind) {
    case 'nonce':
      claims.nonce = `wrong-${randomUUID()}`;
      break;
    case 'expired':
      claims.iat = now - 7200;
      claims.exp = now - 3600;
      if (claims.auth_time) claims.auth_time = now - 7200;
      break;
    case 'audience':
      claims.aud = 'another-client';
      break;
    case 'issuer':
      claims.iss = `${issuer}/another-issuer`;
      break;
    case 'alg_none':
      return `${encode({ alg: 'none', typ: header.typ ?? 'JWT' })}.${encode(claims)}.`;
    default:
  }
  const key = kind === 'foreign_key' ? foreignKey : jwks[0];
  const privateKey = await jose.importJWK(key, 'RS256');
  return new jose.SignJWT(claims).setProtectedHeader(header).sign(privateKey);
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    adapter: SharedAdapter,
    clients,
    jwks: { keys: jwks },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return { accountId: sub, claims: async () => account };
    },
    loadExistingGrant: autoGrant,
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        // `"rp_initiated_logout": false` in the config: a provider without an end_session_endpoint.
        enabled: config.rp_initiated_logout !== false,
        async logoutSource(ctx, form) {
          ctx.type = 'html';
          ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes" id="sign-out">Sign out</button>
<button type="submit" form="op.logoutForm" id="stay">Stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
        },
      },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      const lines = Object.entries(out).map(([k, v]) => `<p>${escape(k)}: ${escape(v)}</p>`);
      ctx.body = page('Error', `<div id="error">${lines.join('\n')}</div>`);
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 86400,
      Grant: 86400,
      RefreshToken: 86400,
    },
  });

  // The sign-in page, and consent given without a page.
  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (!match) return next();
    ctx.type = 'html';
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (e) {
      ctx.status = 400;
      ctx.body = page('Error', `<p id="error">${escape(e.message)}</p>`);
      return undefined;
    }
    const finish = async (result) => {
      const to = await provider.interactionResult(ctx.req, ctx.res, result, {
        mergeWithLastSubmission: false,
      });
      ctx.redirect(to);
      ctx.status = 303;
    };
    if (details.prompt.name === 'consent') {
      const grant = new provider.Grant({
        clientId: details.params.client_id,
        accountId: details.session.accountId,
      });
      grant.addOIDCScope(details.params.scope ?? 'openid');
      const missing = details.prompt.details.missingOIDCClaims;
      if (missing?.length) grant.addOIDCClaims(missing);
      return finish({ consent: { grantId: await grant.save() } });
    }
    if (ctx.method === 'GET' && !match[2]) {
      ctx.body = loginPage(details.uid);
      return undefined;
    }
    if (ctx.method !== 'POST' || !match[2]) {
      ctx.status = 405;
      return undefined;
    }
    const form = new URLSearchParams(await body(ctx.req));
    const login = form.get('login') ?? '';
    const sub = logins.get(login);
    if (!sub) {
      ctx.body = loginPage(details.uid, `No account is named ${JSON.stringify(login)}.`, login);
      return undefined;
    }
    console.error(`oidc_provider: ${login} signed in`);
    return finish({ login: { accountId: sub } });
  });

  // Counts token responses and applies a pending tamper to the next one.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method !== 'POST' || ctx.path !== provider.pathFor('token')) return;
    if (ctx.status !== 200 || typeof ctx.body?.id_token !== 'string') return;
    state.tokens_issued += 1;
    const kind = state.tamper;
    if (kind) {
      state.tamper = null;
      ctx.body = { ...ctx.body, id_token: await tampered(ctx.body.id_token, kind, issuer) };
      console.error(`oidc_provider: id_token tampered (${kind})`);
    }
  });

  provider.on('server_error', (ctx, error) => console.error('oidc_provider: server_error', error));
  return provider;
}

function answer(res, status, value) {
  const data = Buffer.from(JSON.stringify(value));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': data.length });
  res.end(data);
}

const publicKids = () => jwks.map((key) => key.kid);

async function control(req, res, path) {
  if (req.method === 'GET' && path === '/control/state') {
    return answer(res, 200, { ...state, keys: publicKids() });
  }
  if (req.method !== 'POST') return answer(res, 405, { error: 'POST a JSON body' });
  let rule;
  try {
    const text = await body(req);
    rule = text ? JSON.parse(text) : {};
  } catch {
    return answer(res, 400, { error: 'the body is not JSON' });
  }
  if (path === '/control/rotate') {
    const key = signingKey();
    jwks = rule.drop_old ? [key] : [key, ...jwks];
    // The keystore is fixed when a Provider is made: a new one takes over, sharing the storage
    // (SharedAdapter) and the cookie keys, so sessions, codes and tokens survive.
    handler = makeProvider(issuer).callback();
    console.error(`oidc_provider: rotated to ${key.kid}${rule.drop_old ? ', old keys dropped' : ''}`);
    return answer(res, 200, { kid: key.kid, keys: publicKids() });
  }
  if (path === '/control/tamper') {
    if (!TAMPER_KINDS.includes(rule.kind)) {
      return answer(res, 400, { error: `kind is one of ${TAMPER_KINDS.join(', ')}` });
    }
    state.tamper = rule.kind;
    return answer(res, 200, { tamper: rule.kind });
  }
  return answer(res, 404, { error: 'no such control' });
}

let handler = (req, res) => answer(res, 503, { error: 'starting' });
let issuer;
const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  if (path.startsWith('/control/')) {
    control(req, res, path).catch((e) => answer(res, 500, { error: String(e) }));
    return;
  }
  handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  handler = makeProvider(issuer).callback();
  process.stdout.write(`${port}\n`);
});

// Gone with its parent: when stdin closes (the test side holds a pipe), or the parent changes.
const parent = process.ppid;
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 1000).unref();
