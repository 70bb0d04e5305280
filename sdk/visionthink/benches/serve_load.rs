//! Load test of `visionthink serve` on the shipped model: 1, 4 and 16 concurrent clients, each
//! sending VisionThink requests (the example image, the coarse and the fine question in turn)
//! back to back for a fixed time; requests/s, p50/p99 latency, generated tokens/s and failures.
//! The same 16 clients against a server that runs one request at a time (`max_batch = 1`) are
//! the peer in the same process.
//!
//! `cargo bench -p visionthink --bench serve_load [-- SECONDS]` (default 15 s per row)

use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use visionthink::serve::{router, ServeConfig};

struct Row {
    clients: usize,
    max_batch: usize,
    requests: usize,
    failed: usize,
    seconds: f64,
    tokens: u64,
    latencies_ms: Vec<f64>,
    mean_batch: f64,
    prefill_busy: f64,
    decode_busy: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn run(clients: usize, max_batch: usize, seconds: f64) -> anyhow::Result<Row> {
    let vt = visionthink::shipped::load(Default::default(), Default::default())?;
    let cfg = ServeConfig {
        max_batch,
        max_queue: 256,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let app =
        router(Some(vt), cfg).into_make_service_with_connect_info::<visionthink::serve::Peer>();
    rt.spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/v1/chat/completions");
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(visionthink::shipped::EXAMPLE_IMAGE)
    );
    let body = |i: usize| {
        let q = if i % 2 == 0 {
            visionthink::shipped::EXAMPLE_COARSE
        } else {
            visionthink::shipped::EXAMPLE_FINE
        };
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": q},
        ]}], "max_tokens": 128})
        .to_string()
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // One warm-up request.
    agent
        .post(&url)
        .send(body(0))?
        .body_mut()
        .read_to_string()?;
    let metrics = |agent: &ureq::Agent| -> anyhow::Result<String> {
        Ok(agent
            .get(&format!("http://{addr}/metrics"))
            .call()?
            .body_mut()
            .read_to_string()?)
    };
    let before = metrics(&agent)?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (agent, url, body) = (agent.clone(), &url, &body);
                s.spawn(move || {
                    let (mut lat, mut failed) = (Vec::new(), 0usize);
                    let mut i = c;
                    while Instant::now() < end {
                        let t = Instant::now();
                        let ok = agent
                            .post(url)
                            .header("Content-Type", "application/json")
                            .send(body(i))
                            .ok()
                            .and_then(|mut r| {
                                let status = r.status().as_u16();
                                let text = r.body_mut().read_to_string().ok()?;
                                let v: Value = serde_json::from_str(&text).ok()?;
                                (status == 200 && v["choices"][0]["message"]["content"].is_string())
                                    .then_some(())
                            })
                            .is_some();
                        if ok {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        } else {
                            failed += 1;
                        }
                        i += 1;
                    }
                    (lat, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let after = metrics(&agent)?;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    let mut latencies_ms: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    latencies_ms.sort_by(f64::total_cmp);
    let batches = delta("visionthink_batch_steps_total");
    Ok(Row {
        clients,
        max_batch,
        requests: latencies_ms.len(),
        failed: results.iter().map(|r| r.1).sum(),
        seconds: secs,
        tokens: delta("visionthink_generated_tokens_total") as u64,
        latencies_ms,
        mean_batch: delta("visionthink_batch_rows_total") / batches.max(1.0),
        prefill_busy: delta("visionthink_model_busy_seconds_total{work=\"prefill\"}") / secs,
        decode_busy: delta("visionthink_model_busy_seconds_total{work=\"decode\"}") / secs,
    })
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(15.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    println!("visionthink serve, shipped model, VisionThink requests (example image, coarse/fine), {seconds} s per row; {cpu}, {threads} threads");
    println!("| clients | max batch | requests | req/s | p50 (ms) | p99 (ms) | tokens/s | mean batch | model busy: prefill / decode | failed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (clients, max_batch) in [(1, 16), (4, 16), (16, 16), (16, 1)] {
        let r = run(clients, max_batch, seconds)?;
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} % / {:.0} % | {} |",
            r.clients,
            r.max_batch,
            r.requests,
            r.requests as f64 / r.seconds,
            percentile(&r.latencies_ms, 0.5),
            percentile(&r.latencies_ms, 0.99),
            r.tokens as f64 / r.seconds,
            r.mean_batch,
            100.0 * r.prefill_busy,
            100.0 * r.decode_busy,
            r.failed
        );
        rows.push(r);
    }
    let rps = |r: &Row| r.requests as f64 / r.seconds;
    let summary = json!({
        "throughput_16_vs_1": rps(&rows[2]) / rps(&rows[0]),
        "p99_16_vs_p50_1": percentile(&rows[2].latencies_ms, 0.99) / percentile(&rows[0].latencies_ms, 0.5),
        "p99_16_vs_p99_1": percentile(&rows[2].latencies_ms, 0.99) / percentile(&rows[0].latencies_ms, 0.99),
        "batched_vs_unbatched_16": rps(&rows[2]) / rps(&rows[3]),
        "failed": rows.iter().map(|r| r.failed).sum::<usize>(),
    });
    println!("{summary}");
    Ok(())
}
