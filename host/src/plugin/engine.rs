//! The one wasmtime [`Engine`] of the process and the thread that advances its epoch.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. CPU deadlines are counted in these ticks: 10 ms keeps the
/// ticker's own cost negligible while stopping a runaway guest within a few ticks of its limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Upper bound on one linear memory; the per-plugin memory limit is enforced below this by the
/// store limiter. Sized so that the pool's virtual reservation stays reasonable.
const MAX_MEMORY_BYTES: usize = 1 << 30;

/// The default of bytes at the start of a memory or table slot kept resident between
/// instances ([`RegistryConfig::keep_resident`](super::RegistryConfig)). A Rust
/// guest's stack ends at the 1 MiB mark with its data and first heap pages just above, so 2 MiB
/// holds what a typical call dirties. Only the pages a call wrote are reset (found with the
/// kernel's `PAGEMAP_SCAN`), by copying the initial image back over them: the next instance in
/// the slot starts from the same bytes, with no page faults, no `madvise` and no TLB
/// shoot-downs to the other cores (which were a quarter of a fresh call's CPU). Resident memory
/// this keeps: the pages calls dirtied in this window, in every slot that has served a call,
/// so it grows with the most calls ever run at once (a few hundred KB each for a small Rust
/// plugin); `infrakit_sandbox_pool_resident_bytes` shows it and `--keep-resident off` gives
/// it back after each call.
pub const KEEP_RESIDENT: usize = 2 << 20;

/// An engine with epoch interruption, using the pooling allocator when its virtual memory
/// reservation succeeds and on-demand allocation otherwise (e.g. under a tight `ulimit -v`).
/// Each pool slot keeps up to `keep_resident` bytes resident between instances where the
/// kernel can say which pages were written.
pub fn new_engine(keep_resident: usize) -> wasmtime::Result<(Engine, bool)> {
    let mut pooled = base_config();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(512)
        .total_core_instances(2048)
        .total_memories(1024)
        .total_tables(1024)
        .max_memory_size(MAX_MEMORY_BYTES);
    // Without the scan (Linux before 6.7) keeping pages resident means a memset of the whole
    // window per call, measured slower than the page faults it saves (57 µs vs 49 µs).
    if keep_resident > 0 && PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident);
    }
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(engine) => Ok((start_ticker(engine), true)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "pooling allocator unavailable, allocating on demand");
            let engine = Engine::new(&base_config())?;
            Ok((start_ticker(engine), false))
        }
    }
}

/// The baseline engine: Winch, wasmtime's single-pass compiler, which compiles a large component
/// several times faster than Cranelift into slower code. A large plugin runs on it while its
/// optimised code is compiled in the background (see `Registry`). Allocation is on demand: large
/// components are few, and a second pool would double the virtual memory reserved.
pub fn new_baseline_engine() -> wasmtime::Result<Engine> {
    let mut config = base_config();
    config.strategy(wasmtime::Strategy::Winch);
    Ok(start_ticker(Engine::new(&config)?))
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Advances the epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_ticker(engine: Engine) -> Engine {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("infrakit-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
    engine
}
