//! Reading the files an operator names in the config: the config itself, a certificate, a
//! key or a CA bundle. Each must be a regular file of at most 1 MiB: a FIFO would block
//! `check` and start-up, and a device such as `/dev/zero` would never end.

use std::io::{ErrorKind, Read as _};
use std::path::Path;

/// The most a config, certificate, key or CA file may hold.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a file the operator named (config, certificate, key, CA bundle), if it is a
/// regular file of at most 1 MiB.
///
/// # Errors
/// When the file cannot be read, is not a regular file, or is larger than 1 MiB.
pub(crate) fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes =
        Vec::with_capacity(usize::try_from(meta.len().min(MAX_FILE_BYTES)).unwrap_or(0));
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "larger than 1 MiB",
        ));
    }
    Ok(bytes)
}
