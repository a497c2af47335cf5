//! The database file itself: the name it is known by, who may read it, and whether the file a
//! process has open is still the one at its path.
//!
//! I/O shell. The file holds the signing keys and every run's input, so runner creates it (and
//! SQLite then its `-wal` and `-shm` files, which take the database file's mode) readable by its
//! owner only, whatever the umask. A file with a second name (a hard link) is refused: SQLite
//! keeps the write-ahead log next to the name it was opened by, so two names are two logs for
//! one file, and each process would miss the other's commits. Symbolic links are resolved, so
//! the lock files (`owner`) follow the file, not the name.

use std::path::{Path, PathBuf};

/// How many symbolic links are followed before a path is taken as it is (a loop).
const MAX_LINKS: usize = 40;

/// The path a database is known by: symbolic links resolved, also when the file does not exist
/// yet (a link to a file SQLite will create) or a directory on the way is a link.
pub fn resolve(db: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(db) {
        return p;
    }
    let mut path = db.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                }
            }
            Err(_) => break,
        }
    }
    // The file does not exist: resolve the directory it will be created in.
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or(path)
        }
        _ => path,
    }
}

/// Before SQLite opens `path`: creates a missing file with mode 0600 (SQLite would create it
/// 0644 less the umask), and refuses a file with more than one name. An existing file readable
/// by others is kept as it is, with a warning.
pub(super) fn prepare(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.nlink() > 1 {
                    return Err(format!(
                        "the database file has {} names (hard links); SQLite keeps its \
                         write-ahead log next to the name it is opened by, so two names are two \
                         logs for one file and can lose or corrupt runs: remove the other names \
                         (`find / -xdev -samefile {}` lists them), or copy the file \
                         (`sqlite3 {} .backup copy.db`)",
                        meta.nlink(),
                        path.display(),
                        path.display()
                    ));
                }
                let mode = meta.permissions().mode() & 0o777;
                if meta.is_file() && mode & 0o077 != 0 {
                    tracing::warn!(
                        db = %path.display(),
                        mode = format!("{mode:04o}"),
                        "the database file can be read by other users, and it holds the signing keys: `chmod 600 {}` (runner creates new ones 0600)",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Ok(file) => {
                        // `mode` is less the umask; a umask cannot add bits, but be exact.
                        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
                    }
                    // Created by another process meanwhile: SQLite opens that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("cannot create the database file: {e}")),
                }
            }
            // SQLite reports what is wrong with the path (a missing folder, say).
            Err(_) => {}
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The file a process has open at a path, to tell when the path no longer names it: the file
/// was deleted (a process that goes on would write into a file nobody can open again, and a
/// restart would start from an empty database with new signing keys) or replaced.
#[derive(Debug, Clone)]
pub struct DbFile {
    path: PathBuf,
    id: (u64, u64),
}

/// The (device, inode) of what `path` names.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

impl DbFile {
    /// The file at `path` now (call it once the database is open).
    pub fn identify(path: &Path) -> std::io::Result<DbFile> {
        let path = resolve(path);
        let id = identity(&path)?;
        Ok(DbFile { path, id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the file that was identified; an error says what happened.
    pub fn check(&self) -> Result<(), String> {
        match identity(&self.path) {
            Ok(id) if id == self.id => Ok(()),
            Ok(_) => Err(format!(
                "the database file `{}` was replaced by another file while runner had it open",
                self.path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "the database file `{}` was deleted while runner had it open",
                self.path.display()
            )),
            // Unreadable for now (a permission change, say): not proof that it is gone.
            Err(_) => Ok(()),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn symbolic_links_resolve_to_the_file_also_before_it_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path())
            .expect("dir")
            .join("real.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink("real.db", &link).expect("symlink");
        assert_eq!(resolve(&link), real, "a link to a file not created yet");
        std::fs::write(&real, b"").expect("create");
        assert_eq!(resolve(&link), real);
        let dir_link = dir.path().join("d");
        std::os::unix::fs::symlink(".", &dir_link).expect("dir symlink");
        assert_eq!(resolve(&dir_link.join("link.db")), real);
        assert_eq!(
            resolve(&dir_link.join("new.db")),
            real.with_file_name("new.db")
        );
    }

    #[test]
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("runner.db");
        std::fs::write(&db, b"one").expect("write");
        let f = DbFile::identify(&db).expect("identify");
        assert_eq!(f.check(), Ok(()));
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"two").expect("write");
        std::fs::rename(&other, &db).expect("replace");
        assert!(f.check().expect_err("replaced").contains("was replaced"));
        std::fs::remove_file(&db).expect("delete");
        assert!(f.check().expect_err("deleted").contains("was deleted"));
    }
}
