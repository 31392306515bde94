//! Checking model files: size and sha256 against the registry, the `.verified` sidecar
//! that spares re-hashing a large file on every start, and the install step that moves
//! a verified temporary file to its destination.
//!
//! Invariant: `install` either renames a file whose digest matched into place, or
//! deletes it; a sidecar is only written for a digest that was actually computed.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::progress::Progress;
use super::{HubError, ModelEntry};

/// What a file must match; `None` fields are not checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expected<'a> {
    pub size: Option<u64>,
    pub sha256: Option<&'a str>,
}

impl<'a> Expected<'a> {
    pub(crate) fn of(entry: &'a ModelEntry) -> Expected<'a> {
        Expected { size: entry.size, sha256: entry.sha256.as_deref() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    pub size: u64,
    pub sha256: String,
}

/// A writer that hashes and counts what passes through it, so a file can be
/// verified while it is being written instead of read back afterwards.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    progress: Progress,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, progress: Progress) -> HashingWriter<W> {
        HashingWriter { inner, hasher: Sha256::new(), size: 0, progress }
    }

    pub(crate) fn finish(self) -> (W, Digest) {
        let sha256 = hex(&self.hasher.finalize());
        let digest = Digest { size: self.size, sha256 };
        (self.inner, digest)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Which end of a copy failed: reading is the source's fault (a corrupt
/// archive), writing the destination's (a full disk, a file size limit).
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

impl CopyError {
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            CopyError::Read(e) | CopyError::Write(e) => e,
        }
    }
}

/// Copies `reader` into `writer` in large chunks (`io::copy` uses 8 KiB).
pub(crate) fn copy_large(reader: &mut impl Read, writer: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

pub(crate) fn hash_file(path: &Path, progress: bool) -> Result<Digest, HubError> {
    let mut file = File::open(path).map_err(HubError::io(path))?;
    let total = file.metadata().map_err(HubError::io(path))?.len();
    let label = format!("sha256 {}", display_name(path));
    let mut writer = HashingWriter::new(io::sink(), Progress::new(label, total, progress));
    copy_large(&mut file, &mut writer).map_err(|e| HubError::io(path)(e.into_io()))?;
    Ok(writer.finish().1)
}

pub(crate) fn check_digest(path: &Path, digest: &Digest, expected: Expected) -> Result<(), HubError> {
    if let Some(size) = expected.size {
        if size != digest.size {
            return Err(HubError::SizeMismatch {
                path: path.to_path_buf(),
                expected: size,
                actual: digest.size,
            });
        }
    }
    if let Some(sha) = expected.sha256 {
        if !sha.eq_ignore_ascii_case(&digest.sha256) {
            return Err(HubError::ChecksumMismatch {
                path: path.to_path_buf(),
                expected: sha.to_string(),
                actual: digest.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// Moves `temp` (whose content hashed to `digest`) to `dest` if it matches `expected`;
/// otherwise `temp` is deleted and `dest` is untouched.
pub(crate) fn install(
    temp: NamedTempFile,
    digest: &Digest,
    dest: &Path,
    expected: Expected,
) -> Result<(), HubError> {
    check_digest(dest, digest, expected)?;
    temp.as_file().sync_all().map_err(HubError::io(temp.path()))?;
    temp.persist(dest).map_err(|e| HubError::io(dest)(e.error))?;
    write_sidecar(dest, &sidecar_path(dest), digest);
    Ok(())
}

/// Checks `file` against `expected`. A file whose size matches and whose sidecar
/// vouches for the expected sha256 is not hashed again unless `force` is set.
/// Unpinned entries (no sha256) are only hashed when forced, to report the digest.
pub(crate) fn verify_cached(
    file: &Path,
    sidecar: &Path,
    expected: Expected,
    force: bool,
    progress: bool,
) -> Result<(), HubError> {
    let meta = std::fs::metadata(file).map_err(HubError::io(file))?;
    if let Some(size) = expected.size {
        if size != meta.len() {
            return Err(HubError::SizeMismatch {
                path: file.to_path_buf(),
                expected: size,
                actual: meta.len(),
            });
        }
    }
    if expected.sha256.is_none() && !force {
        tracing::debug!(file = %file.display(), "no sha256 in the registry; checked by size only");
        return Ok(());
    }
    if !force && sidecar_vouches(file, &meta, sidecar, expected) {
        tracing::debug!(file = %file.display(), "sha256 already verified (sidecar)");
        return Ok(());
    }
    tracing::info!(file = %file.display(), "verifying sha256");
    let digest = hash_file(file, progress)?;
    check_digest(file, &digest, expected)?;
    if expected.sha256.is_none() {
        tracing::info!(file = %file.display(), sha256 = %digest.sha256, "not pinned in the registry; add this sha256 to pin it");
    }
    write_sidecar(file, sidecar, &digest);
    Ok(())
}

/// `<file>.verified`, next to the file.
pub(crate) fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    file.with_file_name(name)
}

/// What the sidecar remembers: the file it speaks for, as it was when hashed.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Sidecar {
    path: String,
    size: u64,
    mtime_secs: u64,
    mtime_nanos: u32,
    sha256: String,
}

fn mtime(meta: &Metadata) -> Option<(u64, u32)> {
    let since = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((since.as_secs(), since.subsec_nanos()))
}

fn sidecar_for(file: &Path, meta: &Metadata, sha256: &str) -> Option<Sidecar> {
    let (mtime_secs, mtime_nanos) = mtime(meta)?;
    Some(Sidecar {
        path: file.display().to_string(),
        size: meta.len(),
        mtime_secs,
        mtime_nanos,
        sha256: sha256.to_string(),
    })
}

/// True when the sidecar was written for this very file (same path, size and mtime)
/// and records the expected sha256. Anything unreadable means "hash again".
pub(crate) fn sidecar_vouches(file: &Path, meta: &Metadata, sidecar: &Path, expected: Expected) -> bool {
    let Some(sha) = expected.sha256 else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(sidecar) else {
        return false;
    };
    let Ok(recorded) = toml::from_str::<Sidecar>(&text) else {
        return false;
    };
    sidecar_for(file, meta, &sha.to_ascii_lowercase()).is_some_and(|now| now == recorded)
}

/// Best effort: a read-only models folder only costs a re-hash next time.
fn write_sidecar(file: &Path, sidecar: &Path, digest: &Digest) {
    let written = std::fs::metadata(file)
        .ok()
        .and_then(|meta| sidecar_for(file, &meta, &digest.sha256))
        .and_then(|record| toml::to_string(&record).ok())
        .map(|text| std::fs::write(sidecar, text));
    match written {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!(sidecar = %sidecar.display(), "could not record the verification: {e}")
        }
        None => tracing::warn!(file = %file.display(), "could not record the verification"),
    }
}

fn display_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("hello world\n")
    const HELLO_SHA: &str = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447";

    fn temp_with(dir: &Path, bytes: &[u8]) -> NamedTempFile {
        let mut temp = NamedTempFile::new_in(dir).unwrap();
        temp.write_all(bytes).unwrap();
        temp
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn hash_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_with(dir.path(), b"hello world\n");
        let digest = hash_file(temp.path(), false).unwrap();
        assert_eq!(digest, Digest { size: 12, sha256: HELLO_SHA.into() });
    }

    #[test]
    fn install_with_the_right_hash_renames_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_with(dir.path(), b"hello world\n");
        let digest = hash_file(temp.path(), false).unwrap();
        let dest = dir.path().join("model.gguf");
        let upper = HELLO_SHA.to_ascii_uppercase();
        let expected = Expected { size: Some(12), sha256: Some(&upper) };
        install(temp, &digest, &dest, expected).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world\n");
        assert_eq!(files_in(dir.path()), ["model.gguf", "model.gguf.verified"]);
        let meta = std::fs::metadata(&dest).unwrap();
        assert!(sidecar_vouches(&dest, &meta, &sidecar_path(&dest), expected));
    }

    #[test]
    fn install_with_a_wrong_hash_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_with(dir.path(), b"hello world\n");
        let digest = hash_file(temp.path(), false).unwrap();
        let dest = dir.path().join("model.gguf");
        let wrong = "0".repeat(64);
        let err =
            install(temp, &digest, &dest, Expected { size: Some(12), sha256: Some(&wrong) }).unwrap_err();
        match err {
            HubError::ChecksumMismatch { expected, actual, .. } => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, HELLO_SHA);
            }
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        assert!(files_in(dir.path()).is_empty(), "{:?}", files_in(dir.path()));

        let temp = temp_with(dir.path(), b"hello world\n");
        let err = install(temp, &digest, &dest, Expected { size: Some(13), sha256: None }).unwrap_err();
        assert!(matches!(err, HubError::SizeMismatch { expected: 13, actual: 12, .. }), "{err:?}");
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn sidecar_spares_rehash_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        let sidecar = sidecar_path(&file);
        std::fs::write(&file, b"hello world\n").unwrap();
        let expected = Expected { size: Some(12), sha256: Some(HELLO_SHA) };
        verify_cached(&file, &sidecar, expected, false, false).unwrap();
        assert!(sidecar.exists());

        // A sidecar that vouches is trusted: prove it by making it lie about the hash
        // of a file with the same size and mtime, then by forcing a re-hash.
        let meta = std::fs::metadata(&file).unwrap();
        let mtime = meta.modified().unwrap();
        std::fs::write(&file, b"HELLO WORLD\n").unwrap();
        File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        verify_cached(&file, &sidecar, expected, false, false).unwrap();
        let err = verify_cached(&file, &sidecar, expected, true, false).unwrap_err();
        assert!(matches!(err, HubError::ChecksumMismatch { .. }), "{err:?}");

        // A changed mtime invalidates the sidecar.
        std::fs::write(&file, b"HELLO WORLD\n").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime + std::time::Duration::from_secs(5))
            .unwrap();
        let err = verify_cached(&file, &sidecar, expected, false, false).unwrap_err();
        assert!(matches!(err, HubError::ChecksumMismatch { .. }), "{err:?}");
    }

    #[test]
    fn wrong_size_fails_before_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"hello").unwrap();
        let err = verify_cached(
            &file,
            &sidecar_path(&file),
            Expected { size: Some(12), sha256: None },
            false,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, HubError::SizeMismatch { expected: 12, actual: 5, .. }), "{err:?}");
    }
}
