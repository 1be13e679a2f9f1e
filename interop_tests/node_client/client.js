#!/usr/bin/env node
// An independent client of the mra.v1 gRPC contract, written against the .proto files only
// (@grpc/grpc-js and @grpc/proto-loader; no generated code, nothing shared with the Python
// gateway). interop_tests/test_node_client.py runs it against real gateways and compares its
// answers with what the Python side reports: a second gRPC implementation proves the contract
// is language-neutral.
//
//   node client.js check --target HOST:PORT --home DIR --operator ID --issuer CODE
//       [--at YYYY-MM-DD] [--type T] [--scheme EORI|MID|TIN|NATIONAL|AUTH]
//       [--mode road|air|sea|rail] [--strict] [--evidence] [--server-code CODE]
//       [--passphrase-file FILE]
//     QueryService.Check on a gateway's local admin listener, presenting the node's local admin
//     client certificate (DIR/tls/admin.pem, admin.key) and trusting only the node's own CA
//     (DIR/tls/ca.pem, plus tls/next/ca.pem during a TLS rotation). Prints the answer as the
//     `mragw check --json` document.
//
//   node client.js subscribe --target HOST:PORT --ca PARTNER_CA_PEM --cert MY_NODE_CERT
//       --key MY_NODE_KEY --server-code CODE [--from N] [--max-batches K]
//       [--max-batch-entries M] [--follow [--until-size N]] [--passphrase-file FILE]
//     ExchangeService.Subscribe on a partner's gateway, as a pinned partner (the caller's node
//     certificate). Without --follow the stream ends once caught up (catch_up_only); with it,
//     it follows new appends until --max-batches batches or a log of --until-size entries have
//     been read. Prints the batches: start index, entries (envelope or leaf hash, base64,
//     with the leaf hash computed here for envelopes), checkpoint note, consistency proof. When
//     reading from index 0 it also recomputes the Merkle root (RFC 9162) and verifies each
//     batch's consistency proof against the checkpoint's root, as a receiver would.
//
// The server's certificate is checked against the name `<code lower case>.mragw`
// (grpc.ssl_target_name_override), as gateways do. Output: one JSON document on stdout;
// messages on stderr. Exit codes follow the mragw CLI: 0 answered, 1 the call failed, 2 bad
// usage or input (INVALID_ARGUMENT, OUT_OF_RANGE), 3 the gateway is unreachable.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const RPC_TIMEOUT_MS = 30_000;

class UsageError extends Error {}

// --- loading the contract -----------------------------------------------------------------

function loadContract(protoDir) {
  const files = ['mra/v1/query.proto', 'mra/v1/exchange.proto'];
  for (const file of files) {
    if (!fs.existsSync(path.join(protoDir, file))) {
      throw new UsageError(`--proto-dir ${protoDir}: no ${file} there`);
    }
  }
  const definition = protoLoader.loadSync(files, {
    includeDirs: [protoDir],
    keepCase: true, // field names exactly as in the .proto files
    longs: String, // uint64 as decimal strings: no precision lost, converted checked below
    enums: String, // enum values by name
    bytes: Buffer,
    defaults: true,
    oneofs: true, // a virtual field names the set member of each oneof (and proto3 optional)
  });
  return grpc.loadPackageDefinition(definition).mra.v1;
}

// --- TLS material -------------------------------------------------------------------------

function readFile(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new UsageError(`${what} ${file}: cannot read: ${error.code || error.message}`);
  }
}

function readPassphrase(file) {
  if (!file) return undefined;
  return readFile(file, '--passphrase-file').toString('utf8').replace(/[\r\n]+$/, '');
}

// Node homes hold PKCS#8 PEM keys, unencrypted (mode 0600) or encrypted with a passphrase.
// gRPC wants an unencrypted PEM: decrypt in memory, never write it.
function privateKeyPem(file, passphrase) {
  const pem = readFile(file, 'key');
  let key;
  try {
    key = crypto.createPrivateKey(passphrase === undefined ? pem : { key: pem, passphrase });
  } catch (error) {
    const hint = pem.includes('ENCRYPTED') && passphrase === undefined ? ' (encrypted: pass --passphrase-file)' : '';
    throw new UsageError(`key ${file}: not a usable private key${hint}: ${error.message}`);
  }
  return Buffer.from(key.export({ type: 'pkcs8', format: 'pem' }));
}

function certificatePem(file, what) {
  const pem = readFile(file, what);
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new UsageError(`${what} ${file}: no PEM certificate in it`);
  }
  return pem;
}

function dnsNameFor(code) {
  if (!/^[A-Za-z]{2,8}$/.test(code)) throw new UsageError(`--server-code ${JSON.stringify(code)}: not an administration code`);
  return `${code.toLowerCase()}.mragw`;
}

function channelOptions(serverCode) {
  return {
    'grpc.ssl_target_name_override': dnsNameFor(serverCode),
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  };
}

// The administration code of a node home, from its config (`[node]` table, `admin = "JP"`).
function homeAdmin(home) {
  const text = readFile(path.join(home, 'mragw.toml'), '--home').toString('utf8');
  let section = '';
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = header[1].trim();
      continue;
    }
    const admin = /^admin\s*=\s*"([A-Za-z]+)"\s*$/.exec(line);
    if (section === 'node' && admin) return admin[1];
  }
  throw new UsageError(`--home ${home}: no [node] admin in mragw.toml (pass --server-code)`);
}

// Every CA of the node that its admin listener may present a certificate from.
function ownCaPem(home) {
  const pems = [certificatePem(path.join(home, 'tls', 'ca.pem'), '--home CA')];
  const next = path.join(home, 'tls', 'next');
  if (fs.existsSync(path.join(next, 'switch-at')) && fs.existsSync(path.join(next, 'ca.pem'))) {
    pems.push(certificatePem(path.join(next, 'ca.pem'), '--home next CA'));
  }
  return Buffer.concat(pems);
}

// --- protobuf -> the mragw JSON documents ---------------------------------------------------

function u64(value) {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new Error(`uint64 ${value} does not fit a JSON number`);
  return n;
}

function has(message, field) {
  // proto3 `optional` fields are synthetic oneofs named `_<field>`; oneofs: true sets the
  // virtual field to the member name when present.
  return message[`_${field}`] === field;
}

function optional(message, field, convert = (x) => x) {
  return has(message, field) ? convert(message[field]) : null;
}

function b64(buffer) {
  return Buffer.from(buffer).toString('base64');
}

function enumSuffix(value, prefix) {
  if (value === `${prefix}UNSPECIFIED` || value === 0) return null;
  if (typeof value !== 'string' || !value.startsWith(prefix)) return `?${value}`;
  return value.slice(prefix.length);
}

function reasonJson(reason) {
  return {
    arrangement: optional(reason, 'arrangement'),
    code: reason.code,
    detail: reason.detail,
  };
}

function evidenceJson(evidence) {
  const available = evidence.unavailable === '';
  const proof = evidence.inclusion_proof || { tree_size: '0', hashes: [] };
  const note = evidence.checkpoint ? Buffer.from(evidence.checkpoint.note).toString('utf8') : '';
  return {
    available,
    log: evidence.log,
    leaf_index: u64(evidence.leaf_index),
    entry: evidence.entry.length ? b64(evidence.entry) : null,
    tree_size: available ? u64(proof.tree_size) : null,
    inclusion_proof: proof.hashes.map(b64),
    checkpoint: note || null,
    detail: evidence.unavailable || null,
  };
}

function typeJson(t) {
  const record = has(t, 'status_date');
  const certainty = enumSuffix(t.certainty, 'CERTAINTY_');
  return {
    type: t.type,
    status: enumSuffix(t.status, 'AUTHORISATION_STATUS_'),
    recognised: t.recognised,
    arrangements: [...t.arrangements],
    programme: t.programme || null,
    reasons: t.reasons.map(reasonJson),
    warnings: [...t.warnings],
    certainty: certainty === null ? null : certainty.toLowerCase(),
    evidence: t.evidence ? evidenceJson(t.evidence) : null,
    authorisation: record ? t.authorisation : null,
    issuer: record ? t.issuer : null,
    status_date: optional(t, 'status_date'),
    valid_from: optional(t, 'valid_from'),
    valid_until: optional(t, 'valid_until'),
    consent: optional(t, 'consent'),
    log: record ? t.log : null,
    leaf_index: optional(t, 'leaf_index', u64),
  };
}

function checkJson(response) {
  const op = response.operator;
  return {
    recognised: response.recognised,
    operator: op
      ? {
          operator_ids: op.operator_ids.map((i) => ({
            scheme: enumSuffix(i.scheme, 'OPERATOR_ID_SCHEME_') || '?',
            value: i.value,
          })),
          name: op.name || null,
          country: op.country || null,
          issuer: op.issuer,
          log: op.log,
          authorisations: op.authorisations.map((a) => ({
            issuer: a.issuer,
            authorisation: a.authorisation,
            type: a.type,
            log: a.log,
          })),
        }
      : null,
    issuer: response.issuer,
    at: response.at,
    reasons: response.reasons.map(reasonJson),
    types: response.types.map(typeJson),
    dataset: response.dataset,
  };
}

// --- RFC 9162 Merkle trees (leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || l || r)) ---

function sha256(...parts) {
  const hash = crypto.createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);

function leafHash(envelope) {
  return sha256(LEAF, envelope);
}

// MTH over leaf hashes (RFC 9162 2.1.1); the empty tree hashes the empty string.
function merkleRoot(leaves, start = 0, end = leaves.length) {
  const n = end - start;
  if (n === 0) return sha256(Buffer.alloc(0));
  if (n === 1) return leaves[start];
  let k = 1;
  while (k * 2 < n) k *= 2;
  return sha256(NODE, merkleRoot(leaves, start, start + k), merkleRoot(leaves, start + k, end));
}

// Consistency proof verification, RFC 9162 2.1.4.2.
function verifyConsistency(first, second, firstHash, secondHash, proof) {
  if (first > second) return false;
  if (first === second) return proof.length === 0 && firstHash.equals(secondHash);
  if (first === 0) return proof.length === 0;
  if (proof.length === 0) return false;
  const path = [...proof];
  if ((first & (first - 1)) === 0) path.unshift(firstHash);
  let fn = first - 1;
  let sn = second - 1;
  while (fn & 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (fn & 1 || fn === sn) {
      fr = sha256(NODE, c, fr);
      sr = sha256(NODE, c, sr);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = sha256(NODE, sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return fr.equals(firstHash) && sr.equals(secondHash) && sn === 0;
}

// Origin, size and root of a C2SP signed note (the body before the blank line).
function parseNote(note) {
  const [body] = note.split('\n\n');
  const lines = body.split('\n');
  if (lines.length < 3 || !/^\d+$/.test(lines[1])) throw new Error(`malformed checkpoint note: ${JSON.stringify(note.slice(0, 80))}`);
  const root = Buffer.from(lines[2], 'base64');
  if (root.length !== 32) throw new Error('malformed checkpoint note: root is not 32 bytes');
  return { origin: lines[0], size: u64(lines[1]), root };
}

// --- gRPC calls ---------------------------------------------------------------------------

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + RPC_TIMEOUT_MS);
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

const SCHEMES = ['EORI', 'MID', 'TIN', 'NATIONAL', 'AUTH'];
const MODES = ['road', 'air', 'sea', 'rail'];

async function check(contract, args) {
  const home = required(args, 'home');
  const passphrase = readPassphrase(args['passphrase-file']);
  const serverCode = args['server-code'] || homeAdmin(home);
  const tls = path.join(home, 'tls');
  const credentials = grpc.credentials.createSsl(
    ownCaPem(home),
    privateKeyPem(path.join(tls, 'admin.key'), passphrase),
    certificatePem(path.join(tls, 'admin.pem'), '--home admin certificate'),
  );
  const request = {
    operator_id: required(args, 'operator'),
    issuer: required(args, 'issuer'),
    strict: Boolean(args.strict),
    evidence: Boolean(args.evidence),
  };
  if (args.at !== undefined) request.at = args.at;
  if (args.type !== undefined) request.type = args.type;
  if (args.scheme !== undefined) {
    const scheme = args.scheme.trim().toUpperCase();
    if (!SCHEMES.includes(scheme)) throw new UsageError(`--scheme ${JSON.stringify(args.scheme)}: not one of ${SCHEMES.join(', ')}`);
    request.scheme = `OPERATOR_ID_SCHEME_${scheme}`;
  }
  if (args.mode !== undefined) {
    const mode = args.mode.trim().toLowerCase();
    if (!MODES.includes(mode)) throw new UsageError(`--mode ${JSON.stringify(args.mode)}: not one of ${MODES.join(', ')}`);
    request.mode = `TRANSPORT_MODE_${mode.toUpperCase()}`;
  }
  const client = new contract.QueryService(required(args, 'target'), credentials, channelOptions(serverCode));
  try {
    return checkJson(await unary(client, 'Check', request));
  } finally {
    client.close();
  }
}

function batchJson(batch) {
  const note = batch.checkpoint ? Buffer.from(batch.checkpoint.note).toString('utf8') : null;
  const consistency = batch.consistency
    ? {
        old_size: u64(batch.consistency.old_size),
        new_size: u64(batch.consistency.new_size),
        hashes: batch.consistency.hashes.map(b64),
      }
    : null;
  return {
    start_index: u64(batch.start_index),
    entries: batch.entries.map((entry) => {
      if (entry.entry === 'envelope') {
        return { envelope: b64(entry.envelope), leaf_hash: b64(leafHash(entry.envelope)) };
      }
      if (entry.entry === 'leaf_hash') {
        if (entry.leaf_hash.length !== 32) throw new Error('a leaf hash that is not 32 bytes');
        return { envelope: null, leaf_hash: b64(entry.leaf_hash) };
      }
      throw new Error('a LogEntry with neither envelope nor leaf_hash');
    }),
    checkpoint: note,
    consistency,
  };
}

// Verify each batch as a receiver does (only possible holding the whole tree: from index 0).
function verifyBatches(batches) {
  const leaves = [];
  for (const batch of batches) {
    if (batch.start_index !== leaves.length) {
      batch.verified = false;
      batch.problem = `starts at ${batch.start_index}, expected ${leaves.length}`;
      continue;
    }
    for (const entry of batch.entries) leaves.push(Buffer.from(entry.leaf_hash, 'base64'));
    const s = leaves.length;
    const root = merkleRoot(leaves);
    const cp = parseNote(batch.checkpoint || '');
    const proof = batch.consistency ? batch.consistency.hashes.map((h) => Buffer.from(h, 'base64')) : [];
    batch.verified = cp.size >= s && verifyConsistency(s, cp.size, root, cp.root, proof);
    if (!batch.verified) batch.problem = `root at ${s} not consistent with the checkpoint of size ${cp.size}`;
  }
  return { size: leaves.length, root: b64(merkleRoot(leaves)) };
}

async function subscribe(contract, args) {
  const passphrase = readPassphrase(args['passphrase-file']);
  const serverCode = required(args, 'server-code');
  const credentials = grpc.credentials.createSsl(
    certificatePem(required(args, 'ca'), '--ca'),
    privateKeyPem(required(args, 'key'), passphrase),
    certificatePem(required(args, 'cert'), '--cert'),
  );
  const from = nonNegative(args, 'from', 0);
  const maxBatches = nonNegative(args, 'max-batches', 0); // 0: until the stream ends
  const untilSize = nonNegative(args, 'until-size', 0); // 0: no size bound
  const request = {
    from_index: String(from),
    max_batch_entries: nonNegative(args, 'max-batch-entries', 0),
    catch_up_only: !args.follow,
  };
  if (args.follow && maxBatches === 0 && untilSize === 0) {
    throw new UsageError('--follow needs --max-batches or --until-size (the live tail never ends)');
  }
  const client = new contract.ExchangeService(required(args, 'target'), credentials, channelOptions(serverCode));
  const batches = [];
  let end = 'complete';
  try {
    await new Promise((resolve, reject) => {
      const call = client.Subscribe(request);
      let done = false;
      call.on('data', (response) => {
        if (done) return;
        try {
          batches.push(batchJson(response.batch));
        } catch (error) {
          done = true;
          call.cancel();
          reject(error);
          return;
        }
        const last = batches[batches.length - 1];
        const reached = untilSize && last.start_index + last.entries.length >= untilSize;
        if (reached || (maxBatches && batches.length >= maxBatches)) {
          done = true;
          end = reached ? 'until_size' : 'max_batches';
          call.cancel();
          resolve();
        }
      });
      call.on('error', (error) => {
        if (!done) {
          done = true;
          reject(error);
        }
      });
      call.on('end', () => {
        if (!done) {
          done = true;
          resolve();
        }
      });
    });
  } finally {
    client.close();
  }
  const document = { server_code: serverCode, from_index: from, end, batches };
  if (from === 0) document.tree = verifyBatches(batches);
  return document;
}

// --- command line ---------------------------------------------------------------------------

function required(args, name) {
  const value = args[name];
  if (value === undefined || value === '') throw new UsageError(`--${name} is required`);
  return value;
}

function nonNegative(args, name, fallback) {
  if (args[name] === undefined) return fallback;
  if (!/^\d+$/.test(args[name])) throw new UsageError(`--${name} ${JSON.stringify(args[name])}: not a non-negative integer`);
  return u64(args[name]);
}

const OPTIONS = {
  target: { type: 'string' },
  home: { type: 'string' },
  operator: { type: 'string' },
  issuer: { type: 'string' },
  at: { type: 'string' },
  type: { type: 'string' },
  scheme: { type: 'string' },
  mode: { type: 'string' },
  strict: { type: 'boolean' },
  evidence: { type: 'boolean' },
  ca: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  'server-code': { type: 'string' },
  from: { type: 'string' },
  'max-batches': { type: 'string' },
  'max-batch-entries': { type: 'string' },
  'until-size': { type: 'string' },
  follow: { type: 'boolean' },
  'passphrase-file': { type: 'string' },
  'proto-dir': { type: 'string' },
  help: { type: 'boolean' },
};

const COMMANDS = { check, subscribe };

function usage() {
  const text = fs.readFileSync(__filename, 'utf8').split('\n');
  const start = text.findIndex((l) => l.includes('node client.js check'));
  const stop = text.findIndex((l) => l.startsWith("'use strict'"));
  return text.slice(start, stop).map((l) => l.replace(/^\/\/ ?/, '')).join('\n');
}

function exitCodeFor(error) {
  if (error instanceof UsageError) return 2;
  if (typeof error.code === 'number') {
    const { status } = grpc;
    if (error.code === status.UNAVAILABLE || error.code === status.DEADLINE_EXCEEDED) return 3;
    if (error.code === status.INVALID_ARGUMENT || error.code === status.OUT_OF_RANGE) return 2;
  }
  return 1;
}

function describe(error) {
  if (typeof error.code === 'number') {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === error.code) || error.code;
    return `${name}: ${error.details || error.message}`;
  }
  return error.message;
}

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError(error.message);
  }
  const [command, ...rest] = parsed.positionals;
  if (parsed.values.help || command === undefined) {
    process.stdout.write(`${usage()}\n`);
    return parsed.values.help ? 0 : 2;
  }
  if (!(command in COMMANDS)) throw new UsageError(`unknown command ${JSON.stringify(command)} (check or subscribe)`);
  if (rest.length) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}`);
  const contract = loadContract(path.resolve(parsed.values['proto-dir'] || DEFAULT_PROTO_DIR));
  const document = await COMMANDS[command](contract, parsed.values);
  process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`error: ${describe(error)}\n`);
    process.exitCode = exitCodeFor(error);
  },
);
