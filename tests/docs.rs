//! The README's configuration block is the shipped `proxy.toml`, byte for byte, so the two
//! cannot drift apart.

const README: &str = include_str!("../README.md");
const PROXY_TOML: &str = include_str!("../proxy.toml");

/// The bodies of the README's fenced code blocks tagged `lang`.
fn code_blocks<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    let mut blocks = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body
            .find("\n```")
            .unwrap_or_else(|| panic!("a ```{lang} block is never closed"));
        blocks.push(&body[..=end]);
        rest = &body[end + 1..];
    }
    blocks
}

#[test]
fn the_readme_shows_the_shipped_proxy_toml_exactly() {
    let blocks = code_blocks(README, "toml");
    assert!(
        blocks.contains(&PROXY_TOML),
        "no ```toml block in README.md equals proxy.toml; copy proxy.toml into the block under \
         \"## Configuration\" verbatim. The closest block:\n{}",
        blocks
            .iter()
            .max_by_key(|b| b.lines().filter(|l| PROXY_TOML.contains(l)).count())
            .unwrap_or(&"(none)")
    );
}

#[test]
fn code_blocks_are_read_whole() {
    let text = "a\n```toml\nx = 1\n```\nb\n```sh\nls\n```\n```toml\n[t]\ny = 2\n```\n";
    assert_eq!(code_blocks(text, "toml"), vec!["x = 1\n", "[t]\ny = 2\n"]);
    assert_eq!(code_blocks(text, "sh"), vec!["ls\n"]);
}
