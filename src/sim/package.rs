//! What the simulated module decides from a downloaded package before it
//! upgrades (SPEC §5): zip and CRC, the version named in the file name
//! (or in the package's `version.txt`),
//! size against the family's limit and the free space, and the injected
//! check faults. The first failing check gives the attempt's `<err>`.

use std::io::Cursor;

use crate::package::version::VersionChange;
use crate::package::zip::ZipError;
use crate::profile::Profile;
use crate::sim::fault::{FaultPlan, MD5_CODE, SIGNATURE_CODE};

/// `<err>` "package format wrong", and `ec200`'s only "upgrade failed"
/// (SPEC §4); also what a family reports for a check whose own code it
/// does not have.
pub const FORMAT_CODE: u16 = 504;
/// `<err>` "package does not match the module's source firmware" (the
/// version rule's code on most families; see
/// [`Profile::version_mismatch`](crate::profile::Profile::version_mismatch)).
pub const VERSION_CODE: u16 = 510;
/// `<err>` "not enough space in the file system".
pub const SPACE_CODE: u16 = 511;
/// `<err>` "package too large" (`eg06xk`, seed 000).
pub const TOO_LARGE_CODE: u16 = 550;

/// Zip and CRC check of a downloaded package: the same check the server's
/// catalog runs ([`crate::package::zip::check_zip`]), over bytes in
/// memory. Returns the number of entries.
///
/// # Errors
/// The first [`ZipError`].
pub fn check_zip(bytes: &[u8]) -> Result<usize, ZipError> {
    zip_entries(Cursor::new(bytes))
}

/// The entries of the zip `reader` reads, checked.
fn zip_entries(reader: impl std::io::Read + std::io::Seek) -> Result<usize, ZipError> {
    crate::package::zip::check_zip(reader).map(|summary| summary.entries)
}

/// Largest part of a `version.txt` entry that is read, in bytes.
const MANIFEST_MAX: u64 = 4096;

/// [`VersionChange::from_manifest`] of the `version.txt` entry at the root
/// of the zip `reader` reads; `None` when the data does not start as a zip
/// (an `ec200` raw image is not searched for one) or has no such entry.
fn manifest_in(mut reader: impl std::io::Read + std::io::Seek) -> Option<VersionChange> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).ok()?;
    if magic != *b"PK\x03\x04" {
        return None;
    }
    let mut archive = zip::ZipArchive::new(reader).ok()?;
    let entry = archive.by_name("version.txt").ok()?;
    let mut bytes = Vec::new();
    entry.take(MANIFEST_MAX).read_to_end(&mut bytes).ok()?;
    VersionChange::from_manifest(&String::from_utf8_lossy(&bytes))
}

/// A package the module holds for its checks: in memory (a small
/// download, a file of its UFS, a `FILE:` transfer), or in the temporary
/// file a larger download was written to as it arrived (as a module
/// writes its package to flash), so a module in flight holds at most
/// [`crate::sim::download::progress::SPOOL_FROM`] bytes of it in memory.
#[derive(Debug)]
pub(crate) enum PackageData {
    /// The bytes.
    Memory(std::sync::Arc<Vec<u8>>),
    /// The file it was written to (removed on drop), and its length in
    /// bytes.
    Spooled(crate::sim::download::progress::SpoolFile, u64),
}

impl PackageData {
    /// Bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            PackageData::Memory(bytes) => bytes.len() as u64,
            PackageData::Spooled(_, len) => *len,
        }
    }

    /// The versions the package's own `version.txt` entry states
    /// ([`VersionChange::from_manifest`]; at most its first 4 KiB are
    /// read); `None` when the package is no readable zip, has no such
    /// entry, or it states no versions (blocking: may read a spooled file).
    pub(crate) fn manifest_versions(&self) -> Option<VersionChange> {
        match self {
            PackageData::Memory(bytes) => manifest_in(Cursor::new(bytes.as_slice())),
            PackageData::Spooled(file, _) => manifest_in(std::io::BufReader::with_capacity(
                64 * 1024,
                file.open().ok()?,
            )),
        }
    }

    /// The versions the package goes from and to: those its file name
    /// `file_name` states ([`VersionChange::from_file_name`]), else those
    /// of its `version.txt` ([`PackageData::manifest_versions`]).
    pub(crate) fn version_change(&self, file_name: &str) -> Option<VersionChange> {
        VersionChange::from_file_name(file_name).or_else(|| self.manifest_versions())
    }

    /// [`check_zip`] over the package, wherever it is (blocking: reads a
    /// spooled package back from its file).
    ///
    /// # Errors
    /// The first [`ZipError`]; a spooled file that cannot be read back is
    /// [`ZipError::Unreadable`].
    pub(crate) fn check_zip(&self) -> Result<usize, ZipError> {
        match self {
            PackageData::Memory(bytes) => check_zip(bytes),
            PackageData::Spooled(file, _) => {
                let file = file
                    .open()
                    .map_err(|e| ZipError::Unreadable(format!("spooled package: {e}")))?;
                zip_entries(std::io::BufReader::with_capacity(64 * 1024, file))
            }
        }
    }
}

/// What the module knows when it checks a package.
pub(crate) struct PackageFacts<'a> {
    /// Family.
    pub profile: &'static Profile,
    /// The package.
    pub data: &'a PackageData,
    /// The versions it goes from and to, if known
    /// ([`PackageData::version_change`]).
    pub change: Option<&'a VersionChange>,
    /// The module's firmware version, if set.
    pub version: Option<&'a str>,
    /// Free space in the module's file system, bytes; `None` = unlimited.
    pub free_space: Option<u64>,
}

/// The code a family reports for `code`: itself when the family has it
/// (`profile.upgrade_codes`), else [`FORMAT_CODE`], the generic failure
/// every family has (on `ec200`, 504 is "FOTA upgrade failed", seed 001
/// table 5).
pub fn family_code(profile: &Profile, code: u16) -> u16 {
    if profile.upgrade_codes.contains(&code) {
        code
    } else {
        FORMAT_CODE
    }
}

/// Runs the package checks of SPEC §5 in order — zip and CRC (families with
/// `zip_required`), signature and MD5 faults, version, `package_max`, free
/// space — and returns the first failure as (`<err>`, reason).
pub(crate) fn check(facts: &PackageFacts<'_>, faults: &FaultPlan) -> Option<(u16, String)> {
    let profile = facts.profile;
    if profile.zip_required
        && let Err(e) = facts.data.check_zip()
    {
        return Some((FORMAT_CODE, e.to_string()));
    }
    if faults.signature {
        return Some((SIGNATURE_CODE, "fault signature".to_string()));
    }
    if faults.md5 {
        return Some((MD5_CODE, "fault md5".to_string()));
    }
    if let (Some(current), Some(change)) = (facts.version, facts.change)
        && !change.applies_to(current)
    {
        return Some((
            profile.version_mismatch.code(),
            format!(
                "package is for {} but the module runs {current}",
                change.from
            ),
        ));
    }
    let size = facts.data.len();
    if let Some(max) = profile.package_max.filter(|max| size > *max) {
        return Some((
            family_code(profile, TOO_LARGE_CODE),
            format!("package is {size} bytes, over the family's {max}"),
        ));
    }
    if let Some(free) = facts.free_space.filter(|free| size > *free) {
        return Some((
            family_code(profile, SPACE_CODE),
            format!("package is {size} bytes, {free} bytes free"),
        ));
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use crate::sim::fault::Fault;

    /// A zip of `entries` (name, bytes, how each is compressed).
    fn zip_of(entries: &[(&str, &[u8], zip::CompressionMethod)]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, bytes, method) in entries {
            let options = zip::write::SimpleFileOptions::default().compression_method(*method);
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    /// A small valid zip with two entries.
    pub(crate) fn sample_zip() -> Vec<u8> {
        zip_of(&[
            ("version.txt", b"v13\n", zip::CompressionMethod::Stored),
            (
                "system.diff",
                &[7u8; 4096],
                zip::CompressionMethod::Deflated,
            ),
        ])
    }

    fn facts<'a>(profile: &str, bytes: &[u8], version: Option<&'a str>) -> PackageFacts<'a> {
        // Leaked: a test's few bytes.
        let data: &'static PackageData = Box::leak(Box::new(PackageData::Memory(
            std::sync::Arc::new(bytes.to_vec()),
        )));
        let change: &'static Option<VersionChange> =
            Box::leak(Box::new(data.version_change("update-v12-to-v13.zip")));
        PackageFacts {
            profile: Profile::by_name(profile).unwrap(),
            data,
            change: change.as_ref(),
            version,
            free_space: None,
        }
    }

    #[test]
    fn a_good_zip_passes() {
        let zip = sample_zip();
        assert_eq!(check_zip(&zip).unwrap(), 2);
        assert_eq!(
            check(&facts("ec2x", &zip, Some("v12")), &FaultPlan::default()),
            None
        );
    }

    #[test]
    fn not_a_zip_is_504() {
        let junk = b"this is not a zip".to_vec();
        assert!(matches!(check_zip(&junk), Err(ZipError::Unreadable(_))));
        let got = check(&facts("eg06xk", &junk, None), &FaultPlan::default());
        assert_eq!(got.map(|(c, _)| c), Some(504));
        // ec200 takes raw images (SPEC §5): no zip check there.
        assert_eq!(
            check(&facts("ec200", &junk, None), &FaultPlan::default()),
            None
        );
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let mut zip = sample_zip();
        // "v13\n" is stored uncompressed; damage it in place.
        let at = zip.windows(4).position(|w| w == b"v13\n").unwrap();
        zip[at] = b'x';
        assert!(matches!(check_zip(&zip), Err(ZipError::BadEntry { .. })));
    }

    #[test]
    fn a_truncated_zip_is_refused() {
        let zip = sample_zip();
        assert!(check_zip(&zip[..zip.len() / 2]).is_err());
        assert!(check_zip(&[]).is_err());
    }

    #[test]
    fn version_mismatch_is_510_except_on_ec200() {
        let zip = sample_zip();
        let plan = FaultPlan::default();
        assert_eq!(
            check(&facts("ec2x", &zip, Some("v11")), &plan).map(|c| c.0),
            Some(510)
        );
        assert_eq!(check(&facts("ec2x", &zip, None), &plan), None);
        assert_eq!(
            check(&facts("ec200", &zip, Some("v11")), &plan).map(|c| c.0),
            Some(504)
        );
    }

    #[test]
    fn a_name_without_versions_takes_them_from_version_txt() {
        let zip = zip_of(&[
            (
                "version.txt",
                b"from=v12\nto=v13\n",
                zip::CompressionMethod::Deflated,
            ),
            ("system.diff", &[7u8; 512], zip::CompressionMethod::Stored),
        ]);
        let data = PackageData::Memory(std::sync::Arc::new(zip));
        let change = data.version_change("dfota_update.bin").unwrap();
        assert_eq!((change.from.as_str(), change.to.as_str()), ("v12", "v13"));
        // The file name's versions come first.
        let named = data.version_change("update-v7-to-v8.zip").unwrap();
        assert_eq!((named.from.as_str(), named.to.as_str()), ("v7", "v8"));
        let facts = |version| PackageFacts {
            profile: Profile::by_name("ec2x").unwrap(),
            data: &data,
            change: Some(&change),
            version,
            free_space: None,
        };
        let plan = FaultPlan::default();
        assert_eq!(check(&facts(Some("v11")), &plan).map(|c| c.0), Some(510));
        assert_eq!(check(&facts(Some("V12")), &plan), None);
        // No manifest with both keys, no zip: no versions.
        let bare = PackageData::Memory(std::sync::Arc::new(sample_zip()));
        assert_eq!(bare.version_change("dfota_update.bin"), None);
        let junk = PackageData::Memory(std::sync::Arc::new(b"not a zip".to_vec()));
        assert_eq!(junk.version_change("dfota_update.bin"), None);
    }

    #[test]
    fn eg06xk_dfota_reports_a_version_mismatch_as_505() {
        let zip = sample_zip();
        let got = check(
            &facts("eg06xk-dfota", &zip, Some("v11")),
            &FaultPlan::default(),
        );
        assert_eq!(got.map(|c| c.0), Some(505));
    }

    #[test]
    fn size_limits_give_511_and_550() {
        let zip = sample_zip();
        let plan = FaultPlan::default();
        let mut f = facts("ec2x", &zip, None);
        f.free_space = Some(zip.len() as u64 - 1);
        assert_eq!(check(&f, &plan).map(|c| c.0), Some(511));
        f.free_space = Some(zip.len() as u64);
        assert_eq!(check(&f, &plan), None);
        // Over package_max: use a profile copy with a tiny limit.
        let mut small: Profile = Profile::by_name("eg06xk").unwrap().clone();
        small.package_max = Some(10);
        let small: &'static Profile = Box::leak(Box::new(small));
        let f = PackageFacts {
            profile: small,
            ..facts("eg06xk", &zip, None)
        };
        assert_eq!(check(&f, &plan).map(|c| c.0), Some(550));
    }

    /// `bytes` through a spool (a file past its first 16 KiB).
    fn spooled(bytes: &[u8]) -> PackageData {
        let mut spool = crate::sim::download::progress::Spool::default();
        for chunk in bytes.chunks(4096) {
            spool.push(chunk).unwrap();
        }
        spool.finish()
    }

    #[test]
    fn a_spooled_package_is_checked_from_its_file() {
        // A stored 20 KiB entry: past the spool's memory part.
        let diff: Vec<u8> = (0..20 * 1024).map(|i| i as u8).collect();
        let zip = zip_of(&[
            ("version.txt", b"v13\n", zip::CompressionMethod::Stored),
            ("system.diff", &diff, zip::CompressionMethod::Stored),
        ]);
        let data = spooled(&zip);
        assert!(matches!(data, PackageData::Spooled(..)));
        assert_eq!(data.check_zip().unwrap(), 2);
        assert_eq!(data.len(), zip.len() as u64);
        let mut broken = zip.clone();
        let at = broken.windows(4).position(|w| w == b"v13\n").unwrap();
        broken[at] = b'x';
        assert!(matches!(
            spooled(&broken).check_zip(),
            Err(ZipError::BadEntry { .. })
        ));
    }

    #[test]
    fn check_faults_give_their_codes() {
        let zip = sample_zip();
        let sig = FaultPlan::new(&[Fault::Signature], 5);
        assert_eq!(
            check(&facts("eg06xk", &zip, None), &sig).map(|c| c.0),
            Some(513)
        );
        let md5 = FaultPlan::new(&[Fault::Md5], 5);
        assert_eq!(
            check(&facts("ec200", &zip, None), &md5).map(|c| c.0),
            Some(506)
        );
    }
}
