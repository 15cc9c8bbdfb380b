//! What the unpacker records for every path: owner, mode, time, xattrs and node kind.
//! The host tree never carries owners, special modes, xattrs or device nodes: the ext4
//! writer applies these from the records, so unpacking works the same unprivileged.

use std::path::PathBuf;

/// The kind of a node in the image tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory (exists on the host tree).
    Dir,
    /// A regular file (exists on the host tree; hardlinks share a host inode).
    File,
    /// A symlink (exists on the host tree; never followed).
    Symlink,
    /// A character device (recorded only, never created on the host).
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device (recorded only, never created on the host).
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO (recorded only).
    Fifo,
}

impl NodeKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            NodeKind::Dir => 0o040000,
            NodeKind::File => 0o100000,
            NodeKind::Symlink => 0o120000,
            NodeKind::CharDevice { .. } => 0o020000,
            NodeKind::BlockDevice { .. } => 0o060000,
            NodeKind::Fifo => 0o010000,
        }
    }

    /// Whether the node exists only in the records (not on the host tree).
    pub fn is_recorded_only(&self) -> bool {
        matches!(
            self,
            NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. } | NodeKind::Fifo
        )
    }
}

/// Metadata of one path as the final image should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Node kind.
    pub kind: NodeKind,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes (name, value), from PAX `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// For hardlinks: the path whose inode this one shares.
    pub hardlink_of: Option<PathBuf>,
}

impl EntryMeta {
    /// A directory created implicitly because a layer omitted it (root:root 0755).
    pub fn implicit_dir() -> Self {
        EntryMeta {
            kind: NodeKind::Dir,
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: 0,
            xattrs: Vec::new(),
            hardlink_of: None,
        }
    }

    /// Full `st_mode`: type bits | permission bits.
    pub fn full_mode(&self) -> u32 {
        self.kind.type_bits() | (self.mode & 0o7777)
    }
}
