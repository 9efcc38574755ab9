//! Pack files: block bytes appended to files beside the redb database, which indexes them.
//!
//! A block's bytes are written once, sequentially, with one copy into the page cache, instead
//! of passing through redb's copy-on-write B-tree (a user-space copy, a page-cache copy and a
//! leaf re-read per insert: the store's write path was the bottleneck of adds and network
//! fetches, see docs/BENCHMARKS.md).
//!
//! Format (so the index can be rebuilt from the packs alone, [`scan`]): a pack begins with
//! [`PACK_MAGIC`]; each block is a frame, [`FRAME_MAGIC`], its length (`u32` LE) and its CID
//! (36 bytes), then its bytes. An index entry points at the bytes. Packs written before the
//! frames (no magic) stay readable through the index but cannot be re-indexed.
//!
//! Rules that keep a crash harmless:
//! - bytes are appended only inside a redb write transaction (so appends are serialised),
//!   and the index entries that point at them are written in that same transaction;
//! - before any durable redb commit, every appended byte is synced ([`Packs::sync`]); redb's
//!   durable commit also persists earlier non-durable ones, so *every* durable commit syncs;
//! - a crash leaves at most bytes no committed entry points at (the tail of the active pack, or
//!   whole packs no committed transaction recorded): they are garbage, removed at open or when
//!   the pack is compacted.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use crate::{Error, Result};

/// A pack is closed (and a new one begun) once it holds this many bytes. Compaction copies
/// at most one pack's worth of live blocks per pack it reclaims.
#[cfg(not(test))]
pub(crate) const PACK_SIZE: u64 = 256 << 20;
/// Small packs in unit tests, so rotation and compaction happen with small objects.
#[cfg(test)]
pub(crate) const PACK_SIZE: u64 = 4 << 20;

/// Where a block's bytes are: pack, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    pub(crate) const ENCODED: usize = 16;

    pub(crate) fn encode(self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..4].copy_from_slice(&self.pack.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let bytes: &[u8; Self::ENCODED] = bytes
            .try_into()
            .map_err(|_| Error::Corrupt(format!("block index entry of {} bytes", bytes.len())))?;
        let [p0, p1, p2, p3, o @ .., l0, l1, l2, l3] = *bytes;
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&o);
        Ok(Self {
            pack: u32::from_le_bytes([p0, p1, p2, p3]),
            offset: u64::from_le_bytes(offset),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
        })
    }
}

/// The first bytes of a pack file with framed blocks.
pub(crate) const PACK_MAGIC: &[u8; 8] = b"sovpack2";
/// The first bytes of a block's frame.
pub(crate) const FRAME_MAGIC: &[u8; 4] = b"SOVB";
/// A block's frame header: magic, length, CID.
pub(crate) const FRAME_HEADER: usize = 4 + 4 + 36;

/// The frame header of block `cid` of `len` bytes.
fn frame_header(cid: &sov_core::ContentId, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(FRAME_HEADER);
    h.extend_from_slice(FRAME_MAGIC);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&cid.to_bytes());
    debug_assert_eq!(h.len(), FRAME_HEADER);
    h
}

/// The pack being appended to.
struct Active {
    id: u32,
    file: File,
    len: u64,
    /// Bytes appended since the last sync.
    unsynced: u64,
    /// A pack file was created since the directory was last synced.
    dir_dirty: bool,
}

/// Bytes every add leaves free on the file system (for the index's own commits, and so a
/// full disk never reaches the database engine mid-write).
pub const RESERVE: u64 = 64 << 20;

/// Whether an append must leave the reserve free (new data), or may use it (compaction,
/// which moves live blocks to free more than it takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    New,
    Reclaim,
}

/// The pack files of one store.
pub(crate) struct Packs {
    dir: PathBuf,
    /// Most bytes the pack files may hold together (`None`: the disk is the limit).
    capacity: Option<u64>,
    /// Bytes the pack files hold now.
    used: std::sync::atomic::AtomicU64,
    active: Mutex<Active>,
    /// Open read handles, by pack id.
    readers: RwLock<HashMap<u32, Arc<File>>>,
}

fn file_name(id: u32) -> String {
    format!("{id:08x}.pack")
}

fn parse_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Packs {
    /// Open the pack directory `dir` (created if absent). `recorded` are the packs the
    /// committed index knows; every other pack file is garbage from a crash and is removed.
    pub(crate) fn open(dir: &Path, recorded: &[u32], capacity: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut highest = None;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_name) else {
                continue;
            };
            if recorded.contains(&id) {
                highest = highest.max(Some(id));
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        let mut id = highest.unwrap_or(0);
        let (mut file, mut dir_dirty) = open_append(&dir.join(file_name(id)))?;
        let mut len = file.metadata()?.len();
        if len > 0 && !is_framed(&file)? {
            // A pack of the unframed format: appends go to a new pack from here on.
            file.sync_data()?;
            id = id
                .checked_add(1)
                .ok_or_else(|| Error::TooLarge("pack ids exhausted".into()))?;
            (file, dir_dirty) = open_append(&dir.join(file_name(id)))?;
            len = file.metadata()?.len();
        }
        if len == 0 {
            file.write_all(PACK_MAGIC)?;
            len = PACK_MAGIC.len() as u64;
        }
        let mut used = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_str().and_then(parse_name).is_some() {
                used += entry.metadata()?.len();
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            capacity,
            used: std::sync::atomic::AtomicU64::new(used),
            active: Mutex::new(Active {
                id,
                file,
                len,
                unsynced: 0,
                dir_dirty,
            }),
            readers: RwLock::new(HashMap::new()),
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pack being appended to.
    pub(crate) fn active_id(&self) -> u32 {
        self.active().id
    }

    /// Close the active pack (synced) and begin a new, empty one (callers hold a redb write
    /// transaction). The new pack file is only recorded once a block lands in it; a store
    /// reopened before that removes it as unrecorded, and begins again from the newest
    /// recorded pack.
    pub(crate) fn rotate(&self) -> Result<()> {
        let mut a = self.active();
        a.file.sync_data()?;
        let id =
            a.id.checked_add(1)
                .ok_or_else(|| Error::TooLarge("pack ids exhausted".into()))?;
        let (mut file, _) = open_append(&self.dir.join(file_name(id)))?;
        let mut len = file.metadata()?.len();
        if len == 0 {
            file.write_all(PACK_MAGIC)?;
            len = PACK_MAGIC.len() as u64;
            self.used
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
        *a = Active {
            id,
            len,
            file,
            unsynced: len,
            dir_dirty: true,
        };
        Ok(())
    }

    /// Cut the active pack back to `end` bytes, if it is longer (callers hold a redb write
    /// transaction and know no committed block lies past `end`).
    pub(crate) fn truncate_active(&self, end: u64) -> Result<()> {
        let end = end.max(PACK_MAGIC.len() as u64);
        let mut a = self.active();
        if a.len <= end {
            return Ok(());
        }
        a.file.set_len(end)?;
        use std::io::Seek as _;
        a.file.seek(std::io::SeekFrom::End(0))?;
        let cut = a.len - end;
        a.len = end;
        a.unsynced = a.unsynced.saturating_sub(cut);
        let _ = self.used.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |u| Some(u.saturating_sub(cut)),
        );
        Ok(())
    }

    /// The directory of the pack files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the pack files hold.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `n` more bytes fit: within the capacity, and leaving the file system
    /// [`RESERVE`] bytes free (for [`Room::New`]) or at least a little (for
    /// [`Room::Reclaim`]). Checked before a byte is written, so a full disk is a clean
    /// refusal and never a half-written block.
    pub(crate) fn check_room(&self, n: u64, room: Room) -> Result<()> {
        if room == Room::New
            && let Some(cap) = self.capacity
            && self.used() + n > cap
        {
            return Err(Error::Full(format!(
                "the store holds {} of its {} bytes and needs {n} more",
                self.used(),
                cap
            )));
        }
        let keep = match room {
            Room::New => RESERVE,
            Room::Reclaim => 1 << 20,
        };
        if let Some(free) = free_space(&self.dir)
            && free < n + keep
        {
            return Err(Error::Full(format!(
                "{} has {free} bytes free; {n} more would leave less than {keep}",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Append block `cid`'s `bytes` in a frame (callers hold a redb write transaction);
    /// returns where the bytes are.
    pub(crate) fn append(&self, cid: &sov_core::ContentId, bytes: &[u8]) -> Result<Loc> {
        self.append_with(cid, bytes, Room::New)
    }

    /// [`Packs::append`], with the room rule to apply.
    pub(crate) fn append_with(
        &self,
        cid: &sov_core::ContentId,
        bytes: &[u8],
        room: Room,
    ) -> Result<Loc> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::TooLarge(format!("a block of {} bytes", bytes.len())))?;
        let framed = (bytes.len() + FRAME_HEADER) as u64;
        self.check_room(framed, room)?;
        let mut a = self.active();
        if a.len > PACK_MAGIC.len() as u64 && a.len + framed > PACK_SIZE {
            // Close this pack: sync it now, so only the newest pack is ever unsynced.
            drop(a);
            self.rotate()?;
            a = self.active();
        }
        let start = a.len;
        let loc = Loc {
            pack: a.id,
            offset: start + FRAME_HEADER as u64,
            len,
        };
        let header = frame_header(cid, len);
        if let Err(e) = a
            .file
            .write_all(&header)
            .and_then(|()| a.file.write_all(bytes))
        {
            // A short write leaves the file position unknown: cut the file back to where the
            // block began, so nothing half-written stays and the next append lands where it
            // is recorded.
            let _ = a.file.set_len(start);
            a.len = a.file.metadata()?.len();
            use std::io::Seek as _;
            a.file.seek(std::io::SeekFrom::End(0))?;
            return Err(if e.kind() == std::io::ErrorKind::StorageFull {
                Error::Full(format!("{}: {e}", self.dir.display()))
            } else {
                e.into()
            });
        }
        self.used
            .fetch_add(framed, std::sync::atomic::Ordering::Relaxed);
        a.len += framed;
        a.unsynced += framed;
        Ok(loc)
    }

    /// Make every appended byte durable (before a durable redb commit).
    pub(crate) fn sync(&self) -> Result<()> {
        let mut a = self.active();
        if a.unsynced > 0 {
            a.file.sync_data()?;
            a.unsynced = 0;
        }
        if a.dir_dirty {
            #[cfg(unix)]
            File::open(&self.dir)?.sync_all()?;
            a.dir_dirty = false;
        }
        Ok(())
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>> {
        if let Some(f) = self
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pack)
        {
            return Ok(f.clone());
        }
        let path = self.dir.join(file_name(pack));
        let file = Arc::new(File::open(&path).map_err(|e| {
            Error::Corrupt(format!("pack {} cannot be opened: {e}", path.display()))
        })?);
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pack, file.clone());
        Ok(file)
    }

    /// The bytes at `loc`, not checked against anything.
    pub(crate) fn read(&self, loc: Loc) -> Result<Vec<u8>> {
        let mut out = vec![0u8; loc.len as usize];
        if loc.len > 0 {
            read_at(&*self.reader(loc.pack)?, &mut out, loc.offset).map_err(|e| {
                Error::Corrupt(format!(
                    "pack {} has no {} bytes at {}: {e}",
                    file_name(loc.pack),
                    loc.len,
                    loc.offset
                ))
            })?;
        }
        Ok(out)
    }

    /// The length of pack `id`'s file.
    pub(crate) fn file_len(&self, id: u32) -> Result<u64> {
        match std::fs::metadata(self.dir.join(file_name(id))) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete pack `id` (no committed entry points into it any more; never the active one).
    pub(crate) fn delete(&self, id: u32) -> Result<()> {
        debug_assert_ne!(id, self.active_id());
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let len = self.file_len(id)?;
        match std::fs::remove_file(self.dir.join(file_name(id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => {
                let _ = self.used.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |u| Some(u.saturating_sub(len)),
                );
                Ok(())
            }
        }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir` (`None` where it
/// cannot be told).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::fs::statvfs(dir)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Whether `file` (a pack) begins with [`PACK_MAGIC`].
fn is_framed(file: &File) -> Result<bool> {
    let mut head = [0u8; 8];
    match read_at(file, &mut head, 0) {
        Ok(()) => Ok(&head == PACK_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What [`scan`] found in one pack.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// Blocks whose bytes match their CID, with where they are.
    pub(crate) blocks: Vec<(sov_core::ContentId, Loc)>,
    /// Frames whose bytes do not match their CID (bit rot).
    pub(crate) damaged: u64,
    /// Bytes skipped looking for the next frame (a torn write, damage to a header).
    pub(crate) skipped: u64,
    /// The pack has no frames (written before them): it cannot be re-indexed.
    pub(crate) unframed: bool,
}

/// Read pack `id` in `dir` frame by frame, checking every block against its CID. A damaged
/// header is passed over by looking for the next frame's magic.
pub(crate) fn scan(dir: &Path, id: u32) -> Result<Scanned> {
    use std::io::Read as _;
    let path = dir.join(file_name(id));
    let file = File::open(&path)?;
    let mut out = Scanned::default();
    if !is_framed(&file)? {
        out.unframed = file.metadata()?.len() > 0;
        return Ok(out);
    }
    // A pack is at most PACK_SIZE plus the one frame that closed it: read no more than
    // that (a larger file is damage; what lies past the bound is counted as skipped).
    let file_len = file.metadata()?.len();
    let bound = PACK_SIZE + crate::MAX_BLOCK as u64 + FRAME_HEADER as u64 + PACK_MAGIC.len() as u64;
    let mut bytes = Vec::new();
    std::io::BufReader::new(file)
        .take(bound)
        .read_to_end(&mut bytes)?;
    out.skipped += file_len.saturating_sub(bytes.len() as u64);
    let mut at = PACK_MAGIC.len();
    while at + FRAME_HEADER <= bytes.len() {
        let header = &bytes[at..at + FRAME_HEADER];
        let parsed = (&header[..4] == FRAME_MAGIC)
            .then(|| {
                let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
                let cid = sov_core::ContentId::from_bytes(&header[8..]).ok()?;
                Some((len, cid))
            })
            .flatten()
            .filter(|(len, _)| at + FRAME_HEADER + *len as usize <= bytes.len());
        let Some((len, cid)) = parsed else {
            // Not a frame here: look for the next one.
            let next = bytes[at + 1..]
                .windows(4)
                .position(|w| w == FRAME_MAGIC)
                .map_or(bytes.len(), |p| at + 1 + p);
            out.skipped += (next - at) as u64;
            at = next;
            continue;
        };
        let start = at + FRAME_HEADER;
        let data = &bytes[start..start + len as usize];
        if cid.matches(data) {
            out.blocks.push((
                cid,
                Loc {
                    pack: id,
                    offset: start as u64,
                    len,
                },
            ));
        } else {
            out.damaged += 1;
        }
        at = start + len as usize;
    }
    out.skipped += (bytes.len() - at) as u64;
    Ok(out)
}

/// The ids of the pack files in `dir`, in order.
pub(crate) fn pack_ids(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            if let Some(id) = entry?.file_name().to_str().and_then(parse_name) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Open (creating if needed) a pack for appending; returns whether it was created.
fn open_append(path: &Path) -> Result<(File, bool)> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    Ok((file, !existed))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt as _;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_and_bad_lengths_are_corrupt() {
        let loc = Loc {
            pack: 7,
            offset: 1 << 40,
            len: 1_000_000,
        };
        assert_eq!(Loc::decode(&loc.encode()).unwrap(), loc);
        assert!(matches!(Loc::decode(&[0u8; 15]), Err(Error::Corrupt(_))));
    }

    #[test]
    fn appends_read_back_across_packs_and_unrecorded_packs_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), &[], None).unwrap();
        let big = vec![7u8; (PACK_SIZE / 2 + 1) as usize];
        let cid = |b: &[u8]| sov_core::ContentId::of(sov_core::Codec::Raw, b);
        let a = packs.append(&cid(b"hello"), b"hello").unwrap();
        let b = packs.append(&cid(&big), &big).unwrap();
        let c = packs.append(&cid(&big), &big).unwrap(); // does not fit: a new pack
        assert_eq!((a.pack, b.pack, c.pack), (0, 0, 1));
        assert_eq!(packs.read(a).unwrap(), b"hello");
        assert_eq!(packs.read(c).unwrap(), big);
        packs.sync().unwrap();
        drop(packs);
        // Only pack 0 was recorded: pack 1 is garbage.
        let packs = Packs::open(dir.path(), &[0], None).unwrap();
        assert!(!dir.path().join(file_name(1)).exists());
        assert_eq!(packs.active_id(), 0);
        assert!(matches!(packs.read(c), Err(Error::Corrupt(_))));
        let d = packs.append(&cid(b"more"), b"more").unwrap();
        assert_eq!(d.offset, b.offset + (big.len() + FRAME_HEADER) as u64);
    }
}
