// The same engine from a Web Worker. In the worker script:
//   import { serveWorker } from "visionthink/worker"; serveWorker();
// On the page:
//   const engine = await createWorkerEngine(new Worker(url, { type: "module" }), { model, onProgress });

import {
  type Answer,
  type AnswerStream,
  type AskEvent,
  type AskRequest,
  createEngine,
  type EngineBackend,
  type EngineOptions,
  eventStream,
  type VisionThinkEngine,
  VisionThinkError,
} from "./index.js";

type ToWorker =
  | { id: number; op: "load"; options: Omit<EngineOptions, "onProgress"> }
  | { id: number; op: "ask"; request: Omit<AskRequest, "signal" | "stream"> }
  | { id: number; op: "cancel" }
  | { id: number; op: "destroyDevice" };

type FromWorker =
  | { id: number; type: "progress"; progress: import("./cache.js").LoadProgress }
  | { id: number; type: "loaded"; backend: EngineBackend; notice: string | null }
  | { id: number; type: "event"; event: AskEvent }
  | { id: number; type: "result"; answer: Answer }
  | { id: number; type: "error"; name: string; message: string; resumable: boolean };

/** What a dedicated worker's global scope offers (typed here to avoid the WebWorker lib). */
export interface WorkerScope {
  postMessage(message: unknown): void;
  onmessage: ((ev: MessageEvent) => unknown) | null;
}

/** Serves engine requests inside a worker. */
export function serveWorker(scope: WorkerScope = globalThis as unknown as WorkerScope): void {
  let engine: VisionThinkEngine | null = null;
  const post = (m: FromWorker) => scope.postMessage(m);
  const fail = (id: number, e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    post({ id, type: "error", name: err.name, message: err.message, resumable: (err as VisionThinkError).resumable ?? false });
  };
  scope.onmessage = async (ev: MessageEvent<ToWorker>) => {
    const msg = ev.data;
    if (msg.op === "cancel") {
      engine?.cancel();
      return;
    }
    if (msg.op === "destroyDevice") {
      engine?.destroyDevice();
      return;
    }
    if (msg.op === "load") {
      try {
        engine = await createEngine({
          ...msg.options,
          onProgress: (progress) => post({ id: msg.id, type: "progress", progress }),
        });
        post({ id: msg.id, type: "loaded", backend: engine.backend, notice: engine.notice });
      } catch (e) {
        fail(msg.id, e);
      }
      return;
    }
    if (!engine) {
      fail(msg.id, new VisionThinkError("ModelLoadError", "no model loaded"));
      return;
    }
    try {
      const stream = engine.ask({ ...msg.request, stream: true });
      for await (const event of stream) post({ id: msg.id, type: "event", event });
      post({ id: msg.id, type: "result", answer: await stream.result });
    } catch (e) {
      fail(msg.id, e);
    }
  };
}

/** An engine living in `worker`, with the same interface as `createEngine`'s. */
export async function createWorkerEngine(worker: Worker, opts: EngineOptions): Promise<VisionThinkEngine> {
  let next = 1;
  const handlers = new Map<number, (m: FromWorker) => void>();
  worker.onmessage = (ev: MessageEvent<FromWorker>) => handlers.get(ev.data.id)?.(ev.data);
  const asError = (m: Extract<FromWorker, { type: "error" }>) => new VisionThinkError(m.name, m.message, m.resumable);
  const { onProgress, ...options } = opts;
  const id = next++;
  const loaded = await new Promise<Extract<FromWorker, { type: "loaded" }>>((resolve, reject) => {
    handlers.set(id, (m) => {
      if (m.type === "progress") onProgress?.(m.progress);
      else if (m.type === "loaded") resolve(m);
      else if (m.type === "error") reject(asError(m));
    });
    worker.postMessage({ id, op: "load", options } satisfies ToWorker);
  });
  handlers.delete(id);
  const cancel = () => worker.postMessage({ id: 0, op: "cancel" } satisfies ToWorker);
  function ask(req: AskRequest & { stream: true }): AnswerStream;
  function ask(req: AskRequest & { stream?: false }): Promise<Answer>;
  function ask(req: AskRequest): AnswerStream | Promise<Answer> {
    const { signal, stream, ...request } = req;
    const run = (emit: (e: AskEvent) => void) =>
      new Promise<Answer>((resolve, reject) => {
        const rid = next++;
        const onAbort = () => cancel();
        signal?.addEventListener("abort", onAbort);
        handlers.set(rid, (m) => {
          if (m.type === "event") return emit(m.event);
          handlers.delete(rid);
          signal?.removeEventListener("abort", onAbort);
          if (m.type === "result") resolve(m.answer);
          else if (m.type === "error") reject(asError(m));
        });
        worker.postMessage({ id: rid, op: "ask", request } satisfies ToWorker);
      });
    return stream ? eventStream(run, cancel) : run(() => {});
  }
  const destroyDevice = () => worker.postMessage({ id: 0, op: "destroyDevice" } satisfies ToWorker);
  return { backend: loaded.backend, notice: loaded.notice, ask, cancel, destroyDevice };
}
