//! Replays every committed fuzz input — the named seeds in `fuzz/seeds/<target>/` and the
//! minimised crash inputs in `fuzz/artifacts-kept/<target>/` — through the entry points the fuzz
//! targets call (`muxgate::fuzzing`), so plain `cargo test` catches a regression without
//! cargo-fuzz or a nightly toolchain.
//!
//! `fuzz/artifacts-kept/<target>/open/` holds inputs of bugs not fixed yet: they must still fail,
//! so the suite stays green meanwhile and tells whoever fixes one to move its input up a level,
//! where it then guards against the bug coming back.
//!
//! tokio catches panics inside spawned tasks; a panic hook records them per thread (each replay
//! runs on a current-thread runtime on the test's own thread), so they fail the replay too.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use muxgate::fuzzing;

thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            default(info);
        }));
    });
}

/// The files directly in `dir`, in name order (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one input; true if it panicked, on this thread or in a task it spawned.
fn fails(run: &impl Fn(&[u8]), path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    eprintln!("replaying {}", path.display());
    PANICKED.with(|p| p.set(false));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data))).is_err();
    caught || PANICKED.with(|p| p.get())
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    install_hook();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let kept = root.join("artifacts-kept").join(target);
    let must_pass = [files(&root.join("seeds").join(target)), files(&kept)].concat();
    assert!(!must_pass.is_empty(), "no committed inputs for {target}");
    let failed: Vec<_> = must_pass.iter().filter(|p| fails(&run, p)).collect();
    assert!(
        failed.is_empty(),
        "inputs that fail (see above): {failed:?}"
    );
    let fixed: Vec<_> = files(&kept.join("open"))
        .into_iter()
        .filter(|p| !fails(&run, p))
        .collect();
    assert!(
        fixed.is_empty(),
        "open bugs that no longer reproduce: move {fixed:?} up to {} so they guard the fix",
        kept.display()
    );
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn header_translate_inputs() {
    replay("fuzz_header_translate", fuzzing::header_translate);
}

#[test]
fn config_inputs() {
    replay("fuzz_config", fuzzing::config);
}

#[test]
fn h2_guard_inputs() {
    replay("fuzz_h2_guard", fuzzing::h2_guard);
}

#[test]
fn cache_policy_inputs() {
    replay("fuzz_cache_policy", fuzzing::cache_policy);
}

#[test]
fn upstream_frames_inputs() {
    replay("fuzz_upstream_frames", |d| {
        fuzzing::upstream_frames(paused_runtime(), d)
    });
}

#[test]
fn downstream_h1_inputs() {
    replay("fuzz_downstream_h1", |d| {
        fuzzing::downstream_h1(paused_runtime(), d)
    });
}
