//! Calling the crate's C++ shims (`cpp/`): counts go over as C ints, and a
//! C++ exception comes back as a message (`cpp/shim.h`, `encore::guarded`).

use std::ffi::{c_char, c_int};

use crate::error::{Error, Result};

/// `n` items (`what`: "parameters", "buffers") as the C int a shim takes.
pub(crate) fn c_count(n: usize, what: &str) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| Error::InvalidConfig(format!("{n} {what}")))
}

/// Runs `shim` with an error buffer (pointer, length) for a shim that
/// returns 0 on success and otherwise writes a NUL-terminated message into
/// the buffer; that message is the error.
pub(crate) fn call(
    shim: impl FnOnce(*mut c_char, usize) -> c_int,
) -> std::result::Result<(), String> {
    let mut error = vec![0u8; 4096];
    if shim(error.as_mut_ptr().cast(), error.len()) == 0 {
        return Ok(());
    }
    let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
    Err(String::from_utf8_lossy(&error[..end]).into_owned())
}
