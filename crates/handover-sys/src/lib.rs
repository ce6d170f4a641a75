//! OS plumbing.
