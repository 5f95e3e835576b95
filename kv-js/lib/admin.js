'use strict';
// The admin API: projects, their quotas and usage, and tokens.

const { checkKey } = require('./values');
const { fromGrpc } = require('./errors');

const QUOTA_FIELDS = ['maxKeys', 'maxBytes', 'opsPerSecond', 'writeBytesPerSecond'];
const LIMIT_FIELDS = ['opsPerSecond', 'writeBytesPerSecond'];

function limitsIn(given, fields, what) {
  if (given === undefined || given === null) return undefined;
  if (typeof given !== 'object') throw new TypeError(`${what} must be an object`);
  const out = {};
  for (const f of Object.keys(given)) {
    if (!fields.includes(f)) throw new TypeError(`${what}.${f} is not one of ${fields.join(', ')}`);
    const v = given[f];
    if (v === undefined || v === null) continue;
    if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`${what}.${f} must be a whole number`);
    out[f] = v;
  }
  return out;
}

function limitsOut(message, fields) {
  if (!message) return {};
  const out = {};
  for (const f of fields) if (message[f] !== undefined && message[f] !== null) out[f] = Number(message[f]);
  return out;
}

function projectOut(p) {
  return {
    name: p.name,
    keys: Number(p.keys),
    bytes: Number(p.bytes),
    quota: limitsOut(p.quota, QUOTA_FIELDS),
    incarnation: Number(p.incarnation),
  };
}

function tokenOut(t) {
  const out = {
    id: t.id,
    project: t.project,
    readOnly: t.readOnly,
    createdAtMs: Number(t.createdAtMs),
  };
  if (t.limits) out.limits = limitsOut(t.limits, LIMIT_FIELDS);
  return out;
}

/** The admin client of a connection (its token must be the admin token when the server has one). */
class Admin {
  constructor(conn) {
    this._conn = conn;
  }

  _call(method, request, safe) {
    return this._conn.unary(this._conn.adminStub, method, request, { project: '', safe });
  }

  /** Registers a project, optionally with a quota; ALREADY_EXISTS if it is. */
  async createProject(name, quota) {
    const request = { name: checkKey(name, 'name') };
    const q = limitsIn(quota, QUOTA_FIELDS, 'quota');
    if (q) request.quota = q;
    return projectOut(await this._call('CreateProject', request, false));
  }

  /** Removes a project with its data and tokens; resolves with the keys it removed. */
  async deleteProject(name) {
    const r = await this._call('DeleteProject', { name: checkKey(name, 'name') }, false);
    return Number(r.deletedKeys);
  }

  /** A project with its usage and quota; NOT_FOUND if unknown. */
  async getProject(name) {
    return projectOut(await this._call('GetProject', { name: checkKey(name, 'name') }, true));
  }

  /** Every registered project. */
  async listProjects() {
    const r = await this._call('ListProjects', {}, true);
    return r.projects.map(projectOut);
  }

  /** Replaces a project's quota (limits not given are removed). */
  async setQuota(name, quota) {
    const request = { name: checkKey(name, 'name'), quota: limitsIn(quota, QUOTA_FIELDS, 'quota') || {} };
    return projectOut(await this._call('SetQuota', request, true));
  }

  /**
   * Creates a token for `project` (options: readOnly, limits {
   * opsPerSecond, writeBytesPerSecond }). Resolves with { token, info }; the
   * secret is shown only here.
   */
  async createToken(project, options = {}) {
    const request = { project: checkKey(project, 'project'), readOnly: !!options.readOnly };
    const limits = limitsIn(options.limits, LIMIT_FIELDS, 'limits');
    if (limits) request.limits = limits;
    const r = await this._call('CreateToken', request, false);
    return { token: r.token, info: tokenOut(r.info) };
  }

  /** Revokes a token by id; false when there was no such token. */
  async revokeToken(id) {
    const r = await this._call('RevokeToken', { id: checkKey(id, 'id') }, false);
    return r.revoked;
  }

  /**
   * A consistent backup of the whole server (or of `options.project`),
   * streamed while writes go on: an async iterator of Buffers, the bytes of
   * the backup file in order (`kv-server restore --from FILE` reads it).
   * Only its opening is bounded by the deadline.
   */
  async *backup(options = {}) {
    const request = {};
    if (options.project !== undefined) request.project = checkKey(options.project, 'project');
    const conn = this._conn;
    const stream = conn.adminStub.Backup(request, conn.metadata(''));
    const timer = setTimeout(() => stream.cancel(), conn.timeoutMs);
    stream.once('metadata', () => clearTimeout(timer));
    try {
      for await (const chunk of stream) {
        clearTimeout(timer);
        yield Buffer.from(chunk.data);
      }
    } catch (err) {
      throw fromGrpc(err);
    } finally {
      clearTimeout(timer);
      stream.cancel();
    }
  }

  /** Tokens (never their secrets), of one project or of all. */
  async listTokens(project) {
    const r = await this._call('ListTokens', { project: project === undefined ? '' : checkKey(project, 'project') }, true);
    return r.tokens.map(tokenOut);
  }
}

module.exports = { Admin };
