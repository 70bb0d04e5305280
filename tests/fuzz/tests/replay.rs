//! Replays every committed corpus input and crash regression of every fuzz target through its
//! harness (the same functions the libFuzzer targets call), deterministically, on the stable
//! toolchain: a finding that was fixed stays fixed, and the corpora keep passing the properties.

use std::path::Path;

#[test]
fn corpora_and_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (name, harness) in visionthink_fuzz::TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).expect("corpus file readable");
                n += 1;
                if let Err(p) = std::panic::catch_unwind(|| harness(&data)) {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{}: {msg}", f.display()));
                }
            }
        }
        counts.push(format!("{name}: {n}"));
    }
    println!("replayed {}", counts.join(", "));
    assert!(
        failures.is_empty(),
        "{} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every target has a seed corpus.
    for c in &counts {
        assert!(!c.ends_with(": 0"), "a target has no corpus: {c}");
    }
}
