//! User and group lookups, for running workers as another user and owning unix sockets.

use std::ffi::CString;
use std::io;

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
    let c_name = CString::new(name).map_err(|_| not_found("user", name))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: a zeroed passwd is valid; getpwnam_r/getpwuid_r write into it and into `buf`,
    // whose size we pass; `result` is set to &pwd on success.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = match name.parse::<u32>() {
            Ok(uid) => libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result),
            Err(_) => libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            ),
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(not_found("user", name));
        }
        let login = std::ffi::CStr::from_ptr(pwd.pw_name)
            .to_string_lossy()
            .into_owned();
        Ok(User {
            name: login,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// Looks a group up by name, or by number when `name` is all digits.
pub fn group(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| not_found("group", name))?;
    let mut buf = vec![0 as libc::c_char; 65536];
    // SAFETY: as in `user`, with getgrnam_r.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            c_name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(not_found("group", name));
        }
        Ok(grp.gr_gid)
    }
}

/// The supplementary groups of `user` (as `initgroups` would set them), including `gid`.
pub fn group_list(user: &User, gid: u32) -> io::Result<Vec<u32>> {
    let c_name = CString::new(user.name.as_str()).map_err(|_| not_found("user", &user.name))?;
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let before = count;
        // SAFETY: getgrouplist writes at most `count` gids into `groups` and updates `count`.
        let rc =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if count <= before {
            count = before * 2;
        }
        if count > 65536 {
            return Err(io::Error::other("too many supplementary groups"));
        }
    }
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub fn effective_gid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}
