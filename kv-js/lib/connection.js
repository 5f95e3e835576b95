'use strict';
// One connection per process and configuration: the gRPC channel, the
// stubs on it, the auto-batching stream, and unary calls with deadlines and
// retries. connect() called again with the same options (each invocation of
// a function, say) gets the same connection, so nothing is dialled twice.

const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { KvError, fromGrpc, deadlineError } = require('./errors');
const { Pipeline } = require('./pipeline');
const { normaliseRetry, backoffMs, sleep } = require('./retry');

const PROJECT_HEADER = 'x-kv-project';
const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_REQUEST_ID_BYTES = 128;

// Decoding options shared by every stub: uint64 as numbers (versions and
// unix-ms deadlines stay far below 2^53), enums by name, oneofs named.
const LOAD_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [path.join(__dirname, '..', 'proto')],
};

let loaded;
function services() {
  if (!loaded) {
    const definition = protoLoader.loadSync(['kv/v1/kv.proto', 'kv/v1/admin.proto'], LOAD_OPTIONS);
    const pkg = grpc.loadPackageDefinition(definition).kv.v1;
    loaded = { KvService: pkg.KvService, AdminService: pkg.AdminService, definition };
  }
  return loaded;
}

// Request ids: a random prefix per process (96 bits) and a counter. Unique
// across processes without reading the OS's random source for every write,
// which cost a tenth of the client's CPU under a write load.
const ID_PREFIX = crypto.randomBytes(12).toString('base64url');
let idCounter = 0;

/** A fresh request id, unique across processes and calls. */
function newRequestId() {
  idCounter++;
  return `${ID_PREFIX}.${idCounter.toString(36)}`;
}

function checkRequestId(id) {
  if (id === undefined || id === null) return undefined;
  if (typeof id !== 'string' || id === '' || Buffer.byteLength(id) > MAX_REQUEST_ID_BYTES) {
    throw new TypeError(`requestId must be a string of 1 to ${MAX_REQUEST_ID_BYTES} bytes`);
  }
  return id;
}

function pem(value, what) {
  if (value === undefined || value === null) return null;
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'string') return Buffer.from(value);
  throw new TypeError(`tls.${what} must be PEM text (a string or a Buffer)`);
}

/** Splits a URL into the channel target and whether it asks for TLS. */
function parseUrl(url) {
  if (typeof url !== 'string' || url === '') {
    throw new TypeError('url must be a string such as "http://127.0.0.1:50051"');
  }
  const m = /^(?:(https?):\/\/)?([^/]+)\/?$/.exec(url);
  if (!m) throw new TypeError(`url ${JSON.stringify(url)} is not of the form http(s)://host:port`);
  const [, scheme, hostPort] = m;
  const target = /:\d+$/.test(hostPort) ? hostPort : `${hostPort}:${scheme === 'https' ? 443 : 80}`;
  return { target, https: scheme === 'https' };
}

class Connection {
  constructor(key, options) {
    this.key = key;
    this.refs = 0;
    this.closed = false;
    const { target, https } = parseUrl(options.url);
    const tls = options.tls === undefined ? https : options.tls;
    let credentials;
    const channelOptions = {
      // A restarted server is found again within a second, not the
      // default's minute-long backoff.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      'grpc.max_receive_message_length': 64 << 20,
      'grpc.max_send_message_length': 64 << 20,
      ...(options.channelOptions || {}),
    };
    if (tls) {
      const t = tls === true ? {} : tls;
      credentials = grpc.credentials.createSsl(pem(t.ca, 'ca'), pem(t.key, 'key'), pem(t.cert, 'cert'));
      if (t.serverName) {
        channelOptions['grpc.ssl_target_name_override'] = t.serverName;
        channelOptions['grpc.default_authority'] = t.serverName;
      }
    } else {
      credentials = grpc.credentials.createInsecure();
    }
    const { KvService, AdminService } = services();
    this.channel = new grpc.Channel(target, credentials, channelOptions);
    this.kv = new KvService(target, credentials, { channelOverride: this.channel });
    this.adminStub = new AdminService(target, credentials, { channelOverride: this.channel });
    this.timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs;
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) {
      throw new TypeError('timeoutMs must be a positive number of milliseconds');
    }
    this.retry = normaliseRetry(options.retry);
    this.autoRequestIds = options.autoRequestIds !== false;
    this.honourRetryAfter = options.honourRetryAfter === true;
    this.baseMetadata = new grpc.Metadata();
    if (options.token !== undefined && options.token !== null) {
      if (typeof options.token !== 'string' || options.token === '') {
        throw new TypeError('token must be a non-empty string');
      }
      this.baseMetadata.set('authorization', `Bearer ${options.token}`);
    }
    this.pipeline = options.autoBatching === false ? null : new Pipeline(this);
  }

  /** Metadata of a unary call on `project` ('' = the token's or default). */
  metadata(project) {
    const m = this.baseMetadata.clone();
    if (project) m.set(PROJECT_HEADER, project);
    return m;
  }

  /** The request id a write carries: the caller's, or a fresh one. */
  requestId(given) {
    const id = checkRequestId(given);
    if (id !== undefined) return id;
    return this.autoRequestIds ? newRequestId() : '';
  }

  /**
   * A unary call with the connection's deadline and retries. `safe` says
   * whether sending it twice is harmless (a read, or a write with a
   * request id).
   */
  async unary(stub, method, request, { project, safe, requestId, timeoutMs }) {
    const timeout = timeoutMs || this.timeoutMs;
    const deadline = Date.now() + timeout;
    let attempts = 0;
    let maybeSent = false;
    for (;;) {
      if (Date.now() >= deadline) throw deadlineError(timeout, Math.max(attempts, 1), maybeSent, requestId || undefined);
      attempts++;
      let result;
      try {
        result = await new Promise((resolve, reject) => {
          stub[method](request, this.metadata(project), { deadline: new Date(deadline) }, (err, response) =>
            err ? reject(err) : resolve(response),
          );
        });
        return result;
      } catch (err) {
        const error = fromGrpc(err);
        if (error.code === 'DEADLINE_EXCEEDED' && Date.now() >= deadline - 1) {
          throw deadlineError(timeout, attempts, true, requestId || undefined);
        }
        let wait;
        if (error.code === 'UNAVAILABLE' && safe) {
          maybeSent = true;
          wait = backoffMs(this.retry, attempts);
        } else if (
          error.code === 'RESOURCE_EXHAUSTED' &&
          this.honourRetryAfter &&
          error.retryAfterMs !== undefined &&
          Date.now() + error.retryAfterMs < deadline
        ) {
          wait = error.retryAfterMs;
        } else {
          throw error;
        }
        if (attempts >= this.retry.maxAttempts) throw error;
        if (Date.now() + wait >= deadline) {
          throw deadlineError(timeout, attempts, maybeSent, requestId || undefined);
        }
        await sleep(wait);
      }
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.pipeline) this.pipeline.close();
    this.kv.close();
    this.adminStub.close();
    this.channel.close();
  }
}

const connections = new Map();

function connectionKey(options) {
  const tls = options.tls;
  const tlsKey =
    tls && typeof tls === 'object'
      ? ['ca', 'cert', 'key', 'serverName'].map((k) => (tls[k] === undefined ? '' : String(tls[k])))
      : tls;
  return JSON.stringify([
    options.url,
    options.token || '',
    tlsKey,
    options.timeoutMs,
    options.retry,
    options.autoRequestIds,
    options.autoBatching,
    options.honourRetryAfter,
    options.channelOptions,
  ]);
}

/** The process-wide connection for these options (made on first use). */
function acquire(options) {
  const key = connectionKey(options);
  let conn = connections.get(key);
  if (!conn || conn.closed) {
    conn = new Connection(key, options);
    connections.set(key, conn);
  }
  conn.refs++;
  return conn;
}

function release(conn) {
  conn.refs--;
  if (conn.refs <= 0) {
    if (connections.get(conn.key) === conn) connections.delete(conn.key);
    conn.close();
  }
}

module.exports = {
  acquire,
  release,
  services,
  newRequestId,
  checkRequestId,
  KvError,
  PROJECT_HEADER,
};
