// Static server for the demo and the browser tests: web/ at /, a model folder at /model/ (with a
// generated visionthink-manifest.json carrying SHA-256s), the same model as a GGUF set at
// /model-gguf/ (Q8_0, split into parts; converted by `visionthink convert` on first use), the
// example image at /example.png.
//   node scripts/serve.mjs [--port 8080] [--model DIR] [--gguf DIR]
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { existsSync } from "node:fs";
import { readFile, readdir, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const webRoot = resolve(here, "..");
export const repoRoot = resolve(webRoot, "..");
export const defaultModel = resolve(repoRoot, "sdk/visionthink/model");
const exampleImage = resolve(repoRoot, "sdk/visionthink/model/example.png");
export const defaultGguf = resolve(process.env.VT_CACHE ?? join(homedir(), ".cache/visionthink"), "model-gguf-q8_0");

/**
 * The shipped model as a GGUF set (Q8_0 text and mmproj, parts of at most 4 MB so a load spans
 * several), written by `visionthink convert` with its manifest; converted once, then reused.
 */
export function ensureGgufModel(dir = defaultGguf) {
  if (existsSync(join(dir, "visionthink-manifest.json"))) return dir;
  const args = ["run", "-q", "-p", "visionthink", "--locked", "--manifest-path", join(repoRoot, "Cargo.toml"), "--",
    "convert", "--from", defaultModel, "--out", dir, "--quant", "q8_0", "--split-max-size", "4M"];
  execFileSync("cargo", args, { stdio: ["ignore", "ignore", "inherit"] });
  return dir;
}

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".ts": "text/plain; charset=utf-8",
};

/** SHA-256 manifest of a model folder (what `visionthink-manifest.json` holds). */
export async function manifest(dir) {
  const files = [];
  for (const name of (await readdir(dir)).sort()) {
    if (name === "visionthink-manifest.json") continue;
    if (!(await stat(join(dir, name))).isFile()) continue; // e.g. a model card's curves/ folder
    const bytes = await readFile(join(dir, name));
    files.push({ name, size: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") });
  }
  return { files };
}

/**
 * Starts the server. `faults` maps a URL path to "abort" (the connection drops halfway through
 * the body) for failure tests; `hits` counts requests per path.
 */
export async function startServer({ port = 0, modelDir = defaultModel, ggufDir = null, faults = new Map() } = {}) {
  const hits = new Map();
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    let file;
    if (path.startsWith("/model-gguf/")) {
      ggufDir ??= ensureGgufModel();
      file = join(ggufDir, normalize(path.slice("/model-gguf/".length)));
      if (!file.startsWith(ggufDir)) file = null;
    } else if (path.startsWith("/model/")) {
      const name = path.slice("/model/".length);
      if (name === "visionthink-manifest.json") {
        try {
          await stat(join(modelDir, name));
        } catch {
          const body = JSON.stringify(await manifest(modelDir));
          res.writeHead(200, { "content-type": types[".json"], "content-length": Buffer.byteLength(body) });
          res.end(body);
          return;
        }
      }
      file = join(modelDir, normalize(name));
      if (!file.startsWith(modelDir)) file = null;
    } else if (path === "/example.png") {
      file = exampleImage;
    } else {
      file = join(webRoot, normalize(path === "/" ? "/demo/index.html" : path));
      if (!file.startsWith(webRoot)) file = null;
    }
    let body;
    try {
      body = file && (await readFile(file));
    } catch {
      body = null;
    }
    if (!body) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
      return;
    }
    const headers = {
      "content-type": types[extname(file)] ?? "application/octet-stream",
      "content-length": body.length,
      "cache-control": "no-store",
      "cross-origin-opener-policy": "same-origin",
      "cross-origin-embedder-policy": "require-corp",
    };
    res.writeHead(200, headers);
    if (req.method === "HEAD") return res.end();
    if (faults.get(path) === "abort") {
      res.write(body.subarray(0, body.length >> 1));
      setTimeout(() => res.socket?.destroy(), 50);
      return;
    }
    res.end(body);
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { server, url, hits, close: () => new Promise((r) => server.close(r)) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (k, d) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : d;
  };
  const gguf = arg("--gguf");
  const { url } = await startServer({
    port: Number(arg("--port", 8080)),
    modelDir: resolve(arg("--model", defaultModel)),
    ggufDir: gguf ? resolve(gguf) : null,
  });
  console.log(`VisionThink demo: ${url}/demo/index.html  (model: ${resolve(arg("--model", defaultModel))})`);
}
