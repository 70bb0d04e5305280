// Browser CPU benchmark (issue 14): our CPU fallback (candle's quantized kernels compiled to
// wasm32 + SIMD128, single thread, the GGUF streamed in by GgufLoader) against wllama
// (llama.cpp compiled to wasm, npm @wllama/wllama) on the same GGUF files, in the same headless
// Chromium, same run: decode tokens/s, wllama single-thread and, with COOP/COEP, multi-thread.
//
// Files: the 0.5B-shape GGUFs that tests/bench/bench_gguf.py builds with llama.cpp's converter
// and llama-quantize ($VT_CACHE/bench-gguf: vt05-Q8_0.gguf, vt05-Q4_0.gguf, vt05-Q4_K_M.gguf,
// mmproj-vt05-f16.gguf). wllama is fetched from npm into $VT_CACHE on first use. Needs the npm
// package built (bash scripts/build.sh).
//
//   node scripts/bench_wllama.mjs [--types Q8_0,Q4_0,Q4_K_M] [--tokens 32] [--json]
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { cpus, homedir } from "node:os";
import { extname, join, normalize, resolve } from "node:path";
import { chromium } from "playwright-core";
import { webRoot } from "./serve.mjs";

const WLLAMA = "3.13.0";
const cache = process.env.VT_CACHE ?? join(homedir(), ".cache/visionthink");
const arg = (k, d) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1] : d;
};
const types = arg("--types", "Q8_0,Q4_0,Q4_K_M").split(",");
const tokens = Number(arg("--tokens", 32));
const dir = resolve(arg("--dir", join(cache, "bench-gguf")));
const mmproj = "mmproj-vt05-f16.gguf";

function wllamaDir() {
  const d = join(cache, `wllama-${WLLAMA}`);
  if (!existsSync(join(d, "package/esm/index.js"))) {
    mkdirSync(d, { recursive: true });
    const tgz = execFileSync("npm", ["pack", `@wllama/wllama@${WLLAMA}`, "--silent"], { cwd: d }).toString().trim();
    execFileSync("tar", ["xzf", tgz], { cwd: d });
  }
  return join(d, "package");
}

const PAGE = `<!doctype html><meta charset="utf-8"><body><script type="module">
import { createEngine } from "/web/dist/index.js";
import { Wllama } from "/wllama/esm/index.js";
window.run = async (text, mmproj, tokens, which, threads) => {
  const size = async (u) => Number((await fetch(u, { method: "HEAD" })).headers.get("content-length"));
  if (which === "ours") {
    const files = [{ name: text, size: await size("/gguf/" + text) }, { name: mmproj, size: await size("/gguf/" + mmproj) }];
    const t0 = performance.now();
    const engine = await createEngine({ model: "/gguf/", manifest: { files }, backend: "cpu", cache: false });
    const load = performance.now() - t0;
    const image = new Uint8Array(await (await fetch("/example.png")).arrayBuffer());
    const a = await engine.ask({ image, question: "Describe the image.", maxNewTokens: tokens, ignoreEos: true, maxRounds: 1 });
    const t = a.timings;
    return { load_ms: load, prefill_tokens: t.prefill_tokens, prefill_ms: t.prefill_ms,
             decode_tokens: t.generated_tokens, decode_ms: t.decode_ms, heap: performance.memory?.usedJSHeapSize ?? null };
  }
  const w = new Wllama({ default: "/wllama/esm/wasm/wllama.wasm" });
  const t0 = performance.now();
  await w.loadModelFromUrl("/gguf/" + text, { n_threads: threads, n_ctx: 1024, n_gpu_layers: 0, useCache: false });
  const load = performance.now() - t0;
  const r = await w.createCompletion({ prompt: "Describe the image.", max_tokens: tokens, temperature: 0, ignore_eos: true });
  const t = r.timings ?? {};
  await w.exit();
  return { load_ms: load, prefill_tokens: t.prompt_n, prefill_ms: t.prompt_ms, decode_tokens: t.predicted_n, decode_ms: t.predicted_ms };
};
window.ready = true;
</script>`;

const example = resolve(webRoot, "../sdk/visionthink/model/example.png");
const roots = { "/web/": webRoot, "/gguf/": dir, "/wllama/": wllamaDir() };
const typesOf = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".png": "image/png" };

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const headers = { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp", "cache-control": "no-store" };
  if (path === "/" || path === "/bench.html") {
    res.writeHead(200, { ...headers, "content-type": "text/html" });
    return res.end(PAGE);
  }
  let file = path === "/example.png" ? example : null;
  for (const [p, root] of Object.entries(roots)) {
    if (path.startsWith(p)) {
      const f = join(root, normalize(path.slice(p.length)));
      if (f.startsWith(root)) file = f;
    }
  }
  if (!file || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404);
    return res.end();
  }
  const size = statSync(file).size;
  res.writeHead(200, { ...headers, "content-type": typesOf[extname(file)] ?? "application/octet-stream", "content-length": size });
  if (req.method === "HEAD") return res.end();
  // Streamed: a 500 MB file never sits in this process's memory either.
  import("node:fs").then(({ createReadStream }) => createReadStream(file).pipe(res));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const url = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--js-flags=--max-old-space-size=4096"],
});
const rows = [];
try {
  for (const ty of types) {
    const text = `vt05-${ty}.gguf`;
    if (!existsSync(join(dir, text))) throw new Error(`${join(dir, text)} is missing: run python3 tests/bench/bench_gguf.py first`);
    for (const [which, threads] of [["ours", 1], ["wllama", 1], ["wllama", 2]]) {
      const page = await browser.newPage();
      page.on("console", (m) => m.type() === "error" && process.stderr.write(`  ${which}: ${m.text()}\n`));
      await page.goto(`${url}/bench.html`);
      await page.waitForFunction(() => window.ready);
      const isolated = await page.evaluate(() => crossOriginIsolated);
      if (threads > 1 && !isolated) continue;
      const r = await page.evaluate(([a, b, c, d, e]) => window.run(a, b, c, d, e), [text, mmproj, tokens, which, threads]);
      await page.close();
      const row = { type: ty, engine: which === "ours" ? "visionthink CPU-wasm" : `wllama ${threads} thread${threads > 1 ? "s" : ""}`, ...r,
        decode_tok_s: (1000 * r.decode_tokens) / r.decode_ms, prefill_tok_s: (1000 * r.prefill_tokens) / r.prefill_ms };
      rows.push(row);
      process.stderr.write(`${ty} ${row.engine}: load ${(r.load_ms / 1000).toFixed(1)} s, prefill ${row.prefill_tok_s.toFixed(1)} tok/s, decode ${row.decode_tok_s.toFixed(2)} tok/s\n`);
    }
  }
} finally {
  await browser.close();
  server.close();
}
const info = existsSync("/proc/cpuinfo") ? readFileSync("/proc/cpuinfo", "utf8") : "";
const flags = (info.match(/^flags\s*:(.*)$/m)?.[1] ?? "").split(" ");
const cpu = `${info.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? cpus()[0]?.model ?? "unknown CPU"}, ${cpus().length} cores, ${
  flags.includes("avx512f") ? "AVX-512" : flags.includes("avx2") ? "AVX2, no AVX-512" : "no AVX2"}`;
console.log(`\nSame headless Chromium, same run; ${cpu}; GGUF files in ${dir}\n`);
console.log("| file | engine | load (s) | prefill (tok/s) | decode (tok/s) | decode ÷ wllama 1 thread |");
console.log("|---|---|---:|---:|---:|---:|");
for (const r of rows) {
  const base = rows.find((x) => x.type === r.type && x.engine === "wllama 1 thread");
  console.log(`| ${r.type} | ${r.engine} | ${(r.load_ms / 1000).toFixed(1)} | ${r.prefill_tok_s.toFixed(1)} | ${r.decode_tok_s.toFixed(2)} | ${base ? (r.decode_tok_s / base.decode_tok_s).toFixed(2) + "×" : "–"} |`);
}
if (process.argv.includes("--json")) {
  const ratio = Object.fromEntries(types.map((t) => {
    const o = rows.find((x) => x.type === t && x.engine === "visionthink CPU-wasm");
    const w = rows.find((x) => x.type === t && x.engine === "wllama 1 thread");
    return [`decode_ratio_${t.toLowerCase()}`, o && w ? o.decode_tok_s / w.decode_tok_s : null];
  }));
  console.log(JSON.stringify({ cpu, rows, ...ratio }));
}
