//! Small helpers for what the commands print.
//!
//! `say!` writes a line to stdout and returns the I/O error (a closed pipe is not a panic);
//! `note!` writes a line for the human to stderr and ignores failures.

/// Print a line to stdout; evaluates to `std::io::Result<()>`.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
    }};
}

/// Print a line to stderr, ignoring errors.
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

pub(crate) use {note, say};

/// `1.5 MiB`
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// RFC 3339 UTC time of Unix seconds, e.g. `2026-11-22T01:52:33Z`.
pub fn rfc3339(secs: u64) -> String {
    sov_core::rfc3339(secs)
}

/// A media type guessed from a file name's extension.
pub fn media_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md") => "text/plain",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/html",
        Some("pdf") => "application/pdf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gz") => "application/gzip",
        Some("car") => "application/vnd.ipld.car",
        Some("gguf") => "application/x-gguf",
        Some("safetensors") => "application/x-safetensors",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_830_753), "2026-11-28T01:52:33Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(media_type("a.CSV"), "text/csv");
    }
}
