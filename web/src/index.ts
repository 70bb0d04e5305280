// VisionThink for the web: `createEngine({ model, onProgress })`, then
// `engine.ask({ image, question, stream: true })`.

import init, {
  ChatSession,
  Engine as WasmEngine,
  lowResPreview as wasmLowResPreview,
  wasmHeapBytes as wasmHeap,
} from "../pkg/visionthink_wasm.js";
import {
  clearModelCache,
  fetchModelFiles,
  type LoadProgress,
  type Manifest,
  resolveManifest,
  VisionThinkError,
} from "./cache.js";
import { isGgufManifest, loadGguf } from "./gguf.js";

export { clearModelCache, VisionThinkError };
export type { LoadProgress, Manifest };

/** Where the model runs. */
export type BackendChoice = "auto" | "webgpu" | "cpu";

/** How WebGPU stores 2-D weights. */
export type WeightStorage = "f32" | "f16" | "int8";

export interface EngineOptions {
  /**
   * Base URL of a model folder: HF layout (optional `visionthink-manifest.json`), or a GGUF
   * model whose `visionthink-manifest.json` lists a text GGUF and an mmproj GGUF (whole or
   * `gguf-split` parts, as `visionthink convert` writes them), streamed part by part into the
   * GPU without holding a file in memory.
   */
  model?: string;
  /**
   * Base URL of an OpenAI-compatible chat server (vLLM serving VisionThink, `visionthink
   * serve`, …), e.g. `https://host/v1`, instead of `model`: the protocol runs in this page (the
   * core compiled to wasm builds every request and reads every reply) and the server runs the
   * model. The server must allow this page's origin (CORS).
   */
  endpoint?: string;
  /** Model name on the server (default: the first one `GET /models` lists). */
  remoteModel?: string;
  /** Bearer token for the server (never embed a secret key in a public page). */
  apiKey?: string;
  /** Ask the server to stream tokens (server-sent events; default true). */
  remoteStream?: boolean;
  /** Extra attempts after a network error, 408, 429 or 5xx (default 2; a stream only before its first token). */
  remoteRetries?: number;
  /** Bytes loaded per file. */
  onProgress?: (p: LoadProgress) => void;
  /** `auto` (default): WebGPU when an adapter answers within `adapterTimeoutMs`, else CPU. */
  backend?: BackendChoice;
  /**
   * How WebGPU stores the weights: `"f32"` (default), `"f16"` (2× less GPU memory, f32
   * arithmetic, no `shader-f16` needed) or `"int8"` (4× less; measured accuracy cost in the
   * README). Parsed by the engine; an unknown name is a `TypeError`.
   */
  weights?: WeightStorage;
  /** Older spelling of `weights: "int8"` (wins over `f16`). */
  int8?: boolean;
  /** Older spelling of `weights: "f16"`. */
  f16?: boolean;
  /** Keep weights in the Cache API (default true). */
  cache?: boolean;
  /** How long to wait for `navigator.gpu.requestAdapter()` (default 5000 ms). */
  adapterTimeoutMs?: number;
  /** The manifest, when not served next to the model. */
  manifest?: Manifest;
  /** URL or bytes of `visionthink_wasm_bg.wasm` (default: next to the package's glue). */
  wasm?: string | URL | ArrayBuffer;
}

/** An image: encoded bytes (PNG, JPEG, WebP, GIF), a Blob/File, or a URL. */
export type ImageInput = Uint8Array | ArrayBuffer | Blob | string | URL;

export interface AskRequest {
  image: ImageInput;
  question: string;
  stream?: boolean;
  /** New-token budget per model turn (default 8192, as in the Rust SDK and the official evaluation). */
  maxNewTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Keep generating past end-of-turn tokens (benchmarks). */
  ignoreEos?: boolean;
  /** Model generation rounds (default 2, official; 3 with `tools: "resize,crop"`). */
  maxRounds?: number;
  /** Images per episode, the half-size one included (default 2, official; 3 with `tools: "resize,crop"`). */
  maxImages?: number;
  /**
   * The tools offered to the model: `"resize"` (default: the official protocol and system prompt)
   * or `"resize,crop"` (beyond the paper: `crop_image` also returns a box of the original image).
   */
  tools?: "resize" | "resize,crop";
  /** Teacher-forced turn texts (replay a recorded trajectory). */
  forcedTurns?: string[];
  /** Aborts the generation (rejects with an `AbortError`). */
  signal?: AbortSignal;
}

/** A streamed event. */
export type AskEvent =
  | { type: "token"; turn: number; id: number; text: string }
  | { type: "resize" };

export interface Timings {
  preprocess_ms: number;
  vision_ms: number;
  prefill_ms: number;
  decode_ms: number;
  total_ms: number;
  generated_tokens: number;
  prefill_tokens: number;
  /** WebGPU only (0 otherwise): decode steps' recording and submitting, before the device wait. */
  decode_host_ms: number;
  /** WebGPU only (0 otherwise): compute dispatches of the decode steps. */
  decode_dispatches: number;
}

/** Where an engine runs the model. */
export type EngineBackend = "webgpu" | "cpu" | "remote";

/** The answer record (same fields as the Rust SDK's `Answer`, plus `backend`). */
export interface Answer {
  text: string;
  thinking: string;
  used_high_res: boolean;
  /** Of the tool images, how many were crops (the extended tool set; 0 with the official one). */
  crops: number;
  /** The regions the crops cut, in order, as [left, top, right, bottom] fractions of the image. */
  crop_regions: [number, number, number, number][];
  turns: string[];
  visual_tokens: number;
  visual_tokens_full_res: number;
  end: string;
  timings: Timings;
  backend: EngineBackend;
}

/** A streaming answer: iterate the events, then await `result`. */
export interface AnswerStream extends AsyncIterable<AskEvent> {
  result: Promise<Answer>;
  cancel(): void;
}

export interface VisionThinkEngine {
  readonly backend: EngineBackend;
  readonly notice: string | null;
  ask(req: AskRequest & { stream: true }): AnswerStream;
  ask(req: AskRequest & { stream?: false }): Promise<Answer>;
  cancel(): void;
  /**
   * Frees the GPU now by destroying the device, as a lost device would be; a running `ask`
   * rejects with `DeviceLost`. After a lost device (this, a driver reset, a GPU process crash)
   * the next `ask` loads the model again on a fresh device (from the Cache API when caching is
   * on) and answers. No effect on the CPU backend.
   */
  destroyDevice(): void;
}

let ready: Promise<unknown> | null = null;

/** Initialises the wasm module once. */
export function initWasm(wasm?: string | URL | ArrayBuffer): Promise<unknown> {
  ready ??= init(wasm === undefined ? undefined : { module_or_path: wasm });
  return ready;
}

async function imageBytes(image: ImageInput): Promise<Uint8Array> {
  if (image instanceof Uint8Array) return image;
  if (image instanceof ArrayBuffer) return new Uint8Array(image);
  if (typeof Blob !== "undefined" && image instanceof Blob) return new Uint8Array(await image.arrayBuffer());
  const res = await fetch(image as string | URL);
  if (!res.ok) throw new VisionThinkError("ImageError", `cannot fetch image: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function probeWebGPU(timeoutMs: number): Promise<string | null> {
  const gpu = (globalThis.navigator as Navigator & { gpu?: { requestAdapter(): Promise<unknown> } })?.gpu;
  if (!gpu) return "navigator.gpu is missing";
  const adapter = await Promise.race([
    gpu.requestAdapter().catch(() => null),
    new Promise((r) => setTimeout(() => r("timeout"), timeoutMs)),
  ]);
  if (adapter === "timeout") return `requestAdapter() did not answer within ${timeoutMs} ms`;
  return adapter ? null : "requestAdapter() returned no adapter";
}

/** Turns a wasm-bindgen rejection into a named Error. */
function named(e: unknown): Error {
  if (e instanceof Error) return e;
  return new VisionThinkError("BackendError", String(e));
}

/** Queue-backed async iterator of events. */
export function eventStream(
  start: (emit: (e: AskEvent) => void) => Promise<Answer>,
  cancel: () => void,
): AnswerStream {
  const queue: AskEvent[] = [];
  let wake: (() => void) | null = null;
  let finished = false;
  const result = start((e) => {
    queue.push(e);
    wake?.();
  }).finally(() => {
    finished = true;
    wake?.();
  });
  result.catch(() => {});
  return {
    result,
    cancel,
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length) yield queue.shift() as AskEvent;
        if (finished) {
          await result; // rethrows errors to the iterating code
          return;
        }
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    },
  };
}

class Engine implements VisionThinkEngine {
  /** The device was lost: the next `ask` loads the model again first. */
  private lost = false;
  private reloading: Promise<void> | null = null;

  constructor(
    private inner: WasmEngine,
    private reload: () => Promise<WasmEngine>,
  ) {}

  get backend(): "webgpu" | "cpu" {
    return this.inner.backend as "webgpu" | "cpu";
  }

  get notice(): string | null {
    return this.inner.notice ?? null;
  }

  /** A fresh engine after a lost device (one reload however many asks wait for it). */
  private async recover(): Promise<void> {
    if (!this.lost) return;
    this.reloading ??= (async () => {
      try {
        const fresh = await this.reload();
        this.inner.free();
        this.inner = fresh;
        this.lost = false;
      } finally {
        this.reloading = null;
      }
    })();
    await this.reloading;
  }

  ask(req: AskRequest & { stream: true }): AnswerStream;
  ask(req: AskRequest & { stream?: false }): Promise<Answer>;
  ask(req: AskRequest): AnswerStream | Promise<Answer> {
    const { image, question, stream, signal, ...options } = req;
    const run = async (emit: (e: AskEvent) => void): Promise<Answer> => {
      const bytes = await imageBytes(image);
      try {
        await this.recover();
      } catch (e) {
        throw named(e);
      }
      const onAbort = () => this.inner.cancel();
      signal?.addEventListener("abort", onAbort);
      try {
        return (await this.inner.ask(bytes, question, options, emit)) as Answer;
      } catch (e) {
        const err = named(e);
        if (err.name === "DeviceLost") this.lost = true;
        throw err;
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    };
    if (stream) return eventStream(run, () => this.inner.cancel());
    return run(() => {});
  }

  cancel(): void {
    this.inner.cancel();
  }

  destroyDevice(): void {
    this.inner.destroyDevice();
    this.lost = true;
  }
}

/** One failed request: why, and whether another attempt may pass. */
class RemoteFailure extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
  ) {
    super(message);
  }
}

/** The `error.message` of an OpenAI-style error body, or the body's start. */
function errorMessage(body: string): string {
  try {
    const v = JSON.parse(body);
    const m = v?.error?.message ?? v?.message ?? v?.detail;
    if (typeof m === "string") return m;
  } catch {
    // not JSON
  }
  return body.slice(0, 300);
}

/** Server-sent chat completion chunks up to `data: [DONE]`: the content deltas joined. */
async function readStream(
  res: Response,
  onChunk: (text: string) => void,
): Promise<{ text: string; prompt: number; completion: number }> {
  if (!res.body) throw new RemoteFailure("the stream has no body", true);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let text = "";
  let prompt = 0;
  let completion = 0;
  let chunks = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new RemoteFailure(`the stream ended before \`data: [DONE]\` (after ${chunks} chunk(s))`, chunks === 0);
    buf += value;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "" || line.startsWith(":") || /^(event|id|retry):/.test(line)) continue;
      if (!line.startsWith("data:")) throw new RemoteFailure(`the stream is not server-sent events: ${line.slice(0, 300)}`, false);
      const data = line.slice(5).trimStart();
      if (data === "[DONE]") {
        await reader.cancel().catch(() => {});
        return { text, prompt, completion };
      }
      let v;
      try {
        v = JSON.parse(data);
      } catch {
        throw new RemoteFailure(`a streamed event is not JSON: ${data.slice(0, 300)}`, false);
      }
      if (v.error) throw new RemoteFailure(`the server reported: ${v.error.message ?? JSON.stringify(v.error)}`, false);
      if (v.usage) {
        prompt = v.usage.prompt_tokens ?? 0;
        completion = v.usage.completion_tokens ?? 0;
      }
      if (!Array.isArray(v.choices)) throw new RemoteFailure(`a streamed event has no \`choices\`: ${data.slice(0, 300)}`, false);
      const piece = v.choices[0]?.delta?.content;
      if (typeof piece === "string" && piece) {
        text += piece;
        onChunk(piece);
      }
      chunks++;
    }
  }
}

/** The low-res-first protocol against a chat server (see `EngineOptions.endpoint`). */
class RemoteEngine implements VisionThinkEngine {
  readonly backend = "remote" as const;
  readonly notice = null;
  private controllers = new Set<AbortController>();

  constructor(
    private base: string,
    private model: string,
    private opts: EngineOptions,
  ) {}

  private headers(): Record<string, string> {
    const h: Record<string, string> = { "Content-Type": "application/json" };
    if (this.opts.apiKey) h.Authorization = `Bearer ${this.opts.apiKey}`;
    return h;
  }

  /** One request, retried as configured; resolves to the reply's text and usage. */
  private async complete(body: unknown, signal: AbortSignal, onChunk: (t: string) => void) {
    const retries = this.opts.remoteRetries ?? 2;
    for (let attempt = 0; ; attempt++) {
      let emitted = false;
      try {
        return await this.attempt(body, signal, (t) => {
          emitted = true;
          onChunk(t);
        });
      } catch (e) {
        if (signal.aborted) throw new VisionThinkError("AbortError", "cancelled");
        const f = e instanceof RemoteFailure ? e : new RemoteFailure(`request failed: ${e}`, true);
        if (f.retry && !emitted && attempt < retries) {
          await new Promise((r) => setTimeout(r, 1000));
          continue;
        }
        const tries = attempt > 0 ? ` (after ${attempt + 1} attempts)` : "";
        throw new VisionThinkError("RemoteError", `remote engine ${this.base}: ${f.message}${tries}`);
      }
    }
  }

  private async attempt(body: unknown, signal: AbortSignal, onChunk: (t: string) => void) {
    const res = await fetch(`${this.base}/chat/completions`, {
      method: "POST",
      headers: this.headers(),
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok) {
      const text = await res.text().catch(() => "");
      const retry = res.status === 408 || res.status === 429 || res.status >= 500;
      throw new RemoteFailure(`HTTP ${res.status}: ${errorMessage(text)}`, retry);
    }
    if ((body as { stream?: boolean }).stream) return readStream(res, onChunk);
    const raw = await res.text();
    let v;
    try {
      v = JSON.parse(raw);
    } catch {
      throw new RemoteFailure(`the reply is not JSON: ${raw.slice(0, 300)}`, false);
    }
    const content = v?.choices?.[0]?.message?.content;
    if (!v?.choices?.length) throw new RemoteFailure(`the reply has no choice: ${raw.slice(0, 300)}`, false);
    if (typeof content !== "string") throw new RemoteFailure("the reply's choice has no message content", false);
    onChunk(content);
    return { text: content, prompt: v.usage?.prompt_tokens ?? 0, completion: v.usage?.completion_tokens ?? 0 };
  }

  ask(req: AskRequest & { stream: true }): AnswerStream;
  ask(req: AskRequest & { stream?: false }): Promise<Answer>;
  ask(req: AskRequest): AnswerStream | Promise<Answer> {
    const { image, question, stream, signal, forcedTurns, ...options } = req;
    const controller = new AbortController();
    const run = async (emit: (e: AskEvent) => void): Promise<Answer> => {
      const onAbort = () => controller.abort();
      signal?.addEventListener("abort", onAbort);
      this.controllers.add(controller);
      let session: ChatSession | null = null;
      try {
        const bytes = await imageBytes(image);
        try {
          session = new ChatSession(bytes, question, this.model, this.opts.remoteStream ?? true, options);
        } catch (e) {
          throw named(e);
        }
        let step = session.start();
        for (let turn = 0; ; turn++) {
          if (step.done) return { ...step.answer, backend: "remote" } as Answer;
          if (step.resized) emit({ type: "resize" });
          let text: string;
          const forced = forcedTurns?.[turn];
          if (forced !== undefined) {
            text = forced;
          } else {
            const t0 = performance.now();
            const reply = await this.complete(step.body, controller.signal, (t) =>
              emit({ type: "token", turn, id: 0, text: t }),
            );
            session.addUsage(reply.prompt, reply.completion, performance.now() - t0);
            text = reply.text;
          }
          try {
            step = session.onReply(text);
          } catch (e) {
            throw named(e);
          }
        }
      } finally {
        session?.free();
        signal?.removeEventListener("abort", onAbort);
        this.controllers.delete(controller);
      }
    };
    if (stream) return eventStream(run, () => controller.abort());
    return run(() => {});
  }

  cancel(): void {
    for (const c of this.controllers) c.abort();
  }

  destroyDevice(): void {}
}

/** The remote engine: the model name from `GET /models` unless given. */
async function createRemoteEngine(opts: EngineOptions & { endpoint: string }): Promise<VisionThinkEngine> {
  await initWasm(opts.wasm);
  const base = opts.endpoint.replace(/\/+$/, "").replace(/\/chat\/completions$/, "");
  let model = opts.remoteModel;
  if (!model) {
    let res: Response;
    try {
      res = await fetch(`${base}/models`, {
        headers: opts.apiKey ? { Authorization: `Bearer ${opts.apiKey}` } : {},
      });
    } catch (e) {
      throw new VisionThinkError("RemoteError", `remote engine ${base}: GET /models failed: ${e}`);
    }
    const text = await res.text();
    if (!res.ok) throw new VisionThinkError("RemoteError", `remote engine ${base}: GET /models: HTTP ${res.status}: ${errorMessage(text)}`);
    try {
      model = JSON.parse(text)?.data?.[0]?.id;
    } catch {
      model = undefined;
    }
    if (typeof model !== "string")
      throw new VisionThinkError("RemoteError", `remote engine ${base}: GET /models lists no model (pass remoteModel)`);
  }
  return new RemoteEngine(base, model, opts);
}

/** Downloads (or reads from the cache) and loads a model; or, with `endpoint`, connects to a chat server. */
export async function createEngine(opts: EngineOptions): Promise<VisionThinkEngine> {
  if (opts.endpoint !== undefined) {
    if (opts.model !== undefined) throw new TypeError("createEngine: give `model` or `endpoint`, not both");
    return createRemoteEngine(opts as EngineOptions & { endpoint: string });
  }
  if (opts.model === undefined) throw new TypeError("createEngine: give `model` (a model folder URL) or `endpoint`");
  const modelUrl = opts.model;
  await initWasm(opts.wasm);
  const manifest = opts.manifest ?? (await resolveManifest(modelUrl));
  // A GGUF model streams straight into the engine; an HF folder is fetched first.
  const gguf = isGgufManifest(manifest);
  const files = gguf
    ? null
    : await fetchModelFiles(modelUrl, {
        useCache: opts.cache,
        onProgress: opts.onProgress,
        manifest,
      });
  let backend: BackendChoice = opts.backend ?? "auto";
  let notice: string | null = null;
  if (backend !== "cpu") {
    const problem = await probeWebGPU(opts.adapterTimeoutMs ?? 5000);
    if (problem && backend === "webgpu") throw new VisionThinkError("WebGPUNotAvailable", problem);
    if (problem) {
      backend = "cpu";
      notice = `WebGPU is not available (${problem}); running on the CPU`;
    }
  }
  // Passed through as given: the engine parses `weights` and applies the older flags' rule.
  const loadOptions = {
    backend,
    ...(opts.weights !== undefined ? { weights: opts.weights } : {}),
    int8: opts.int8 ?? false,
    f16: opts.f16 ?? false,
  };
  // After a lost device: the files again (from the cache when it is on) onto a fresh device.
  const reload = async () => {
    if (gguf) return loadGguf(modelUrl, manifest, loadOptions, { useCache: opts.cache });
    const again = await fetchModelFiles(modelUrl, { useCache: opts.cache, manifest });
    return WasmEngine.load(again, loadOptions);
  };
  try {
    const inner = files
      ? await WasmEngine.load(files, loadOptions)
      : await loadGguf(modelUrl, manifest, loadOptions, { useCache: opts.cache, onProgress: opts.onProgress });
    const engine = new Engine(inner, reload);
    if (notice) Object.defineProperty(engine, "notice", { value: notice });
    return engine;
  } catch (e) {
    throw named(e);
  }
}

/**
 * Bytes of the engine's wasm heap (its linear memory, which never shrinks: after a load, the
 * load's peak). Weights on WebGPU live in GPU buffers, not here.
 */
export async function wasmHeapBytes(wasm?: string | URL | ArrayBuffer): Promise<number> {
  await initWasm(wasm);
  return wasmHeap();
}

/** The half-size image the model sees first, as ImageData-compatible fields. */
export async function lowResPreview(
  image: ImageInput,
  wasm?: string | URL | ArrayBuffer,
): Promise<{ width: number; height: number; rgba: Uint8ClampedArray }> {
  await initWasm(wasm);
  try {
    return wasmLowResPreview(await imageBytes(image));
  } catch (e) {
    throw named(e);
  }
}
