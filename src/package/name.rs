//! Naming rules of SPEC §6: which characters a package path may hold so
//! that every module family can carry it in a URL, and which extensions
//! are packages at all.

/// Characters SPEC §6 allows in a package's path segments.
fn allowed_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// The naming problems of a package path relative to the package folder
/// (`Jun/update-v12-to-v13.zip`), per SPEC §6: every segment ASCII letters,
/// digits, `.`, `-`, `_`; the file ends `.zip` or `.bin`. Empty when fine.
pub fn name_problems(rel_path: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for segment in rel_path.split('/') {
        if let Some(bad) = segment.chars().find(|c| !allowed_name_char(*c)) {
            problems.push(format!(
                "name {segment:?} has {bad:?}; only ASCII letters, digits, '.', '-', '_' are safe in a module URL"
            ));
        }
    }
    match extension(rel_path) {
        Some(ext) if ext == "zip" || ext == "bin" => {}
        _ => problems.push("not a package: the name must end .zip (or .bin for ec200)".into()),
    }
    problems
}

/// The lower-case extension of the last path segment, without the dot.
pub fn extension(rel_path: &str) -> Option<String> {
    let file = rel_path.rsplit('/').next()?;
    let (_, ext) = file.rsplit_once('.')?;
    Some(ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rules() {
        assert!(name_problems("update-v12-to-v13.zip").is_empty());
        assert!(name_problems("Jun/update_1.2.bin").is_empty());
        assert_eq!(name_problems("my update.zip").len(), 1);
        assert_eq!(name_problems("a@b.zip").len(), 1);
        assert_eq!(name_problems("caf\u{e9}.zip").len(), 1);
        assert_eq!(name_problems("notes.txt").len(), 1);
        assert_eq!(name_problems("noext").len(), 1);
    }
}
