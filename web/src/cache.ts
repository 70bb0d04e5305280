// Model files: download with progress, keep in the Cache API, verify SHA-256 on every use.

/** Progress of one file. */
export interface LoadProgress {
  /** File name inside the model folder. */
  file: string;
  /** Bytes received (or read from the cache). */
  loaded: number;
  /** Expected size in bytes (0 when the server does not say). */
  total: number;
  /** Whether the bytes came from the Cache API. */
  cached: boolean;
}

/** One file of a model: its name and, ideally, its SHA-256 (hex). */
export interface ManifestFile {
  name: string;
  sha256?: string;
  size?: number;
}

/** `visionthink-manifest.json`: what the model folder holds. */
export interface Manifest {
  files: ManifestFile[];
}

export const CACHE_NAME = "visionthink-models-v1";
const HASH_HEADER = "x-visionthink-sha256";

/** An error with a stable `name` (and `resumable` for interrupted downloads). */
export class VisionThinkError extends Error {
  resumable: boolean;
  constructor(name: string, message: string, resumable = false) {
    super(message);
    this.name = name;
    this.resumable = resumable;
  }
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as BufferSource);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `name` inside the model folder `base` (absolute, or relative to the page/worker). */
export function join(base: string, name: string): string {
  const folder = new URL(base.endsWith("/") ? base : base + "/", globalThis.location?.href);
  return new URL(name, folder).toString();
}

/** Reads the manifest, or discovers the standard HF files when there is none. */
export async function resolveManifest(base: string): Promise<Manifest> {
  const res = await fetch(join(base, "visionthink-manifest.json"));
  if (res.ok) {
    const m = (await res.json()) as Manifest;
    if (!Array.isArray(m.files)) {
      throw new VisionThinkError("ModelLoadError", "visionthink-manifest.json has no `files` array");
    }
    return m;
  }
  const files: ManifestFile[] = [{ name: "config.json" }, { name: "tokenizer.json" }];
  for (const optional of [
    "preprocessor_config.json",
    "generation_config.json",
    "chat_template.json",
    "tokenizer_config.json",
  ]) {
    const head = await fetch(join(base, optional), { method: "HEAD" });
    if (head.ok) files.push({ name: optional });
  }
  const index = await fetch(join(base, "model.safetensors.index.json"));
  if (index.ok) {
    const map = ((await index.json()) as { weight_map?: Record<string, string> }).weight_map ?? {};
    for (const shard of [...new Set(Object.values(map))].sort()) files.push({ name: shard });
  } else {
    files.push({ name: "model.safetensors" });
  }
  return { files };
}

/**
 * The response for a model file; a network failure, 429 or 5xx is a resumable
 * `ModelLoadError`, another HTTP error a final one.
 */
export async function fetchFile(url: string, name: string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new VisionThinkError("ModelLoadError", `download of ${name} failed: ${e}`, true);
  }
  if (!res.ok) {
    throw new VisionThinkError(
      "ModelLoadError",
      `download of ${name} failed: HTTP ${res.status}`,
      res.status >= 500 || res.status === 429,
    );
  }
  return res;
}

async function download(
  url: string,
  file: ManifestFile,
  onProgress: (p: LoadProgress) => void,
): Promise<Uint8Array> {
  const res = await fetchFile(url, file.name);
  const total = Number(res.headers.get("content-length") ?? file.size ?? 0);
  const reader = res.body?.getReader();
  if (!reader) return new Uint8Array(await res.arrayBuffer());
  const parts: Uint8Array[] = [];
  let loaded = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      loaded += value.length;
      onProgress({ file: file.name, loaded, total, cached: false });
    }
  } catch (e) {
    throw new VisionThinkError(
      "ModelLoadError",
      `download of ${file.name} interrupted after ${loaded} bytes: ${e}`,
      true,
    );
  }
  if (total && loaded !== total) {
    throw new VisionThinkError(
      "ModelLoadError",
      `download of ${file.name} ended after ${loaded} of ${total} bytes`,
      true,
    );
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Fetches every file of a model: from the Cache API when a cached copy's SHA-256 matches
 * (the manifest's, or the one recorded at download), otherwise from the network; a mismatching
 * cached copy is deleted and refetched, never used. Nothing is cached until a file is complete
 * and verified, so an interrupted download leaves no partial entry and a retry resumes with the
 * files already cached.
 */
export async function fetchModelFiles(
  base: string,
  opts: { useCache?: boolean; onProgress?: (p: LoadProgress) => void; manifest?: Manifest },
): Promise<Map<string, Uint8Array>> {
  const manifest = opts.manifest ?? (await resolveManifest(base));
  const onProgress = opts.onProgress ?? (() => {});
  const cache = opts.useCache !== false && typeof caches !== "undefined" ? await caches.open(CACHE_NAME) : null;
  const out = new Map<string, Uint8Array>();
  for (const file of manifest.files) {
    const url = join(base, file.name);
    if (cache) {
      const hit = await cache.match(url);
      if (hit) {
        const bytes = new Uint8Array(await hit.arrayBuffer());
        const want = file.sha256 ?? hit.headers.get(HASH_HEADER) ?? "";
        if (want && (await sha256Hex(bytes)) === want) {
          onProgress({ file: file.name, loaded: bytes.length, total: bytes.length, cached: true });
          out.set(file.name, bytes);
          continue;
        }
        await cache.delete(url);
      }
    }
    const bytes = await download(url, file, onProgress);
    const hash = await sha256Hex(bytes);
    if (file.sha256 && hash !== file.sha256) {
      throw new VisionThinkError(
        "ModelLoadError",
        `${file.name}: SHA-256 ${hash} does not match the manifest's ${file.sha256}`,
        true,
      );
    }
    if (cache) {
      await cache.put(
        url,
        new Response(bytes as BodyInit, {
          headers: { [HASH_HEADER]: hash, "content-length": String(bytes.length) },
        }),
      );
    }
    out.set(file.name, bytes);
  }
  return out;
}

/** Deletes every cached model file. */
export async function clearModelCache(): Promise<boolean> {
  if (typeof caches === "undefined") return false;
  return caches.delete(CACHE_NAME);
}
