//! `listen --state FILE`: the id of the last message handled, kept so that
//! a listener started again resumes after it. Written the crash-safe way:
//! a temporary file beside it, fsync, rename over, fsync the directory. A
//! crash leaves the old id or the new one, never half of either.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        // The process id keeps two listeners given the same file from
        // writing one temporary file at once.
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        StateFile { path, tmp }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id kept, or `None` when there is no file yet (or it is empty).
    pub fn load(&self) -> io::Result<Option<String>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = text.trim();
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it does not hold a message id",
            ));
        }
        Ok(Some(id.to_owned()))
    }

    pub fn save(&self, id: &str) -> io::Result<()> {
        let mut f = File::create(&self.tmp)?;
        f.write_all(id.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        // The rename itself is durable only once the directory is synced.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateFile::new(dir.path().join("last-id"));
        assert_eq!(s.load().unwrap(), None);
        s.save("41").unwrap();
        s.save("42").unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some("42"));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["last-id"]);
    }

    #[test]
    fn a_file_of_garbage_is_an_error_not_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, "1\n2\n").unwrap();
        assert!(StateFile::new(p).load().is_err());
    }
}
