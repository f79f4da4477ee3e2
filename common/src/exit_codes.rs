//! Process exit codes shared by every Airlock binary.
//!
//! Scripts around Airlock (systemd units, transfer-station cron jobs, CI) branch on
//! these, so they are a contract: a code keeps its meaning once published. The values
//! follow `sysexits.h` where a matching meaning exists, so operators who know those
//! codes read them without a table.

/// Everything asked for was done.
pub const OK: i32 = 0;

/// An unexpected failure that none of the codes below describes.
pub const FAILURE: i32 = 1;

/// The command line could not be parsed (clap's own code for usage errors).
pub const USAGE: i32 = 2;

/// A configuration file is malformed, or asks for something this build does not do.
/// Nothing was read from a registry and nothing was written.
pub const CONFIG: i32 = 64;

/// Input data was refused: a corrupt or hostile chunk file, a digest that does not
/// match, a manifest that is not what it claims to be. Nothing of the refused
/// imageset was published.
pub const DATA: i32 = 65;

/// A registry could not be reached, refused the credentials, or refused an upload.
pub const UNAVAILABLE: i32 = 69;

/// The work was done without some of what was asked: `create
/// --continue-on-error` wrote the imageset without images that could not be
/// pulled, and names them in `missing.txt`. The next `create` tries them again.
pub const PARTIAL: i32 = 3;

/// A local file or directory could not be read or written (disk full, permissions).
pub const IO: i32 = 74;

/// Nothing is wrong, but the work cannot finish yet: an imageset is missing chunk
/// files, or waits for its predecessor. Run again when the files have arrived.
pub const INCOMPLETE: i32 = 75;

/// The workspace refused the operation: a different workspace UUID, a sequence
/// that does not follow, or a workspace locked by another running process.
pub const STATE: i32 = 76;

/// A binary's error type knows which code describes it.
pub trait ExitCode {
    /// The code the process should exit with for this error.
    fn exit_code(&self) -> i32;
}
