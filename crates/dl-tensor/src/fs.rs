//! Writing files so that a crash, a full disk or a kill never leaves a half-written file
//! under the final name.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, flushed
/// to disk, then renamed over `path`. On any error the temporary file is removed and
/// `path` keeps its old content (or stays absent).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_nothing_behind_on_error() {
        let dir = std::env::temp_dir().join(format!("dlfs-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // a folder in the way of the rename: the old content is untouched, no temp left
        let blocked = dir.join("sub");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(atomic_write(&blocked, b"three").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The temporary file is made beside the target, not in the working folder: a rename
    /// cannot cross file systems, so a write to another one than the working folder's
    /// (`/dev/shm`, a tmpfs on Linux) would fail.
    #[cfg(unix)]
    #[test]
    fn the_temporary_file_is_made_beside_the_target() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let (Ok(there), Ok(here)) = (std::fs::metadata(shm), std::fs::metadata(".")) else {
            eprintln!("no /dev/shm: nothing to check");
            return;
        };
        if there.dev() == here.dev() {
            eprintln!("/dev/shm is on the working folder's file system: nothing to check");
            return;
        }
        let dir = shm.join(format!("dlfs-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        let written = atomic_write(&p, b"one");
        let read = std::fs::read(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        written.unwrap();
        assert_eq!(read.unwrap(), b"one");
    }
}
