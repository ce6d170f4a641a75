//! User and group lookups, for running workers as another user and owning unix sockets.

use std::ffi::CString;
use std::io;

use nix::unistd::{Gid, Uid};

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

fn not_found(what: &str, name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"))
}

/// Looks a user up by name, or by number when `name` is all digits.
pub fn user(name: &str) -> io::Result<User> {
    let found = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(Uid::from_raw(uid))?,
        Err(_) => nix::unistd::User::from_name(name)?,
    };
    let user = found.ok_or_else(|| not_found("user", name))?;
    Ok(User {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Looks a group up by name, or by number when `name` is all digits.
pub fn group(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let group = nix::unistd::Group::from_name(name)?.ok_or_else(|| not_found("group", name))?;
    Ok(group.gid.as_raw())
}

/// The supplementary groups of `user` (as `initgroups` would set them), including `gid`.
pub fn group_list(user: &User, gid: u32) -> io::Result<Vec<u32>> {
    let c_name = CString::new(user.name.as_str()).map_err(|_| not_found("user", &user.name))?;
    let groups = nix::unistd::getgrouplist(&c_name, Gid::from_raw(gid))?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The effective gid of this process.
pub fn effective_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}
