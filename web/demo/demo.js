// The demo page: load the model (progress), pick an image, ask, watch the answer stream.
// Query parameters: model=URL (default ../model/; ../model-gguf/ is the same model as a GGUF
// set; the picker at the top sets it), worker=1, backend=auto|webgpu|cpu,
// maxNewTokens=N, forceTurn=TEXT (teacher-force turn 1, e.g. a resize call, for testing),
// tools=resize|resize,crop (the tool set; the select next to Ask sets it too).
import { createEngine, lowResPreview } from "../dist/index.js";
import { createWorkerEngine } from "../dist/worker.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelUrl = new URL(params.get("model") ?? "../model/", location.href).toString();
const maxNewTokens = Number(params.get("maxNewTokens") ?? 48);
const forced = params.getAll("forceTurn");
let engine = null;
let image = null;
// The half-size preview's pixels, to redraw it without the previous answer's boxes.
let preview = null;
if (params.get("tools")) $("tools").value = params.get("tools");

// Draws the regions the crops cut ([left, top, right, bottom] fractions) on the preview.
function drawRegions(regions) {
  const c = $("lowres");
  const g = c.getContext("2d");
  if (preview) g.putImageData(preview, 0, 0);
  g.lineWidth = Math.max(2, c.width / 150);
  regions.forEach(([l, t, r, b], i) => {
    g.strokeStyle = ["#00e5ff", "#ffea00", "#ff4081"][i % 3];
    g.strokeRect(l * c.width, t * c.height, (r - l) * c.width, (b - t) * c.height);
  });
}

// The model picker: a choice reloads the page with `model=` set (one engine per page load).
const pick = $("model-pick");
const chosen = params.get("model") ?? "../model/";
const known = [...pick.options].some((o) => o.value === chosen);
pick.value = known ? chosen : "custom";
$("model-url").hidden = $("load-model").hidden = known;
if (!known) $("model-url").value = chosen;
const loadModel = (url) => {
  const q = new URLSearchParams(location.search);
  q.set("model", url);
  location.search = q.toString();
};
pick.addEventListener("change", () => {
  const custom = pick.value === "custom";
  $("model-url").hidden = $("load-model").hidden = !custom;
  if (!custom) loadModel(pick.value);
});
$("load-model").addEventListener("click", () => {
  if ($("model-url").value.trim()) loadModel($("model-url").value.trim());
});

async function showImage(bytes, name) {
  image = bytes;
  const url = URL.createObjectURL(new Blob([bytes]));
  $("orig").src = url;
  try {
    const low = await lowResPreview(bytes);
    const c = $("lowres");
    c.width = low.width;
    c.height = low.height;
    preview = new ImageData(low.rgba, low.width, low.height);
    c.getContext("2d").putImageData(preview, 0, 0);
    $("lowcap").textContent = `what the model sees first: ${low.width}×${low.height}`;
    $("origcap").textContent = `${name} (full resolution, sent only if asked for)`;
  } catch (e) {
    $("status").textContent = `${e.name}: ${e.message}`;
    image = null;
  }
  $("ask").disabled = !(engine && image);
}

$("file").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (f) await showImage(new Uint8Array(await f.arrayBuffer()), f.name);
});

async function load() {
  const progress = {};
  const options = {
    model: modelUrl,
    backend: params.get("backend") ?? "auto",
    ...(params.get("weights") ? { weights: params.get("weights") } : {}),
    int8: params.get("int8") === "1",
    f16: params.get("f16") === "1",
    onProgress: (p) => {
      progress[p.file] = p;
      const all = Object.values(progress);
      const loaded = all.reduce((s, x) => s + x.loaded, 0);
      const total = all.reduce((s, x) => s + (x.total || x.loaded), 0);
      $("progress").value = total ? loaded / total : 0;
      $("status").textContent = `Loading ${p.file}: ${(p.loaded / 1e6).toFixed(1)} MB${p.cached ? " (cache)" : ""}`;
    },
  };
  const t = performance.now();
  engine = params.get("worker") === "1"
    ? await createWorkerEngine(new Worker(new URL("../dist/worker-entry.js", import.meta.url), { type: "module" }), options)
    : await createEngine(options);
  $("progress").value = 1;
  $("f-backend").textContent = engine.backend + (params.get("worker") === "1" ? " (in a Web Worker)" : "");
  if (engine.notice) $("notice").textContent = engine.notice;
  $("status").textContent = `Ready (${engine.backend}, loaded in ${((performance.now() - t) / 1000).toFixed(1)} s)`;
  document.body.dataset.ready = "1";
  $("ask").disabled = !image;
}

$("ask").addEventListener("click", async () => {
  $("ask").disabled = true;
  $("stop").disabled = false;
  $("answer").textContent = "";
  for (const id of ["f-resize", "f-crops", "f-tokens", "f-saved", "f-text", "f-time"]) $(id).textContent = "…";
  drawRegions([]);
  document.body.dataset.tokens = "0";
  delete document.body.dataset.done;
  let turn = 0;
  const stream = engine.ask({
    image,
    question: $("question").value,
    stream: true,
    maxNewTokens,
    forcedTurns: forced,
    tools: $("tools").value,
  });
  $("stop").onclick = () => stream.cancel();
  try {
    for await (const ev of stream) {
      if (ev.type === "resize") {
        $("answer").textContent += "\n\n[the tool delivered an image: the full resolution, or a crop of it]\n\n";
      } else {
        if (ev.turn !== turn) turn = ev.turn;
        $("answer").textContent += ev.text;
        document.body.dataset.tokens = String(Number(document.body.dataset.tokens) + 1);
      }
    }
    const a = await stream.result;
    $("f-resize").innerHTML = a.used_high_res ? '<span class="badge yes">yes</span>' : '<span class="badge no">no</span>';
    $("f-crops").textContent = a.crops
      ? a.crop_regions.map((r) => `[${r.map((v) => v.toFixed(2)).join(", ")}]`).join(" ")
      : "none";
    drawRegions(a.crop_regions);
    $("f-tokens").textContent = `${a.visual_tokens} (full resolution alone: ${a.visual_tokens_full_res})`;
    const saved = a.visual_tokens_full_res - a.visual_tokens;
    $("f-saved").textContent = saved >= 0
      ? `${saved} (${((100 * saved) / a.visual_tokens_full_res).toFixed(0)}%)`
      : `none: ${-saved} more than full resolution alone`;
    $("f-text").textContent = a.text || "(empty)";
    const t = a.timings;
    $("f-time").textContent = `${t.total_ms.toFixed(0)} ms total, ${t.generated_tokens} tokens, ${(t.decode_ms / Math.max(1, t.generated_tokens)).toFixed(1)} ms/token`;
    document.body.dataset.done = a.crops ? "cropped" : a.used_high_res ? "resized" : "direct";
    document.body.dataset.crops = String(a.crops);
    $("status").textContent = `Done (${a.end})`;
  } catch (e) {
    $("status").textContent = `${e.name}: ${e.message}`;
    document.body.dataset.done = "error";
  } finally {
    $("ask").disabled = false;
    $("stop").disabled = true;
  }
});

(async () => {
  const res = await fetch(params.get("image") ?? "../example.png");
  if (res.ok) await showImage(new Uint8Array(await res.arrayBuffer()), "example.png");
  try {
    await load();
  } catch (e) {
    $("status").textContent = `${e.name}: ${e.message}`;
    document.body.dataset.ready = "error";
  }
})();
