// Where the host time of a WebGPU decode step goes in the browser (issue 18): runs one `ask` in
// headless Chromium (WebGPU on SwiftShader) under the DevTools CPU profiler and prints, for the
// page's thread, the self time of the functions (wasm and JS) sampled while decode steps were
// being recorded and submitted, with the answer's own dispatch count and host milliseconds.
//
// --no-warmup skips the first (unprofiled) answer, which otherwise compiles the pipelines: for
// a large model on SwiftShader, where one answer takes minutes.
//
//   node scripts/profile_decode.mjs [--model DIR | --gguf DIR] [--tokens N] [--top K] [--interval US] [--no-warmup]
import { resolve } from "node:path";
import { cpus } from "node:os";
import { chromium } from "playwright-core";
import { startServer } from "./serve.mjs";

const arg = (k, d) => {
  const i = process.argv.indexOf(k);
  return i > 0 ? process.argv[i + 1] : d;
};
const tokens = Number(arg("--tokens", 32));
const top = Number(arg("--top", 30));
const interval = Number(arg("--interval", 50));
const gguf = arg("--gguf");
const warmup = !process.argv.includes("--no-warmup");
const srv = await startServer({
  modelDir: arg("--model") ? resolve(arg("--model")) : undefined,
  ggufDir: gguf ? resolve(gguf) : null,
});
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`  page ${m.type()}: ${m.text()}\n`));
  await page.goto(`${srv.url}/demo/blank.html`);
  const model = gguf ? "/model-gguf/" : "/model/";
  await page.evaluate(
    async ([model, warmup]) => {
      const vt = await import("/dist/index.js");
      globalThis.engine = await vt.createEngine({ model, backend: "webgpu", cache: false });
      globalThis.image = new Uint8Array(await (await fetch("/example.png")).arrayBuffer());
      if (warmup) await globalThis.engine.ask({ image: globalThis.image, question: "warm-up", maxNewTokens: 2 });
    },
    [model, warmup],
  );
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval });
  await cdp.send("Profiler.start");
  const timings = await page.evaluate(async (tokens) => {
    const a = await globalThis.engine.ask({ image: globalThis.image, question: "What colour is the large shape?", maxNewTokens: tokens });
    return a.timings;
  }, tokens);
  const { profile } = await cdp.send("Profiler.stop");

  // Samples whose stack passes through a decode step's recording (`feed_tokens`) or its submit.
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => n.callFrame.functionName || `(anonymous ${n.callFrame.url.split("/").pop()}:${n.callFrame.lineNumber})`;
  const inStep = new Map();
  const stepOf = (id) => {
    if (inStep.has(id)) return inStep.get(id);
    const n = byId.get(id);
    const here = /feed_tokens|::submit|Recorder.*submit/.test(name(n));
    const v = here || (parent.has(id) ? stepOf(parent.get(id)) : false);
    inStep.set(id, v);
    return v;
  };
  const self = new Map();
  let stepUs = 0;
  let allUs = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i + 1] ?? interval;
    allUs += dt;
    if (!stepOf(id)) return;
    stepUs += dt;
    const k = name(byId.get(id));
    self.set(k, (self.get(k) ?? 0) + dt);
  });
  const per = (v) => v / Math.max(1, timings.generated_tokens);
  console.log(`${cpus()[0]?.model}, ${cpus().length} cores; ${gguf ?? arg("--model") ?? "the shipped model"}; ${tokens} tokens`);
  console.log(
    `answer timings: decode ${per(timings.decode_ms).toFixed(2)} ms/token, host ${per(timings.decode_host_ms).toFixed(3)} ms/token, ` +
      `${per(timings.decode_dispatches).toFixed(1)} dispatches/token`,
  );
  console.log(`profiled: ${(allUs / 1e3).toFixed(1)} ms on the page's thread, ${(stepUs / 1e3).toFixed(1)} ms inside decode steps (${per(stepUs).toFixed(0)} us/token)`);
  console.log("\n| function (self time inside decode steps) | us/token | share |\n|---|---:|---:|");
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`| ${k.slice(0, 110)} | ${per(v).toFixed(1)} | ${((100 * v) / Math.max(1, stepUs)).toFixed(1)} % |`);
  }
} finally {
  await browser.close();
  await srv.close();
}
