//! `config::parse` on arbitrary text: never panics, and every error is located in `f.toml`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sessiongate::config::{ConfigError, parse};

/// `f.toml:LINE:COL: ` with LINE, COL >= 1, or `f.toml: `.
fn well_formed(msg: &str) -> bool {
    let Some(rest) = msg.strip_prefix("f.toml:") else {
        return false;
    };
    if rest.starts_with(' ') {
        return true;
    }
    let mut parts = rest.splitn(3, ':');
    let (Some(line), Some(col), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s != "0";
    num(line)
        && num(col)
        && !line.starts_with('0')
        && !col.starts_with('0')
        && tail.starts_with(' ')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(e) = parse(Path::new("f.toml"), text) else {
        return;
    };
    let msg = e.to_string();
    assert!(well_formed(&msg), "badly formed error: {msg:?}");
    match &e {
        ConfigError::Located { line, col, .. } => {
            // The position is inside the text (or just past its end).
            let lines = text.split('\n').count();
            assert!(
                *line >= 1 && *line <= lines,
                "line {line} of {lines}: {msg:?}"
            );
            let width = text
                .split('\n')
                .nth(line - 1)
                .map_or(0, |l| l.chars().count());
            assert!(
                *col >= 1 && *col <= width + 1,
                "col {col} of {width}: {msg:?}"
            );
        }
        ConfigError::Unlocated { .. } => {}
        ConfigError::Io { .. } => panic!("parse never does I/O on the config path: {msg:?}"),
    }
});
