// Browser benchmark (not a test): the same model and image on WebGPU (SwiftShader here) and on
// the CPU-wasm fallback, in headless Chromium. Prints load (fetch + upload), prefill, per-token
// decode, vision, JS heap and the wasm size.  node scripts/bench.mjs [--model DIR] [--tokens N]
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startServer, webRoot } from "./serve.mjs";

const arg = (k, d) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1] : d;
};
const tokens = Number(arg("--tokens", 32));
const srv = await startServer({ modelDir: arg("--model") ? resolve(arg("--model")) : undefined });
const wasm = await readFile(join(webRoot, "pkg/visionthink_wasm_bg.wasm"));
console.log(`wasm: ${(wasm.length / 1e6).toFixed(2)} MB, gzipped ${(gzipSync(wasm, { level: 9 }).length / 1e6).toFixed(2)} MB`);
const rows = [];
for (const backend of ["webgpu", "cpu"]) {
  const dir = await mkdtemp(join(tmpdir(), "vt-bench-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-gpu-sandbox", "--no-first-run", "--enable-precise-memory-info"],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(`${srv.url}/demo/blank.html`);
  const r = await page.evaluate(
    async ({ backend, tokens }) => {
      const vt = await import("/dist/index.js");
      const t0 = performance.now();
      const engine = await vt.createEngine({ model: "/model/", backend, cache: false });
      const load = performance.now() - t0;
      const image = new Uint8Array(await (await fetch("/example.png")).arrayBuffer());
      await engine.ask({ image, question: "warm-up", maxNewTokens: 2 });
      const a = await engine.ask({ image, question: "What colour is the large shape?", maxNewTokens: tokens });
      return { load, ...a.timings, heapMB: (performance.memory?.usedJSHeapSize ?? 0) / 1e6 };
    },
    { backend, tokens },
  );
  rows.push({ backend, ...r });
  await ctx.close();
  await rm(dir, { recursive: true, force: true });
}
await srv.close();
console.log("\n| backend | load+upload ms | vision ms | prefill ms (tokens) | decode ms/token (tokens) | of which host ms/token | dispatches/token | JS heap MB |");
console.log("|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  const per = (v) => (r.decode_dispatches ? (v / r.generated_tokens).toFixed(2) : "-");
  console.log(
    `| ${r.backend} | ${r.load.toFixed(0)} | ${r.vision_ms.toFixed(0)} | ${r.prefill_ms.toFixed(0)} (${r.prefill_tokens}) | ${(r.decode_ms / r.generated_tokens).toFixed(1)} (${r.generated_tokens}) | ${per(r.decode_host_ms)} | ${per(r.decode_dispatches)} | ${r.heapMB.toFixed(1)} |`,
  );
}
console.log("(host: recording and submitting a decode step, before waiting for the device; per generated token, so the first token of a turn, which comes from the prefill, is counted in the division but not in the sum)");
