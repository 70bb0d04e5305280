// A ready-made worker script: `new Worker(new URL("visionthink/dist/worker-entry.js", import.meta.url), { type: "module" })`.
import { serveWorker } from "./worker.js";

serveWorker();
