//! TorchScript modules written from TorchScript source: what
//! `torch.jit.script` does in Python, without Python.
//!
//! Tracing (`CModule::create_by_tracing`) records one run, so integers read
//! from inputs (top-k's `k`) become constants and a traced function cannot
//! return a tuple. A scripted `forward` has neither limit. The module is
//! built by a small C++ shim (`cpp/script_module.cpp`): it registers the
//! given tensors as buffers, compiles `source` as the module's methods and
//! saves it; `tch::CModule::load` and Python's `torch.jit.load` open the
//! result.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::Path;

use tch::Tensor;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn encore_script_module_save(
        type_name: *const c_char,
        source: *const c_char,
        names: *const *const c_char,
        tensors: *const *mut c_void,
        count: c_int,
        path: *const c_char,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidConfig(format!("{what} holds a NUL byte")))
}

/// Saves to `path` a module of type `type_name` whose buffers are `buffers`
/// (name → tensor, copied) and whose methods are defined by `source`
/// (TorchScript, referring to buffers as `self.<name>`).
pub fn save(type_name: &str, source: &str, buffers: &[(&str, &Tensor)], path: &Path) -> Result<()> {
    let type_name = c_string("type name", type_name)?;
    let source = c_string("TorchScript source", source)?;
    let path_c = c_string("path", &path.to_string_lossy())?;
    let names = buffers
        .iter()
        .map(|(name, _)| c_string("buffer name", name))
        .collect::<Result<Vec<_>>>()?;
    let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let tensor_ptrs: Vec<*mut c_void> = buffers
        .iter()
        .map(|(_, t)| t.as_ptr() as *mut c_void)
        .collect();
    let count = crate::shim::c_count(buffers.len(), "buffers")?;
    crate::shim::call(|error, error_len| {
        // SAFETY: every pointer is valid for the call (the CStrings and
        // tensors outlive it); the shim reads the tensors (as torch::Tensor*,
        // which is what tch's C_tensor is), copies them and writes at most
        // `error_len` bytes, NUL-terminated, into `error`.
        unsafe {
            encore_script_module_save(
                type_name.as_ptr(),
                source.as_ptr(),
                name_ptrs.as_ptr(),
                tensor_ptrs.as_ptr(),
                count,
                path_c.as_ptr(),
                error,
                error_len,
            )
        }
    })
    .map_err(Error::Script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{IValue, Kind};

    #[test]
    fn scripted_module_takes_k_at_run_time_and_returns_a_tuple() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        let table = Tensor::from_slice(&[0.1f32, 0.9, 0.5, 0.7]);
        let ids = Tensor::from_slice(&[10i64, 11, 12, 13]);
        let source = "
def forward(self, x: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    scores = x.unsqueeze(1) * self.table.unsqueeze(0)
    kk = min(int(k[0]), scores.size(1))
    top = torch.topk(scores, kk, 1)
    return self.ids[top[1]], top[0]
";
        save(
            "EncoreTest",
            source,
            &[("table", &table), ("ids", &ids)],
            &path,
        )
        .unwrap();
        let module = tch::CModule::load(&path).unwrap();
        for k in [1i64, 3, 9] {
            let out = module
                .forward_is(&[
                    IValue::Tensor(Tensor::from_slice(&[1.0f32, 2.0])),
                    IValue::Tensor(Tensor::from_slice(&[k])),
                ])
                .unwrap();
            let IValue::Tuple(parts) = out else {
                panic!("not a tuple: {out:?}")
            };
            let (IValue::Tensor(items), IValue::Tensor(scores)) = (&parts[0], &parts[1]) else {
                panic!("not tensors")
            };
            let kk = k.min(4);
            assert_eq!(items.size(), [2, kk]);
            assert_eq!(scores.kind(), Kind::Float);
            let first: Vec<i64> = Vec::try_from(items.get(0)).unwrap();
            assert_eq!(first, [11, 13, 12, 10][..kk as usize]);
        }
    }

    #[test]
    fn bad_source_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let e = save(
            "EncoreBad",
            "def forward(self, x: Tensor) -> Tensor:\n    return self.missing * x\n",
            &[],
            &dir.path().join("m.pt"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
