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

/** Pushes one body into the loader as one file. */
async function feed(
  loader: GgufLoader,
  file: ManifestFile,
  size: number,
  body: ReadableStream<Uint8Array>,
  cached: boolean,
  onProgress: (p: LoadProgress) => void,
): Promise<void> {
  loader.beginFile(file.name, size, file.sha256);
  const reader = body.getReader();
  let loaded = 0;
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new VisionThinkError("ModelLoadError", `download of ${file.name} interrupted after ${loaded} bytes: ${e}`, true);
      }
      if (chunk.done) break;
      loader.push(chunk.value);
      loaded += chunk.value.length;
      onProgress({ file: file.name, loaded, total: size, cached });
    }
    loader.endFile();
  } catch (e) {
    loader.abortFile();
    reader.cancel().catch(() => {});
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
    let body = res.body;
    let caching: Promise<boolean> | null = null;
    if (pinned) {
      const [mine, theirs] = body.tee();
      body = mine;
      caching = pinned
        .put(url, new Response(theirs, { headers: { "content-length": String(size) } }))
        .then(
          () => true,
          () => false,
        );
    }
    try {
      await feed(loader, file, size, body, false, onProgress);
      if (caching) await caching;
      return;
    } catch (e) {
      if (caching) {
        await caching;
        await pinned?.delete(url);
      }
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
