//! Request paths → catalog keys.
//!
//! Both front-ends turn what the client asked for into a key of the form
//! `Jun/update-v12-to-v13.zip` (relative, `/`-separated, no empty, `.` or
//! `..` segments). Anything that tries to step outside the package folder
//! is refused here with a reason the download log can carry. The catalog
//! lookup is the real boundary (only files found under the folder are keys);
//! this check makes the refusal explicit.

/// Why a requested path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` segment (also when percent-encoded).
    #[error("path has a '..' segment (refused, wherever it leads)")]
    Traversal,
    /// A backslash, which some servers treat as a separator.
    #[error("path contains a backslash")]
    Backslash,
    /// A NUL or other control character.
    #[error("path contains a control character")]
    Control,
    /// A `%` escape that is not two hex digits or does not decode to UTF-8.
    #[error("path has a malformed percent-encoding")]
    BadEncoding,
}

/// Decodes `%XX` escapes (RFC 3986 §2.1).
///
/// # Errors
/// [`PathError::BadEncoding`] for a truncated escape or non-UTF-8 result.
pub fn percent_decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

/// Normalises an already-decoded path (HTTP after [`percent_decode`], FTP
/// as libunftp passes it, absolute or relative to `/`) into a catalog key.
/// Empty and `.` segments are dropped; `..`, backslashes and control
/// characters are refused. The root itself is the empty key.
///
/// # Errors
/// [`PathError`] saying what was refused.
pub fn normalize(decoded: &str) -> Result<String, PathError> {
    if decoded.contains('\\') {
        return Err(PathError::Backslash);
    }
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(PathError::Traversal),
            s => segments.push(s),
        }
    }
    Ok(segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(raw: &str) -> Result<String, PathError> {
        normalize(&percent_decode(raw)?)
    }

    #[test]
    fn plain_paths_become_keys() {
        assert_eq!(
            http("/update-v12-to-v13.zip").unwrap(),
            "update-v12-to-v13.zip"
        );
        assert_eq!(http("/Jun//./a.zip").unwrap(), "Jun/a.zip");
        assert_eq!(http("/").unwrap(), "");
        assert_eq!(http("/a%20b.zip").unwrap(), "a b.zip");
    }

    #[test]
    fn escapes_are_refused() {
        assert_eq!(http("/../etc/passwd"), Err(PathError::Traversal));
        assert_eq!(http("/%2e%2e/etc/passwd"), Err(PathError::Traversal));
        assert_eq!(http("/Jun/..%2f..%2fetc"), Err(PathError::Traversal));
        assert_eq!(http("/..\\etc"), Err(PathError::Backslash));
        assert_eq!(http("/a%5c..%5cb"), Err(PathError::Backslash));
        assert_eq!(http("/a%00.zip"), Err(PathError::Control));
        assert_eq!(http("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(http("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(http("/%ff.zip"), Err(PathError::BadEncoding));
    }

    #[test]
    fn absolute_paths_stay_inside_the_folder() {
        // `/etc/passwd` is the key `etc/passwd` under the package folder,
        // which the catalog does not have.
        assert_eq!(normalize("/etc/passwd").unwrap(), "etc/passwd");
    }
}
