// Types of @kv/client. The runtime is index.js and lib/ (plain JavaScript,
// no build step); `npm run typecheck` checks these declarations against
// types/usage.ts.

/** Any JSON value: what a key can hold. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/**
 * What `set` and the other writes accept: JSON values, plus what
 * JSON.stringify turns into them (a Date becomes its ISO string, objects with
 * toJSON(), `undefined` members of objects, which are dropped).
 */
export type JsonInput =
  | JsonValue
  | Date
  | { toJSON(key?: string): unknown }
  | JsonInput[]
  | { [key: string]: JsonInput | undefined };

/** The gRPC status code names. */
export type Code =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

/** The code names, indexed by numeric gRPC code. */
export const CODE_NAMES: readonly Code[];

/** An error of the server or the transport. */
export class KvError extends Error {
  constructor(code: Code | number, message: string);
  readonly name: 'KvError';
  /** The gRPC code name, e.g. "INVALID_ARGUMENT". */
  readonly code: Code;
  /** The numeric gRPC code, e.g. 3. */
  readonly grpcCode: number;
  /** A rate limit's hint: ms until the call may be admitted. */
  readonly retryAfterMs?: number;
  /** DEADLINE_EXCEEDED: the attempts made. */
  readonly attempts?: number;
  /** DEADLINE_EXCEEDED: whether an attempt may have been applied. */
  readonly mayHaveApplied?: boolean;
  /** DEADLINE_EXCEEDED of a write: its request id, safe to retry with. */
  readonly requestId?: string;
}

/** TLS: the CA to trust instead of the system roots, a client pair for mutual TLS, the name to verify. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  serverName?: string;
}

/** How calls are retried (exponential backoff with full jitter, within the deadline). */
export interface RetryOptions {
  /** Attempts at most, the first included (default 10). */
  maxAttempts?: number;
  /** Upper bound of the first backoff (default 20 ms). */
  initialBackoffMs?: number;
  /** Largest backoff bound (default 1000 ms). */
  maxBackoffMs?: number;
  /** Growth of the bound per attempt (default 2). */
  multiplier?: number;
}

export interface ConnectOptions {
  /** "http://host:port" or "https://host:port" (default http://127.0.0.1:50051). */
  url?: string;
  /** The project of this kv's keys (default: the token's, or "default"). */
  project?: string;
  /** A project token, or the admin token. */
  token?: string;
  /** TLS: true for the system roots, or options (default: when the URL is https). */
  tls?: boolean | TlsOptions;
  /** Deadline of each call, retries included (default 10000). */
  timeoutMs?: number;
  /** Retry policy, or false for one attempt. */
  retry?: RetryOptions | false;
  /** Give every write a fresh request id when the caller gives none (default true). */
  autoRequestIds?: boolean;
  /** Share one Pipeline stream among concurrent single-key calls (default true). */
  autoBatching?: boolean;
  /** Retry a rate-limited call after the server's retry-after hint, within the deadline (default false). */
  honourRetryAfter?: boolean;
  /** Extra grpc-js channel options. */
  channelOptions?: Record<string, string | number>;
}

/** A stored entry. */
export interface Entry<T = JsonValue> {
  value: T;
  /** The version of the change that last wrote it. */
  version: number;
  /** Its deadline in unix ms, or null without a TTL. */
  expiresAtMs: number | null;
  /** The project's incarnation. */
  incarnation: number;
}

export interface WriteOptions {
  /** Makes a retry safe: the server answers it with the first outcome. */
  requestId?: string;
}

export interface SetOptions extends WriteOptions {
  ttlMs?: number;
  keepTtl?: boolean;
  ifAbsent?: boolean;
  ifVersion?: number;
}

export interface TtlOptions extends WriteOptions {
  ttlMs?: number;
}

export interface SetResult {
  applied: boolean;
  /** The new version, or (not applied) the key's current one, 0 when absent. */
  version: number;
}

export interface DeleteResult {
  deleted: boolean;
  version: number;
}

export interface SetManyEntry {
  key: string;
  value: JsonInput;
  ttlMs?: number;
  keepTtl?: boolean;
}

export interface ListOptions {
  prefix?: string;
  startAfter?: string | null;
  /** 1 to 1000; 0 or absent means 100. */
  limit?: number;
  keysOnly?: boolean;
}

export interface ListEntry<T = JsonValue> {
  key: string;
  /** Absent with keysOnly. */
  value?: T;
  version: number;
  expiresAtMs: number | null;
}

export interface ListPage<T = JsonValue> {
  entries: ListEntry<T>[];
  /** Pass as startAfter for the next page; null on the last. */
  nextStartAfter: string | null;
  /** The project's version when the page was read. */
  version: number;
  incarnation: number;
}

export interface WatchOptions {
  /** Exactly this key. */
  key?: string;
  /** Every key starting with this. */
  prefix?: string;
  /** Deliver every change after this version (absent: from now; 0: from the first). */
  fromVersion?: number;
  /** The incarnation fromVersion belongs to. */
  incarnation?: number;
  /** Reopen after breaks (default true). */
  resume?: boolean;
}

export type WatchEvent<T = JsonValue> =
  | { kind: 'set'; key: string; value: T; version: number; expiresAtMs: number | null; incarnation: number }
  | { kind: 'deleted' | 'expired'; key: string; version: number; incarnation: number }
  | { kind: 'cleared'; key: ''; version: number; incarnation: number };

export class Watch<T = JsonValue> implements AsyncIterableIterator<WatchEvent<T>> {
  /** Resolves once the server accepted the watch. */
  readonly ready: Promise<{ startVersion: number | null; incarnation: number | null }>;
  readonly lastVersion: number | null;
  readonly lastIncarnation: number | null;
  readonly startVersion: number | null;
  readonly resumes: number;
  next(): Promise<IteratorResult<WatchEvent<T>>>;
  return(): Promise<IteratorResult<WatchEvent<T>>>;
  [Symbol.asyncIterator](): Watch<T>;
  close(): void;
}

export type BatchResult =
  | { applied: true; results: Array<{ version: number; deleted?: boolean; value?: JsonValue }> }
  | { applied: false; failedCheck: number | null; currentVersion: number };

export class Batch {
  checkVersion(key: string, version: number): this;
  checkAbsent(key: string): this;
  set(key: string, value: JsonInput, options?: number | { ttlMs?: number; keepTtl?: boolean }): this;
  delete(key: string): this;
  incr(key: string, delta?: number, options?: number | { ttlMs?: number }): this;
  merge(key: string, patch: JsonInput, options?: number | { ttlMs?: number }): this;
  commit(options?: WriteOptions): Promise<BatchResult>;
}

export interface Quota {
  maxKeys?: number;
  maxBytes?: number;
  opsPerSecond?: number;
  writeBytesPerSecond?: number;
}

export interface TokenLimits {
  opsPerSecond?: number;
  writeBytesPerSecond?: number;
}

export interface ProjectInfo {
  name: string;
  keys: number;
  bytes: number;
  quota: Quota;
  incarnation: number;
}

export interface TokenInfo {
  id: string;
  project: string;
  readOnly: boolean;
  createdAtMs: number;
  limits?: TokenLimits;
}

export class Admin {
  createProject(name: string, quota?: Quota): Promise<ProjectInfo>;
  deleteProject(name: string): Promise<number>;
  getProject(name: string): Promise<ProjectInfo>;
  listProjects(): Promise<ProjectInfo[]>;
  setQuota(name: string, quota: Quota): Promise<ProjectInfo>;
  createToken(project: string, options?: { readOnly?: boolean; limits?: TokenLimits }): Promise<{ token: string; info: TokenInfo }>;
  revokeToken(id: string): Promise<boolean>;
  listTokens(project?: string): Promise<TokenInfo[]>;
  /** The backup file's bytes, in order. */
  backup(options?: { project?: string }): AsyncGenerator<Buffer, void, undefined>;
}

export class Kv {
  private constructor();
  /** The project of this handle ('' = the token's, or "default"). */
  readonly project: string;

  /** The value, or null when the key is missing or expired (or holds null). */
  get<T = JsonValue>(key: string): Promise<T | null>;
  /** Stores a value; ttlMs in milliseconds. */
  set(key: string, value: JsonInput, ttlMs?: number): Promise<void>;
  /** Whether the key exists and has not expired. */
  has(key: string): Promise<boolean>;
  /** Removes the key; true if it existed. */
  delete(key: string, options?: WriteOptions): Promise<boolean>;
  /** Removes every key of the project. */
  clear(options?: WriteOptions): Promise<void>;

  /** The entry, or null when missing or expired (a stored null is an entry). */
  getEntry<T = JsonValue>(key: string): Promise<Entry<T> | null>;
  setWith(key: string, value: JsonInput, options?: SetOptions): Promise<SetResult>;
  setIfAbsent(key: string, value: JsonInput, ttlMs?: number): Promise<boolean>;
  /** Writes only if the key is at `version` (null: only if absent). */
  compareAndSwap(key: string, version: number | null, value: JsonInput, options?: TtlOptions & { keepTtl?: boolean }): Promise<SetResult>;
  deleteWith(key: string, options?: WriteOptions & { ifVersion?: number }): Promise<DeleteResult>;
  deleteIfVersion(key: string, version: number, options?: WriteOptions): Promise<DeleteResult>;
  clearCount(options?: WriteOptions): Promise<number>;
  incr(key: string, delta?: number, options?: TtlOptions): Promise<number>;
  merge<T = JsonValue>(key: string, patch: JsonInput, options?: TtlOptions): Promise<T>;
  getMany<T = JsonValue>(keys: string[]): Promise<Array<T | null>>;
  getManyEntries<T = JsonValue>(keys: string[]): Promise<Array<Entry<T> | null>>;
  setMany(entries: Record<string, JsonInput> | SetManyEntry[], options?: TtlOptions): Promise<number[]>;
  deleteMany(keys: string[], options?: WriteOptions): Promise<number>;
  listPage<T = JsonValue>(options?: ListOptions): Promise<ListPage<T>>;
  list<T = JsonValue>(options?: ListOptions): AsyncGenerator<ListPage<T>, void, undefined>;
  watch<T = JsonValue>(options?: WatchOptions): Watch<T>;
  batch(): Batch;
  /** Another project over the same connection (open mode or the admin token). */
  withProject(name: string): Kv;
  readonly admin: Admin;
  /** Lets go of the connection (closed once every kv of it is). */
  close(): void;
}

/** Connects (or reuses this process's connection with these options). */
export function connect(options?: ConnectOptions): Kv;
/** Same as connect. */
export function createKv(options?: ConnectOptions): Kv;
/** A fresh random request id. */
export function newRequestId(): string;
