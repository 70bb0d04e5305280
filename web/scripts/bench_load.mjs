// Load benchmark in headless Chromium (issue 14): streams a GGUF model folder (its
// visionthink-manifest.json, as `visionthink convert` writes it) into the engine and reports the
// load time, the wasm heap after the load (a wasm heap never shrinks: its peak) and the JS heap
// (sampled every 100 ms during the load: its peak, garbage included; and live, after a forced
// collection at the end of each part), optionally the time to the first token.
// WebGPU runs on SwiftShader here (a CPU rasteriser): times say nothing of a GPU's speed.
//
// With --cache the load goes through the Cache API: a first load from the network that writes
// every verified part into the cache, then a second one from the cache (both reported).
//
//   node scripts/bench_load.mjs --model DIR [--backend webgpu|cpu] [--cache] [--first-token] [--json]
import { cpus } from "node:os";
import { resolve } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./serve.mjs";

const arg = (k, d) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1] : d;
};
const dir = arg("--model");
if (!dir) throw new Error("--model DIR (a GGUF folder with visionthink-manifest.json) is required");
const backend = arg("--backend", "webgpu");
const firstToken = process.argv.includes("--first-token");
const useCache = process.argv.includes("--cache");

const srv = await startServer({ ggufDir: resolve(dir) });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--enable-unsafe-webgpu",
    "--enable-precise-memory-info",
    "--js-flags=--expose-gc",
  ],
});
let result;
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`  page ${m.type()}: ${m.text()}\n`));
  await page.goto(`${srv.url}/demo/blank.html`);
  result = await page.evaluate(
    async ([backend, firstToken, useCache]) => {
      const m = await import("/dist/index.js");
      if (useCache) await m.clearModelCache();
      let jsPeak = 0;
      let jsLive = 0;
      const sample = () => (jsPeak = Math.max(jsPeak, performance.memory?.usedJSHeapSize ?? 0));
      // After each part, a forced collection: what the load keeps alive, without the garbage
      // (fetched chunks already pushed into the engine) the collector has not reached yet.
      const live = () => {
        globalThis.gc?.();
        const v = performance.memory?.usedJSHeapSize ?? 0;
        jsLive = Math.max(jsLive, v);
        return v;
      };
      const timer = setInterval(sample, 100);
      const heapBefore = await m.wasmHeapBytes();
      let bytes = 0;
      const out = {};
      const onProgress = (p) => {
        bytes = Math.max(bytes, p.loaded);
        if (p.loaded === p.total) {
          sample();
          console.log(`${p.file}: JS heap ${(performance.memory?.usedJSHeapSize / 1e6).toFixed(0)} MB, live ${(live() / 1e6).toFixed(0)} MB`);
        }
      };
      if (useCache) {
        // The first load fetches and writes the cache; the one measured below reads it.
        const t = performance.now();
        await m.createEngine({ model: "/model-gguf/", backend, cache: true, onProgress });
        out.cold_load_ms = performance.now() - t;
        out.cold_js_heap_peak = jsPeak;
        out.cold_js_heap_live_peak = jsLive;
        jsPeak = 0;
        jsLive = 0;
      }
      const t0 = performance.now();
      const engine = await m.createEngine({
        model: "/model-gguf/",
        backend,
        cache: useCache,
        onProgress,
      });
      const loadMs = performance.now() - t0;
      sample();
      clearInterval(timer);
      Object.assign(out, {
        backend: engine.backend,
        adapter: engine.adapterInfo?.() ?? null,
        load_ms: loadMs,
        wasm_heap_before: heapBefore,
        wasm_heap_after_load: await m.wasmHeapBytes(),
        js_heap_peak: jsPeak,
        js_heap_live_peak: jsLive,
      });
      if (firstToken) {
        const image = new Uint8Array(await (await fetch("/example.png")).arrayBuffer());
        const t1 = performance.now();
        const s = engine.ask({ image, question: "What is it?", maxNewTokens: 1, stream: true });
        for await (const ev of s) if (ev.type === "token") break;
        out.first_token_ms = performance.now() - t1;
        s.cancel();
        await s.result.catch(() => {});
        out.wasm_heap_after_token = await m.wasmHeapBytes();
      }
      return out;
    },
    [backend, firstToken, useCache],
  );
} finally {
  await browser.close();
  await srv.close();
}
const mb = (b) => (b / 1e6).toFixed(1);
console.log(`\n${cpus()[0]?.model}, ${cpus().length} cores; model ${resolve(dir)}; backend ${result.backend}`);
console.log(
  `load ${(result.load_ms / 1000).toFixed(1)} s; wasm heap ${mb(result.wasm_heap_before)} → ${mb(result.wasm_heap_after_load)} MB; ` +
    `JS heap peak ${mb(result.js_heap_peak)} MB sampled, ${mb(result.js_heap_live_peak)} MB live (after a forced GC at each part's end)`,
);
if (result.cold_load_ms !== undefined) {
  console.log(
    `first load (network, writing the cache) ${(result.cold_load_ms / 1000).toFixed(1)} s; JS heap peak ${mb(result.cold_js_heap_peak)} MB sampled, ` +
      `${mb(result.cold_js_heap_live_peak)} MB live; the load above read the cache`,
  );
}
if (result.first_token_ms !== undefined) console.log(`first token ${(result.first_token_ms / 1000).toFixed(1)} s`);
if (process.argv.includes("--json")) console.log(JSON.stringify(result));
