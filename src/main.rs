//! The `sessiongate` binary; everything is in the library.

/// mimalloc: at a million sessions glibc malloc's fragmentation costs a fifth more CPU per
/// request and more memory (benches/load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sessiongate::cli::run()
}
