// Compiled by `npm run typecheck` (tsc --noEmit), never run: the
// declarations in index.d.ts must accept the documented usage and refuse
// misuse (each @ts-expect-error line must be an error).
import { connect, createKv, KvError, newRequestId, type Entry, type WatchEvent, type JsonValue } from '../index';

interface Cart {
  items: { sku: string; qty: number }[];
}

async function usage(): Promise<void> {
  const kv = connect({ url: 'http://127.0.0.1:50051', project: 'shop', token: 'kv_x', timeoutMs: 5000 });
  const other = createKv({ url: 'https://kv.example:443', tls: { ca: 'PEM', serverName: 'kv.example' }, retry: { maxAttempts: 3 } });

  await kv.set('session:x', { user: 'ada', at: new Date() }, 60_000);
  await kv.set('n', 1);
  const cart = await kv.get<Cart>('cart:7');
  if (cart !== null) cart.items.forEach((i) => i.qty.toFixed());
  const exists: boolean = await kv.has('n');
  const removed: boolean = await kv.delete('n');
  const cleared: void = await kv.clear();

  const entry: Entry | null = await kv.getEntry('cart:7');
  if (entry) {
    const v: number = entry.version;
    const e: number | null = entry.expiresAtMs;
    const swapped = await kv.compareAndSwap('cart:7', v, { items: [] });
    if (!swapped.applied) swapped.version.toFixed();
    void e;
  }
  await kv.compareAndSwap('new', null, 1);
  const count: number = await kv.incr('visits');
  await kv.incr('rate:ip', 1, { ttlMs: 60_000, requestId: newRequestId() });
  const prefs = await kv.merge<{ theme?: string }>('prefs:ada', { theme: 'dark', beta: null });
  prefs.theme?.toUpperCase();
  const first: boolean = await kv.setIfAbsent('flag:new-ui', true);
  const many: Array<JsonValue | null> = await kv.getMany(['a', 'b']);
  const versions: number[] = await kv.setMany({ a: 1, b: 'two' });
  await kv.setMany([{ key: 'c', value: [1, 2], ttlMs: 1000 }]);
  const gone: number = await kv.deleteMany(['a', 'b']);
  for await (const page of kv.list({ prefix: 'cart:', limit: 100, keysOnly: true })) {
    for (const e of page.entries) e.key.toUpperCase();
    page.nextStartAfter?.toUpperCase();
  }
  const result = await kv.batch().checkAbsent('stock').set('stock', 10).incr('orders').commit({ requestId: 'order-7' });
  if (result.applied) result.results.length.toFixed();
  else result.currentVersion.toFixed();
  const watch = kv.watch({ prefix: 'cart:', fromVersion: 41 });
  await watch.ready;
  for await (const ev of watch) {
    const e: WatchEvent = ev;
    if (e.kind === 'set') JSON.stringify(e.value);
    break;
  }
  const project = await kv.admin.createProject('blog', { maxKeys: 1000 });
  project.keys.toFixed();
  const { token } = await kv.admin.createToken('blog', { readOnly: true });
  token.toUpperCase();
  kv.withProject('blog').has('x');
  for await (const chunk of kv.admin.backup({ project: 'blog' })) chunk.byteLength.toFixed();

  try {
    await kv.set('', 1);
  } catch (err) {
    if (err instanceof KvError && err.code === 'INVALID_ARGUMENT') err.message.toUpperCase();
  }

  // @ts-expect-error: a TTL is a number of milliseconds
  await kv.set('k', 1, '60s');
  // @ts-expect-error: functions are not JSON
  await kv.set('k', () => 1);
  // @ts-expect-error: BigInt is not JSON
  await kv.set('k', 10n);
  // @ts-expect-error: keys are strings
  await kv.get(7);
  // @ts-expect-error: not a code name
  const bad: KvError['code'] = 'NOPE';

  void [exists, removed, cleared, count, first, many, versions, gone, other, bad];
  kv.close();
}

void usage;
