// A local OpenID Provider for `make demo` and the test suite. NOT FOR PRODUCTION: anyone signs in as
// anyone, with any password.
//
// Usage: node server.mjs CONFIG.json   (or DEV_IDP_CONFIG=CONFIG.json node server.mjs)
//
// Config keys (all optional):
//   port                        9000; 0 picks a free port (the ready line tells which)
//   issuer                      default http://127.0.0.1:{port}
//   clients                     [{client_id, client_secret, redirect_uris, post_logout_redirect_uris,
//                                 backchannel_logout_uri, backchannel_logout_session_required,
//                                 token_endpoint_auth_method, grant_types, ...any client metadata}]
//   ttl                         {"AccessToken": 3600, "IdToken": 3600, "RefreshToken": 86400, ...} seconds
//   allow_registration          false; true enables open dynamic client registration at /reg
//   registration_initial_access_token
//                               a string: registration at /reg (RFC 7591) only with this initial access
//                               token (Authorization: Bearer), and client management (RFC 7592) with the
//                               registration access token it hands out
//   allow_loopback_backchannel  false; true lets back-channel logout POSTs reach 127.0.0.1 and friends
//   refresh_tokens              true: issue a refresh token whenever the client may use the grant;
//                               false: only when offline_access was requested (and granted)
//   accounts                    {"username": {claim overrides}} e.g. {"bob": {"groups": ["ops"]}}
//   jwks_file                   keep the signing keys in this file so they survive a restart
//   acr                         {"password": ACR, "one_time_code": ACR}: authentication levels (acr_values_supported).
//                               The sign-in form gets a "One-time code" field (any digits); a sign-in with one
//                               has the second acr (amr pwd, otp), without one the first (amr pwd); every ID
//                               token carries its acr. A request whose acr_values name only levels above the
//                               session's asks to sign in again (step-up); acr_values naming no supported level
//                               are ignored, as OIDC Core allows for a voluntary claim. Without this key no acr
//                               is issued.
//   clients_file                keep the clients registered at /reg in this file so they survive a restart
//                               (their registration access tokens do not)
//
// Accounts: the username is the login. sub is a stable opaque id derived from it; given/family names
// come from "first.last" ("alice" gets family name "Example"); email is username@example.com, or the
// username itself when it contains "@"; a username starting with "unverified" has
// email_verified=false; groups are ["users"], plus "admins" when the username starts with "admin".
//
// Prints exactly one line "dev-idp listening on {issuer}" to stdout when ready.

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';

import { interactionPolicy, Provider } from 'oidc-provider';
// The library's own in-memory adapter and its store (package-lock.json pins the version whose files these are).
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

const HOST = '127.0.0.1';

function loadConfig() {
  const path = process.argv[2] || process.env.DEV_IDP_CONFIG;
  if (!path) return {};
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    console.error(`dev-idp: cannot read config ${path}: ${err.message}`);
    process.exit(2);
  }
}

function signingKeys(jwksFile) {
  if (jwksFile && existsSync(jwksFile)) {
    return JSON.parse(readFileSync(jwksFile, 'utf8'));
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  // RSA first: it is what clients get by default (id_token_signed_response_alg RS256).
  const keys = [
    { ...rsa, kid: `rs-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `es-${randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' },
  ];
  if (jwksFile) writeFileSync(jwksFile, JSON.stringify({ keys }), { mode: 0o600 });
  return { keys };
}

// ---------------------------------------------------------------------------------------------------
// Accounts

const accountsById = new Map();

function subFor(username) {
  // Opaque, so a relying party that mistakes sub for the user name shows up in tests.
  return `u${createHash('sha256').update(`dev-idp:${username}`).digest('hex').slice(0, 24)}`;
}

function capitalise(word) {
  return word ? word[0].toUpperCase() + word.slice(1) : word;
}

function claimsFor(username, overrides) {
  const local = username.includes('@') ? username.slice(0, username.indexOf('@')) : username;
  const parts = local.split(/[._-]+/).filter(Boolean);
  const given = capitalise(parts[0] || local);
  const family = parts.length > 1 ? parts.slice(1).map(capitalise).join(' ') : 'Example';
  const groups = ['users'];
  if (username.startsWith('admin')) groups.push('admins');
  return {
    preferred_username: username,
    email: username.includes('@') ? username : `${username}@example.com`,
    email_verified: !username.startsWith('unverified'),
    given_name: given,
    family_name: family,
    name: `${given} ${family}`,
    groups,
    ...overrides,
  };
}

function makeFindAccount(overrides) {
  return async function findAccount(_ctx, id) {
    const username = accountsById.get(id);
    if (username === undefined) return undefined;
    return {
      accountId: id,
      async claims() {
        return { ...claimsFor(username, overrides[username] || {}), sub: id };
      },
    };
  };
}

// ---------------------------------------------------------------------------------------------------
// Pages: our own login and consent interactions (the library's devInteractions would make the login
// string itself the account id, and back-channel logout tokens carry that id as sub).

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;background:#eef1f5;margin:0;padding:48px 16px}
main{max-width:360px;margin:0 auto;background:#fff;padding:24px 28px;border-radius:8px;box-shadow:0 1px 4px #0002}
h1{font-size:1.25rem;margin:0 0 4px;overflow-wrap:anywhere}b{overflow-wrap:anywhere}p.note{color:#666;font-size:.85rem;margin:0 0 16px}
label{display:block;font-size:.9rem;margin:12px 0 4px}input{width:100%;box-sizing:border-box;padding:8px;font-size:1rem}
button{margin-top:16px;width:100%;padding:10px;font-size:1rem;background:#2563eb;color:#fff;border:0;border-radius:4px;cursor:pointer}
button.secondary{background:#e5e7eb;color:#111}ul{padding-left:20px}
</style></head><body><main>${body}</main></body></html>`;
}

function loginPage(uid, clientId, loginHint, acr, acrValues) {
  const asked = acr && String(acrValues || '').split(' ').includes(acr.one_time_code);
  const otp = acr ? `
<label for="otp">One-time code</label>
<input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code">
<p class="note">${asked ? '<b>This application asks for a sign-in with a one-time code.</b> ' : ''}Any digits
sign in with acr <b>${esc(acr.one_time_code)}</b>; without a code the acr is <b>${esc(acr.password)}</b>.</p>` : '';
  return page('Sign in - dev IdP', `
<h1>Sign in</h1>
<p class="note">Local development identity provider for <b>${esc(clientId)}</b>.
Any username signs in; the password is not checked.</p>
<form method="post" action="/interaction/${esc(uid)}" autocomplete="off">
<input type="hidden" name="prompt" value="login">
<label for="login">Username</label>
<input id="login" name="login" required autofocus value="${esc(loginHint || '')}">
<label for="password">Password</label>
<input id="password" name="password" type="password">${otp}
<button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button class="secondary" type="submit">Cancel</button></form>`);
}

function consentPage(uid, clientId, details) {
  const scopes = (details.missingOIDCScope || []).filter((s) => s !== 'openid');
  const claims = (details.missingOIDCClaims || []).filter((c) => !['sub', 'sid', 'auth_time', 'acr', 'amr', 'iss'].includes(c));
  const items = [...scopes.map((s) => `<li>scope <b>${esc(s)}</b></li>`), ...claims.map((c) => `<li>claim <b>${esc(c)}</b></li>`)];
  return page('Authorize - dev IdP', `
<h1>Authorize ${esc(clientId)}</h1>
<p class="note">The application asks for:</p>
<ul>${items.join('') || '<li>your sign-in (confirming an earlier grant)</li>'}</ul>
<form method="post" action="/interaction/${esc(uid)}">
<input type="hidden" name="prompt" value="consent">
<button type="submit">Allow</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button class="secondary" type="submit">Deny</button></form>`);
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out - dev IdP', `
<h1>Sign out</h1>
<p class="note">Sign out of the dev identity provider at ${esc(ctx.host)}?</p>
${form}
<button autofocus type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button class="secondary" type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out - dev IdP', '<h1>Signed out</h1><p class="note">You are signed out of the dev identity provider.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  const rows = Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: ${esc(v)}</p>`).join('');
  ctx.body = page('Error - dev IdP', `<h1>Something went wrong</h1>${rows}`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(provider, acr, req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, page('Error - dev IdP', `<h1>Sign-in expired</h1><p class="note">${esc(err.message)}. Start again from the application.</p>`));
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error - dev IdP', '<h1>Sign-in mismatch</h1><p class="note">This sign-in form belongs to another request.</p>'));
    return;
  }
  const { prompt, params } = details;

  if (action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method === 'GET') {
    if (prompt.name === 'login') send(res, 200, loginPage(uid, params.client_id, params.login_hint, acr, params.acr_values));
    else if (prompt.name === 'consent') send(res, 200, consentPage(uid, params.client_id, prompt.details));
    else send(res, 501, page('Error - dev IdP', `<h1>Unsupported prompt ${esc(prompt.name)}</h1>`));
    return;
  }

  const form = await readForm(req);
  if (form.get('prompt') === 'login' && prompt.name === 'login') {
    const username = (form.get('login') || '').trim();
    if (!username) {
      send(res, 400, loginPage(uid, params.client_id, ''));
      return;
    }
    const accountId = subFor(username);
    accountsById.set(accountId, username);
    const login = { accountId };
    if (acr) {
      const code = (form.get('otp') || '').trim();
      Object.assign(login, code ? { acr: acr.one_time_code, amr: ['pwd', 'otp'] } : { acr: acr.password, amr: ['pwd'] });
    }
    await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
    return;
  }
  if (form.get('prompt') === 'consent' && prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  send(res, 400, page('Error - dev IdP', `<h1>Unexpected form for prompt ${esc(prompt.name)}</h1>`));
}

// ---------------------------------------------------------------------------------------------------
// The provider

const DEFAULT_TTL = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  BackchannelAuthenticationRequest: 600,
  ClientCredentials: 600,
  DeviceCode: 600,
  Grant: 86400,
  IdToken: 3600,
  Interaction: 600,
  PreAuthorizedCode: 600,
  RefreshToken: 86400,
  Session: 86400,
};

function clientMetadata(c) {
  const { client_id, client_secret, ...rest } = c;
  return {
    client_id,
    client_secret,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    ...rest,
  };
}

// Step-up (OIDC Core 3.1.2.1 acr_values): the library leaves voluntary acr_values to the provider's policy.
// This one ranks its levels (a one-time code above a password alone, as Keycloak's levels of authentication
// are ranked) and asks to sign in again when the lowest level acr_values name is above the session's.
function stepUpPolicy(acr) {
  const policy = interactionPolicy.base();
  const rank = { [acr.password]: 1, [acr.one_time_code]: 2 };
  policy.get('login').checks.add(new interactionPolicy.Check(
    'acr_step_up',
    'acr_values name a level above the session\'s',
    (ctx) => {
      const { oidc } = ctx;
      const wanted = String(oidc.params.acr_values || '').split(' ').filter((v) => v in rank);
      if (!wanted.length || !oidc.session.accountId || ctx.oidc.result?.login) {
        return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      }
      const needed = Math.min(...wanted.map((v) => rank[v]));
      return (rank[oidc.acr] || 0) < needed ? interactionPolicy.Check.REQUEST_PROMPT : interactionPolicy.Check.NO_NEED_TO_PROMPT;
    },
  ));
  return policy;
}

function savedClients(file) {
  return file && existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : [];
}

function keepClients(provider, file) {
  // The demo's settings page may enable a client it registered here: a restarted demo must still know it.
  const save = (change) => {
    const clients = savedClients(file).filter(change.drop);
    if (change.add) clients.push(change.add);
    writeFileSync(file, JSON.stringify(clients, null, 2), { mode: 0o600 });
  };
  provider.on('registration_create.success', (_ctx, client) => save({ drop: () => true, add: client.metadata() }));
  provider.on('registration_update.success', (_ctx, client) => save({
    drop: (c) => c.client_id !== client.clientId, add: client.metadata(),
  }));
  provider.on('registration_delete.success', (_ctx, client) => save({ drop: (c) => c.client_id !== client.clientId }));
}

function buildProvider(cfg, issuer) {
  const refreshAlways = cfg.refresh_tokens !== false;
  const acr = cfg.acr;
  const configuration = {
    clients: [...(cfg.clients || []).map(clientMetadata), ...savedClients(cfg.clients_file)],
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      id_token_signed_response_alg: 'RS256',
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    jwks: signingKeys(cfg.jwks_file),
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    findAccount: makeFindAccount(cfg.accounts || {}),
    claims: {
      // With authentication levels, every ID token says which one (as Keycloak's and Okta's do), not only
      // those whose request named acr_values.
      openid: acr ? ['sub', 'acr', 'amr'] : ['sub'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // Profile and email claims in the ID token itself, as many enterprise providers do.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    interactions: {
      url: (_ctx, i) => `/interaction/${i.uid}`,
      ...(acr ? { policy: stepUpPolicy(acr) } : {}),
    },
    ...(acr ? { acrValues: [acr.password, acr.one_time_code] } : {}),
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      backchannelLogout: { enabled: true },
      registration: {
        enabled: Boolean(cfg.allow_registration || cfg.registration_initial_access_token),
        initialAccessToken: cfg.registration_initial_access_token || false,
      },
      registrationManagement: { enabled: Boolean(cfg.registration_initial_access_token) },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      userinfo: { enabled: true },
    },
    issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && (refreshAlways || code.scopes.has('offline_access')),
    rotateRefreshToken: true,
    ttl: { ...DEFAULT_TTL, ...(cfg.ttl || {}) },
    clientBasedCORS: () => true,
    renderError,
  };
  if (cfg.allow_loopback_backchannel) {
    // The library pins an SSRF-guarding dispatcher that refuses special-use addresses such as
    // 127.0.0.1; locally every relying party lives there.
    configuration.fetch = (url, options) => {
      delete options.dispatcher;
      return globalThis.fetch(url, options);
    };
  }
  // The library's default in-memory adapter, with a larger store: the default one forgets its oldest entries past
  // 1,000 (codes, sessions, grants, tokens: several per sign-in), so at the benchmark's hundreds of sign-ins a second
  // an authorization code could be forgotten between its issue and its redemption, and the relying party got
  // invalid_grant for a sign-in it did right. Entries still expire by their TTLs; this store holds up to 200,000
  // (two generations of 100,000).
  const store = new LRU({ maxSize: 100_000 });
  configuration.adapter = (model) => new MemoryAdapter(model, store);
  const provider = new Provider(issuer, configuration);
  if (cfg.clients_file) keepClients(provider, cfg.clients_file);
  provider.on('backchannel.success', (_ctx, client, _sub, sid) => {
    console.log(`dev-idp: back-channel logout delivered to ${client.clientId} (sid ${sid})`);
  });
  provider.on('backchannel.error', (_ctx, err, client) => {
    console.error(`dev-idp: back-channel logout to ${client.clientId} failed: ${err.message}`);
  });
  provider.on('server_error', (_ctx, err) => console.error('dev-idp: server error', err));
  return provider;
}

async function main() {
  const cfg = loadConfig();
  let handle = (_req, res) => send(res, 503, 'starting');
  const server = http.createServer((req, res) => handle(req, res));
  server.on('error', (err) => {
    console.error(`dev-idp: cannot listen on ${HOST}:${cfg.port ?? 9000}: ${err.message}`);
    process.exit(1);
  });
  await new Promise((resolve) => server.listen(cfg.port ?? 9000, HOST, resolve));
  const issuer = cfg.issuer || `http://${HOST}:${server.address().port}`;
  if (cfg.acr && !(typeof cfg.acr.password === 'string' && typeof cfg.acr.one_time_code === 'string')) {
    console.error('dev-idp: acr must be {"password": ACR, "one_time_code": ACR}');
    process.exit(2);
  }
  const provider = buildProvider(cfg, issuer);
  const callback = provider.callback();
  const route = /^\/interaction\/([A-Za-z0-9_-]+)(\/abort)?$/;

  handle = (req, res) => {
    const m = route.exec(new URL(req.url, issuer).pathname);
    if (!m) {
      callback(req, res);
      return;
    }
    interaction(provider, cfg.acr, req, res, m[1], m[2] ? 'abort' : undefined).catch((err) => {
      console.error('dev-idp: interaction failed', err);
      if (!res.headersSent) send(res, 500, page('Error - dev IdP', '<h1>Internal error</h1>'));
      else res.end();
    });
  };

  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      server.close();
      server.closeAllConnections();
      process.exit(0);
    });
  }
  console.log(`dev-idp listening on ${issuer}`);
}

main();
