//! Whether one of this process's outputs is the journal stream systemd connected it to.
//!
//! For a service whose stdout or stderr goes to the journal, systemd sets
//! `JOURNAL_STREAM=DEVICE:INODE`, naming that stream. A process compares it with its own
//! fds, as `sd_journal_stream_fd(3)` advises: the variable is inherited by every child, also
//! by one whose output was redirected somewhere else, so only a matching fd counts.

use std::os::unix::fs::MetadataExt;

use crate::env::Environment;

/// One of the standard outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// Whether `output` is the stream `JOURNAL_STREAM` names.
pub(crate) fn is_journal(environment: &Environment, output: Output) -> bool {
    let Some(stream) = &environment.journal_stream else {
        return false;
    };
    let fd = match output {
        Output::Stdout => "/proc/self/fd/1",
        Output::Stderr => "/proc/self/fd/2",
    };
    std::fs::metadata(fd).is_ok_and(|meta| names(stream, meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value names the file with device `dev` and inode `ino`.
fn names(stream: &str, dev: u64, ino: u64) -> bool {
    let Some((stream_dev, stream_ino)) = stream.split_once(':') else {
        return false;
    };
    stream_dev.parse::<u64>().ok() == Some(dev) && stream_ino.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_names_a_device_and_an_inode() {
        assert!(names("8:12345", 8, 12345));
        assert!(!names("8:12345", 8, 12346));
        assert!(!names("9:12345", 8, 12345));
        for malformed in ["", "8", "8:", ":12345", "8:12345:1", "x:y", "-8:12345"] {
            assert!(!names(malformed, 8, 12345), "{malformed:?}");
        }
    }
}
