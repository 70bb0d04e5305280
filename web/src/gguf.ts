// A llama.cpp GGUF model (a text GGUF and an mmproj GGUF, whole or as `gguf-split` parts)
// streamed part by part into the engine: each response body goes chunk by chunk to the wasm
// loader, which hands every tensor to WebGPU (or the CPU fallback) as soon as its bytes are in,
// so neither the JS heap nor the wasm heap ever holds a whole file. Each part is verified by the
// engine against the manifest's SHA-256 while it streams, and cached (Cache API) only once
// verified; a part that fails is refetched once, then a typed error. An interrupted load leaves
// the parts already verified in the cache, so the next load resumes at the first missing part.

import { type Engine as WasmEngine, GgufLoader } from "../pkg/visionthink_wasm.js";
import {
  CACHE_NAME,
  fetchFile,
  join,
  type LoadProgress,
  type Manifest,
  type ManifestFile,
  VisionThinkError,
} from "./cache.js";

/** Whether a manifest describes a GGUF model (any `.gguf` file). */
export function isGgufManifest(m: Manifest): boolean {
  return m.files.some((f) => f.name.endsWith(".gguf"));
}

/** The GGUF files in load order: by name, so each split set's first part precedes its others. */
export function ggufFiles(m: Manifest): ManifestFile[] {
  return m.files.filter((f) => f.name.endsWith(".gguf")).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

const isChecksum = (e: unknown) => e instanceof Error && e.name === "ModelLoadError" && /SHA-256/.test(e.message);

/** Bytes read per chunk when the body is a byte stream (one buffer, reused for the whole file). */
const CHUNK_BYTES = 1 << 20;
/** Chunks the Cache API copy may fall behind the engine before the engine waits for it. */
const CACHE_QUEUE_CHUNKS = 8;

/** Reads a body chunk by chunk; a chunk is only valid until the next `read`. */
interface ChunkReader {
  read(): Promise<Uint8Array | null>;
  cancel(): void;
}

/**
 * A byte stream (fetch and Cache API bodies in current browsers) is read into one reused
 * buffer, so streaming a part allocates no garbage: the JS heap stays flat however large the
 * part. Any other stream is read as it comes.
 */
function chunkReader(body: ReadableStream<Uint8Array>): ChunkReader {
  let byob: ReadableStreamBYOBReader | null = null;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    byob = null;
  }
  if (byob) {
    const reader = byob;
    let buffer: ArrayBuffer = new ArrayBuffer(CHUNK_BYTES);
    return {
      async read() {
        const r = await reader.read(new Uint8Array(buffer, 0, CHUNK_BYTES));
        if (r.done || !r.value) return null;
        buffer = r.value.buffer as ArrayBuffer;
        return r.value;
      },
      cancel: () => void reader.cancel().catch(() => {}),
    };
  }
  const reader = body.getReader();
  return {
    async read() {
      const r = await reader.read();
      return r.done ? null : r.value;
    },
    cancel: () => void reader.cancel().catch(() => {}),
  };
}

/**
 * The Cache API copy of a part, written from the chunks the engine reads: a bounded queue
 * (the engine waits while it is full), so a slow cache write never piles chunks up in memory
 * as a `tee()` would. The entry is only completed when the part is verified (`close`); a failed
 * part errors the stream (`fail`), so nothing partial is stored. A cache that refuses the entry
 * (quota) stops receiving chunks; the load goes on uncached.
 */
class CacheCopy {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private open = true;
  private wake: (() => void) | null = null;
  /** Whether the entry was stored. */
  readonly stored: Promise<boolean>;

  constructor(cache: Cache, url: string, size: number) {
    const stream = new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          this.controller = c;
        },
        pull: () => this.resume(),
        cancel: () => {
          this.open = false;
          this.resume();
        },
      },
      new CountQueuingStrategy({ highWaterMark: CACHE_QUEUE_CHUNKS }),
    );
    this.stored = cache.put(url, new Response(stream, { headers: { "content-length": String(size) } })).then(
      () => true,
      () => false,
    );
  }

  private resume() {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Queues a copy of `chunk`; waits while the queue is full. */
  async write(chunk: Uint8Array): Promise<void> {
    if (!this.open) return;
    this.controller.enqueue(chunk.slice());
    while (this.open && (this.controller.desiredSize ?? 1) <= 0) {
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  close() {
    if (this.open) this.controller.close();
    this.open = false;
  }

  fail(e: unknown) {
    if (this.open) this.controller.error(e);
    this.open = false;
  }
}

/** Pushes one body into the loader as one file (and into the cache copy, when there is one). */
async function feed(
  loader: GgufLoader,
  file: ManifestFile,
  size: number,
  body: ReadableStream<Uint8Array>,
  cached: boolean,
  onProgress: (p: LoadProgress) => void,
  copy: CacheCopy | null = null,
): Promise<void> {
  loader.beginFile(file.name, size, file.sha256);
  const reader = chunkReader(body);
  let loaded = 0;
  try {
    for (;;) {
      let chunk: Uint8Array | null;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new VisionThinkError("ModelLoadError", `download of ${file.name} interrupted after ${loaded} bytes: ${e}`, true);
      }
      if (!chunk) break;
      loader.push(chunk);
      loaded += chunk.length;
      if (copy) await copy.write(chunk);
      onProgress({ file: file.name, loaded, total: size, cached });
    }
    loader.endFile();
    copy?.close();
  } catch (e) {
    copy?.fail(e);
    loader.abortFile();
    reader.cancel();
    throw e;
  }
}

async function streamPart(
  loader: GgufLoader,
  base: string,
  file: ManifestFile,
  cache: Cache | null,
  onProgress: (p: LoadProgress) => void,
): Promise<void> {
  const url = join(base, file.name);
  // Only a part the manifest pins is cached: the engine checks the pin as it streams.
  const pinned = cache && file.sha256 ? cache : null;
  if (pinned) {
    const hit = await pinned.match(url);
    if (hit?.body) {
      const size = file.size ?? Number(hit.headers.get("content-length") ?? 0);
      try {
        await feed(loader, file, size, hit.body, true, onProgress);
        return;
      } catch (e) {
        // A corrupted or unreadable cached copy is dropped and fetched again, never used.
        if (!(e instanceof Error) || e.name !== "ModelLoadError") throw e;
        await pinned.delete(url);
      }
    }
  }
  for (let attempt = 0; ; attempt++) {
    const res = await fetchFile(url, file.name);
    if (!res.body) throw new VisionThinkError("ModelLoadError", `download of ${file.name}: the response has no body`);
    const size = file.size ?? Number(res.headers.get("content-length") ?? NaN);
    if (!Number.isFinite(size)) {
      throw new VisionThinkError("ModelLoadError", `${file.name}: neither the manifest nor the server gives its size`);
    }
    const copy = pinned ? new CacheCopy(pinned, url, size) : null;
    try {
      await feed(loader, file, size, res.body, false, onProgress, copy);
      if (copy) await copy.stored;
      return;
    } catch (e) {
      if (copy && (await copy.stored)) await pinned?.delete(url);
      if (isChecksum(e) && attempt === 0) continue;
      throw e;
    }
  }
}

/**
 * Loads a GGUF model folder (its manifest lists the `.gguf` files, ideally with `size` and
 * `sha256`, as `visionthink convert` writes it) onto the executor `loadOptions` asks for.
 */
export async function loadGguf(
  base: string,
  manifest: Manifest,
  loadOptions: object,
  opts: { useCache?: boolean; onProgress?: (p: LoadProgress) => void },
): Promise<WasmEngine> {
  const onProgress = opts.onProgress ?? (() => {});
  const cache = opts.useCache !== false && typeof caches !== "undefined" ? await caches.open(CACHE_NAME) : null;
  const loader = await GgufLoader.create(loadOptions);
  try {
    for (const file of ggufFiles(manifest)) await streamPart(loader, base, file, cache, onProgress);
  } catch (e) {
    loader.free();
    throw e;
  }
  return loader.finish();
}
