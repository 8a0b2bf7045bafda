//! Prepares `static/` for serving, once per build: each file stripped of
//! comments and compressed with gzip (zopfli) and brotli at their best, and one content hash over
//! the whole set, which names the directory the pages link to
//! (`/static/<hash>/chat.js`). The server then only picks bytes; it never
//! compresses per request, and the product binary carries no encoder.
//!
//! Output: `$OUT_DIR/assets.rs`, included by `src/http/assets.rs`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let dir = root.join("static");
    println!("cargo:rerun-if-changed=static");

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("static/ is readable")
        .map(|e| e.expect("static/ entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().into_string().expect("UTF-8 file names"))
        // package.json only tells `node --test` that these are ES modules.
        .filter(|n| !n.starts_with('.') && n != "package.json")
        .collect();
    names.sort();

    // One hash over names and contents: a change to any file moves every
    // URL, so a page never mixes modules from two versions.
    let mut set = Sha256::new();
    let mut entries = String::new();
    for name in &names {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "static/{name}: file names are served as URLs; use [A-Za-z0-9._-]"
        );
        let source = std::fs::read(dir.join(name)).expect("static file is readable");
        // What is served is the file without its comments and indentation:
        // they are a third of the bytes on the wire. The original stays the
        // source to read; the served copy goes to OUT_DIR.
        let body = match name.rsplit_once('.').map(|(_, e)| e) {
            Some("js" | "css") => {
                strip(&String::from_utf8(source).expect("UTF-8 source")).into_bytes()
            }
            _ => source,
        };
        let path = out.join(name);
        std::fs::write(&path, &body).expect("write served asset");
        set.update((name.len() as u64).to_le_bytes());
        set.update(name.as_bytes());
        set.update((body.len() as u64).to_le_bytes());
        set.update(&body);
        let tag = hex(&Sha256::digest(&body)[..8]);
        let gz = write_if_smaller(&out, name, "gz", gzip(&body), body.len());
        let br = write_if_smaller(&out, name, "br", brotli(&body), body.len());
        entries.push_str(&format!(
            "    Prepared {{ name: {name:?}, tag: {tag:?}, identity: include_bytes!({path:?}), gzip: {gz}, brotli: {br} }},\n",
            path = path.display().to_string(),
        ));
    }
    let version = hex(&set.finalize()[..6]);
    let code = format!(
        "/// Content hash of the whole of `static/`.\npub const VERSION: &str = {version:?};\n\n\
         /// Where pages link to the files of this build.\npub const DIR: &str = \"/static/{version}\";\n\n\
         /// Every file of `static/`, sorted by name.\npub static PREPARED: &[Prepared] = &[\n{entries}];\n"
    );
    std::fs::write(out.join("assets.rs"), code).expect("write assets.rs");
}

/// Drops whole-line comments (`//`, `/* … */` starting a line), blank
/// lines, indentation, and a trailing `// comment` after code when the code
/// before it has balanced quotes. Conservative on purpose: it never looks
/// inside a line of code otherwise, so strings and regular expressions
/// pass untouched.
fn strip(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut in_block = false;
    for line in src.lines() {
        let t = line.trim();
        if in_block {
            in_block = !t.contains("*/");
            continue;
        }
        if t.starts_with("/*") {
            in_block = !t.contains("*/");
            continue;
        }
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        out.push_str(trailing_comment(t));
        out.push('\n');
    }
    out
}

fn trailing_comment(line: &str) -> &str {
    let Some(at) = line.find(" // ") else {
        return line;
    };
    let code = &line[..at];
    let balanced = ['\'', '"', '`', '/']
        .iter()
        .all(|q| code.matches(*q).count() % 2 == 0);
    if balanced && code.ends_with([';', '{', '}', ',', ')']) {
        code
    } else {
        line
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Zopfli: gzip that any client reads, about 5 % smaller than zlib's best,
/// at a cost paid once per build.
fn gzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    zopfli::compress(
        zopfli::Options::default(),
        zopfli::Format::Gzip,
        body,
        &mut out,
    )
    .expect("in-memory gzip");
    out
}

fn brotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).expect("in-memory brotli");
    out
}

/// `Some(include_bytes!(..))` for an encoding worth serving, else `None`.
fn write_if_smaller(out: &Path, name: &str, ext: &str, data: Vec<u8>, plain: usize) -> String {
    if data.len() >= plain {
        return "None".into();
    }
    let path = out.join(format!("{name}.{ext}"));
    std::fs::write(&path, data).expect("write compressed asset");
    format!("Some(include_bytes!({:?}))", path.display().to_string())
}
