//! The `runner` binary: everything lives in the library, see `runner::cli`.

/// mimalloc instead of glibc's malloc: the engine allocates and frees many small values per
/// step (run states, JSON, headers) across threads, where glibc's arenas cost about a sixth of
/// the workers' CPU (`examples/bench.rs` uses the same allocator, see ARCHITECTURE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runner::cli::main(std::env::args_os())
}
