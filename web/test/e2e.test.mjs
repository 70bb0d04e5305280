// End-to-end in headless Chromium (Debian's, WebGPU on SwiftShader) through Playwright:
// the demo page loads the model with progress, streams an answer, shows the low-res image and
// the resize decision; the Web Worker engine; Cache API integrity (a corrupted cached weight
// file is refetched, never used); an interrupted download (resumable error, nothing cached);
// a device lost mid-generation (typed error, then a fresh device); the CPU fallback when WebGPU
// is missing; a GGUF set picked in the demo, streamed part by part (an interrupted part resumes
// from the cache, a corrupted cached part is refetched). Screenshots go to test-results/.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { readFile } from "node:fs/promises";
import { ensureGgufModel, startServer, webRoot } from "../scripts/serve.mjs";

const CALL =
  '<think>The print is too small.</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n</tool_call>';
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu-sandbox",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--disable-dev-shm-usage",
];
const results = resolve(webRoot, "test-results");
let srv;
const faults = new Map();

async function browser({ webgpu = true } = {}) {
  const dir = await mkdtemp(join(tmpdir(), "vt-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: webgpu ? [...FLAGS, "--enable-unsafe-webgpu"] : FLAGS,
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  return {
    page,
    logs,
    close: async () => {
      await ctx.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function waitReady(page, logs) {
  try {
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  } catch (e) {
    throw new Error(`${e.message}\n${logs.join("\n")}`);
  }
  const ready = await page.evaluate(() => document.body.dataset.ready);
  assert.equal(ready, "1", `load failed: ${await page.textContent("#status")}\n${logs.join("\n")}`);
}

/** Flips the last byte of a cached file (same headers, other bytes). */
async function corruptCached(page, url) {
  await page.evaluate(async (url) => {
    const cache = await caches.open("visionthink-models-v1");
    const hit = await cache.match(url);
    const bytes = new Uint8Array(await hit.arrayBuffer());
    bytes[bytes.length - 1] ^= 0xff;
    await cache.put(url, new Response(bytes, { headers: hit.headers }));
  }, url);
}

async function askAndWait(page) {
  await page.click("#ask");
  await page.waitForFunction(() => document.body.dataset.done, null, { timeout: 300_000 });
  return page.evaluate(() => document.body.dataset.done);
}

let ggufDir;
before(async () => {
  await mkdir(results, { recursive: true });
  // The shipped model converted to a GGUF set by this checkout's `visionthink convert`.
  ggufDir = ensureGgufModel(join(await mkdtemp(join(tmpdir(), "vt-gguf-")), "model"));
  srv = await startServer({ faults, ggufDir });
});
after(async () => {
  await srv?.close();
  if (ggufDir) await rm(resolve(ggufDir, ".."), { recursive: true, force: true });
});

test("demo page: load with progress, stream, resize branch shown, screenshot", async () => {
  const { page, logs, close } = await browser();
  try {
    const q = new URLSearchParams({ forceTurn: CALL, maxNewTokens: "12" });
    await page.goto(`${srv.url}/demo/index.html?${q}`);
    await waitReady(page, logs);
    assert.match(await page.textContent("#f-backend"), /webgpu/);
    assert.equal(await page.$eval("#progress", (p) => p.value), 1);
    const low = await page.$eval("#lowres", (c) => [c.width, c.height]);
    assert.deepEqual(low, [112, 112], "the half-size example image is shown");
    assert.equal(await askAndWait(page), "resized", `${await page.textContent("#status")}\n${logs.join("\n")}`);
    const tokens = Number(await page.evaluate(() => document.body.dataset.tokens));
    assert.ok(tokens > 5, `streamed ${tokens} token events`);
    assert.match(await page.textContent("#answer"), /the tool delivered an image/);
    assert.equal(await page.textContent("#f-crops"), "none");
    assert.match(await page.textContent("#f-resize"), /yes/);
    assert.match(await page.textContent("#f-tokens"), /^\d+ \(full resolution alone: \d+\)$/);
    await page.screenshot({ path: join(results, "demo-webgpu.png"), fullPage: true });
  } finally {
    await close();
  }
});

test("demo page, crop tool: the requested box is drawn on the half-size preview", async () => {
  const { page, logs, close } = await browser();
  try {
    // The example's half-size image is 112 × 112: the box covers [0.25, 0.5] of each side.
    const crop = '<think>The detail is small.</think>\n<tool_call>\n{"name": "crop_image", "arguments": {"bbox": [28, 28, 56, 56]}}\n</tool_call>';
    const q = new URLSearchParams({ forceTurn: crop, maxNewTokens: "8", tools: "resize,crop" });
    await page.goto(`${srv.url}/demo/index.html?${q}`);
    await waitReady(page, logs);
    assert.equal(await page.$eval("#tools", (s) => s.value), "resize,crop");
    assert.equal(await askAndWait(page), "cropped", `${await page.textContent("#status")}\n${logs.join("\n")}`);
    assert.equal(await page.evaluate(() => document.body.dataset.crops), "1");
    assert.equal(await page.textContent("#f-crops"), "[0.25, 0.25, 0.50, 0.50]");
    // The box's outline is drawn in the first colour (cyan) on the preview, at its place.
    const px = await page.$eval("#lowres", (c) => {
      const g = c.getContext("2d");
      return [Array.from(g.getImageData(28, 40, 1, 1).data), Array.from(g.getImageData(80, 80, 1, 1).data)];
    });
    assert.deepEqual(px[0].slice(0, 3), [0, 229, 255], "the box's left edge");
    assert.notDeepEqual(px[1].slice(0, 3), [0, 229, 255], "outside the box");
    await page.screenshot({ path: join(results, "demo-crop.png"), fullPage: true });
  } finally {
    await close();
  }
});

test("GGUF set from the model picker: parts streamed into WebGPU; an interrupted part resumes from the cache; a corrupted cached part is refetched", async () => {
  const manifest = JSON.parse(await readFile(join(ggufDir, "visionthink-manifest.json"), "utf8"));
  const parts = manifest.files.map((f) => f.name).filter((n) => n.endsWith(".gguf")).sort();
  const text = parts.filter((n) => /-0000\d-of-/.test(n));
  assert.ok(text.length >= 2, `a split text set: ${parts}`);
  const hits = () => parts.map((n) => srv.hits.get(`/model-gguf/${n}`) ?? 0);
  const { page, logs, close } = await browser();
  try {
    // The second text part drops halfway: a resumable error, the parts before it verified and cached.
    faults.set(`/model-gguf/${text[1]}`, "abort");
    const q = new URLSearchParams({ model: "../model-gguf/", forceTurn: CALL, maxNewTokens: "6" });
    await page.goto(`${srv.url}/demo/index.html?${q}`);
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.ready), "error", logs.join("\n"));
    assert.match(await page.textContent("#status"), /^ModelLoadError: download of .*interrupted/);
    faults.clear();
    const h0 = hits();
    await page.reload();
    await waitReady(page, logs);
    const h1 = hits();
    parts.forEach((n, i) => {
      const again = n === text[1] ? 1 : 0;
      assert.equal(h1[i], h0[i] + again, `${n}: ${again ? "fetched again" : "read from the cache"}`);
    });
    assert.equal(await page.$eval("#model-pick", (s) => s.value), "../model-gguf/");
    assert.match(await page.textContent("#f-backend"), /webgpu/);
    assert.match(await page.textContent("#status"), /^Ready/);
    assert.equal(await askAndWait(page), "resized", `${await page.textContent("#status")}\n${logs.join("\n")}`);
    assert.match(await page.textContent("#f-tokens"), /^\d+ \(full resolution alone: \d+\)$/);
    await page.screenshot({ path: join(results, "demo-gguf.png"), fullPage: true });
    // A corrupted cached part fails its SHA-256 while it streams: dropped, fetched once more.
    await corruptCached(page, `${srv.url}/model-gguf/${text[0]}`);
    await page.reload();
    await waitReady(page, logs);
    const h2 = hits();
    parts.forEach((n, i) => assert.equal(h2[i], h1[i] + (n === text[0] ? 1 : 0), n));
    assert.equal(await askAndWait(page), "resized");
  } finally {
    faults.clear();
    await close();
  }
});

test("web worker engine, then a corrupted cached weight file is refetched", async () => {
  const { page, logs, close } = await browser();
  try {
    await page.goto(`${srv.url}/demo/index.html?worker=1&maxNewTokens=6`);
    await waitReady(page, logs);
    assert.match(await page.textContent("#f-backend"), /in a Web Worker/);
    assert.equal(await askAndWait(page), "direct", await page.textContent("#status"));
    // Everything is cached now; corrupt the weights in the cache (same hash header, other bytes).
    const weights = `${srv.url}/model/model.safetensors`;
    await corruptCached(page, weights);
    const before = { w: srv.hits.get("/model/model.safetensors"), c: srv.hits.get("/model/config.json") };
    await page.reload();
    await waitReady(page, logs);
    assert.equal(srv.hits.get("/model/model.safetensors"), before.w + 1, "corrupted weights refetched");
    assert.equal(srv.hits.get("/model/config.json"), before.c, "intact files come from the cache");
    assert.equal(await askAndWait(page), "direct");
  } finally {
    await close();
  }
});

test("an interrupted download is a resumable error and leaves nothing in the cache", async () => {
  const { page, logs, close } = await browser();
  try {
    faults.set("/model/model.safetensors", "abort");
    await page.goto(`${srv.url}/demo/index.html`);
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.ready), "error", logs.join("\n"));
    assert.match(await page.textContent("#status"), /^ModelLoadError: download of model.safetensors/);
    const cached = await page.evaluate(async (url) => {
      const cache = await caches.open("visionthink-models-v1");
      return [!!(await cache.match(url + "config.json")), !!(await cache.match(url + "model.safetensors"))];
    }, `${srv.url}/model/`);
    assert.deepEqual(cached, [true, false], "complete files cached, the broken one not");
    faults.clear();
    await page.reload();
    await waitReady(page, logs);
  } finally {
    faults.clear();
    await close();
  }
});

test("a device lost in the middle of a generation: DeviceLost, then the next ask answers on a fresh device", async () => {
  const { page, logs, close } = await browser();
  try {
    await page.goto(`${srv.url}/demo/blank.html`);
    const out = await page.evaluate(async (base) => {
      const { createEngine } = await import(`${base}/dist/index.js`);
      const engine = await createEngine({ model: `${base}/model/`, backend: "webgpu" });
      const image = new Uint8Array(await (await fetch(`${base}/example.png`)).arrayBuffer());
      const question = "What is the code?";
      let tokens = 0;
      let first = "answered";
      const stream = engine.ask({ image, question, stream: true, maxNewTokens: 200, ignoreEos: true });
      try {
        for await (const ev of stream) {
          if (ev.type === "token" && ++tokens === 3) engine.destroyDevice();
        }
        await stream.result;
      } catch (e) {
        first = `${e.name}: ${e.message}`;
      }
      const again = await engine.ask({ image, question, maxNewTokens: 6 });
      return { first, tokens, backend: engine.backend, end: again.end, generated: again.timings.generated_tokens };
    }, srv.url);
    assert.match(out.first, /^DeviceLost/, logs.join("\n"));
    assert.ok(out.tokens >= 3 && out.tokens < 200, `stopped after ${out.tokens} tokens`);
    assert.equal(out.backend, "webgpu", "the fresh engine runs on WebGPU again");
    assert.ok(out.generated > 0, JSON.stringify(out));
  } finally {
    await close();
  }
});

test("no WebGPU: CPU fallback with a notice, same protocol; Stop cancels", async () => {
  const { page, logs, close } = await browser({ webgpu: false });
  try {
    const q = new URLSearchParams({ forceTurn: CALL, maxNewTokens: "4" });
    await page.goto(`${srv.url}/demo/index.html?${q}`);
    await waitReady(page, logs);
    assert.match(await page.textContent("#f-backend"), /cpu/);
    assert.match(await page.textContent("#notice"), /WebGPU is not available/);
    assert.equal(await askAndWait(page), "resized", await page.textContent("#status"));
    await page.screenshot({ path: join(results, "demo-cpu.png"), fullPage: true });
    // Cancellation: a long generation stopped after a few streamed tokens.
    await page.goto(`${srv.url}/demo/index.html?maxNewTokens=100000`);
    await waitReady(page, logs);
    await page.click("#ask");
    await page.waitForFunction(() => Number(document.body.dataset.tokens) > 3, null, { timeout: 60_000 });
    await page.click("#stop");
    await page.waitForFunction(() => document.body.dataset.done, null, { timeout: 60_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.done), "error");
    assert.match(await page.textContent("#status"), /^AbortError: cancelled/);
  } finally {
    await close();
  }
});

test("remote engine: createEngine({ endpoint }) runs the protocol against `visionthink serve` as the CLI does locally", async () => {
  // The Rust binary the workspace tests built (tests/run.sh builds it before this step).
  const { spawn, execFileSync } = await import("node:child_process");
  const { existsSync } = await import("node:fs");
  const { createInterface } = await import("node:readline");
  const target = process.env.CARGO_TARGET_DIR ?? resolve(webRoot, "../target");
  const bin = process.env.VT_BIN ?? join(target, "debug", "visionthink");
  assert.ok(existsSync(bin), `no visionthink binary at ${bin}: run cargo build -p visionthink (or set VT_BIN)`);
  const image = resolve(webRoot, "../sdk/visionthink/model/example.png");
  const fine = "What is the fine texture of the background: horizontal, vertical or checkered?";
  const local = JSON.parse(execFileSync(bin, ["ask", "--image", image, "--question", fine, "--json"], { encoding: "utf8" }));
  const server = spawn(bin, ["serve", "--port", "0", "--allow-origin", srv.url], { stdio: ["ignore", "pipe", "inherit"] });
  const { page, logs, close } = await browser({ webgpu: false });
  try {
    const banner = await new Promise((ok, fail) => {
      createInterface({ input: server.stdout }).once("line", ok);
      server.once("exit", (c) => fail(new Error(`visionthink serve exited with ${c}`)));
    });
    const endpoint = banner.replace(/^listening on /, "").trim();
    await page.goto(`${srv.url}/demo/blank.html`);
    const out = await page.evaluate(
      async ({ base, endpoint, fine }) => {
        const { createEngine } = await import(`${base}/dist/index.js`);
        const image = new Uint8Array(await (await fetch(`${base}/example.png`)).arrayBuffer());
        const engine = await createEngine({ endpoint, remoteModel: "visionthink-raw" });
        const events = [];
        const stream = engine.ask({ image, question: fine, stream: true });
        for await (const ev of stream) events.push(ev.type);
        const answer = await stream.result;
        // A model the server does not know: the server's error, typed.
        let refused = "";
        try {
          const listed = await createEngine({ endpoint });
          await listed.ask({ image: new Uint8Array([1, 2, 3]), question: "q" });
        } catch (e) {
          refused = `${e.name}: ${e.message}`;
        }
        return { answer, events, backend: engine.backend, refused };
      },
      { base: srv.url, endpoint, fine },
    );
    assert.equal(out.backend, "remote");
    assert.equal(out.answer.backend, "remote");
    for (const k of ["text", "used_high_res", "turns", "visual_tokens", "visual_tokens_full_res", "end"])
      assert.deepEqual(out.answer[k], local[k], `${k}\n${logs.join("\n")}`);
    assert.equal(out.answer.used_high_res, true);
    assert.ok(out.events.includes("resize") && out.events.includes("token"), JSON.stringify(out.events));
    assert.match(out.refused, /^ImageError/, "a bad image is refused before any request");
  } finally {
    await close();
    server.kill();
  }
});
