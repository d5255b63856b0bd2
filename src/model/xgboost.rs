//! Safe wrapper over the XGBoost 3.4 C API (`xgboost_lib-sys`, the native layer of the `xgb`
//! binding). This is the only module in refit with `unsafe` code.
//!
//! The `xgb` crate's own `Booster` keeps its handle private and does not expose
//! `XGBoosterBoostedRounds`, which continued training needs to number its iterations exactly as
//! Python's `xgb.train(..., xgb_model=booster)` does; so refit wraps the few calls it uses itself.
//!
//! Handles are not thread-safe in XGBoost: a [`Booster`] or [`Matrix`] may move between threads
//! (`Send`) but is never shared (`!Sync`). XGBoost keeps its last error per thread, so every call
//! reads it on the thread that made the call.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

use xgboost_lib_sys as sys;

/// An error reported by XGBoost, with XGBoost's own message.
#[derive(Debug, thiserror::Error)]
#[error("xgboost: {0}")]
pub struct XgbError(pub(crate) String);

type Result<T> = std::result::Result<T, XgbError>;

/// Turns an XGBoost return code into a `Result`, reading the thread's last error on failure.
fn check(code: i32) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: XGBGetLastError returns a pointer to a thread-local, NUL-terminated string that
    // stays valid until the next XGBoost call on this thread; it is copied out at once.
    let message = unsafe { CStr::from_ptr(sys::XGBGetLastError()) };
    Err(XgbError(message.to_string_lossy().trim().to_owned()))
}

fn c_string(value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| XgbError(format!("{value:?} contains a NUL byte")))
}

/// Calls `f` with `values` as a C array of C strings (pointer, length), valid during the call.
fn with_c_strings(
    values: &[String],
    f: impl FnOnce(*mut *const c_char, sys::bst_ulong) -> i32,
) -> Result<()> {
    let owned = values
        .iter()
        .map(|v| c_string(v))
        .collect::<Result<Vec<_>>>()?;
    let mut pointers: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
    check(f(pointers.as_mut_ptr(), pointers.len() as sys::bst_ulong))
}

/// The OpenMP threads XGBoost uses for the work a booster's `nthread` does not govern: building a
/// matrix, loading a model, predicting before the version's parameters are set. XGBoost keeps
/// that setting (its global configuration's `nthread`, OpenMP's own count) per thread, so every
/// thread that calls XGBoost applies it before its first call ([`on_this_thread`]). Left at
/// XGBoost's default (every core), a 50-row matrix or a 150 KB model took 10–50 ms instead of
/// under 1 ms on a 2-core machine busy with PostgreSQL: the second OpenMP thread waited for a
/// core (BENCHMARKS.md).
static THREADS: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// The thread count this thread last gave XGBoost (0: none yet).
    static APPLIED: Cell<u32> = const { Cell::new(0) };
}

/// Sets the thread count every thread gives XGBoost from its next call on (`REFIT_XGB_NTHREAD`).
pub(crate) fn use_threads(threads: u32) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
}

/// Applies [`use_threads`]' count (and XGBoost's default verbosity, warnings) to the calling
/// thread's XGBoost configuration, once per thread and change.
fn on_this_thread() -> Result<()> {
    let threads = THREADS.load(Ordering::Relaxed);
    if APPLIED.get() == threads {
        return Ok(());
    }
    let config = c_string(&format!(r#"{{"nthread": {threads}, "verbosity": 1}}"#))?;
    // SAFETY: `config` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { sys::XGBSetGlobalConfig(config.as_ptr()) })?;
    APPLIED.set(threads);
    Ok(())
}

/// The calling thread's XGBoost configuration (JSON).
#[cfg(test)]
fn thread_config() -> Result<String> {
    let mut out: *const c_char = ptr::null();
    // SAFETY: `out` is a valid out pointer; XGBoost owns the returned thread-local string until
    // the next call on this thread, and it is copied out at once.
    check(unsafe { sys::XGBGetGlobalConfig(&mut out) })?;
    // SAFETY: on success `out` points to a NUL-terminated string (see above).
    Ok(unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned())
}

/// A dense training or prediction matrix (row-major, `NaN` = missing).
pub(crate) struct Matrix {
    handle: sys::DMatrixHandle,
    rows: usize,
}

// SAFETY: a DMatrix handle is owned by exactly one `Matrix` and never shared between threads.
unsafe impl Send for Matrix {}

impl Matrix {
    /// Builds a matrix of `rows` rows from row-major `values`; `NaN` marks a missing value.
    pub(crate) fn dense(values: &[f32], rows: usize, feature_names: &[String]) -> Result<Self> {
        let columns = feature_names.len();
        if rows == 0 || columns == 0 || values.len() != rows * columns {
            return Err(XgbError(format!(
                "a {rows} x {columns} matrix needs {} values, got {}",
                rows * columns,
                values.len()
            )));
        }
        on_this_thread()?;
        let mut handle = ptr::null_mut();
        // SAFETY: `values` holds rows * columns floats and outlives the call (XGBoost copies).
        check(unsafe {
            sys::XGDMatrixCreateFromMat(
                values.as_ptr(),
                rows as sys::bst_ulong,
                columns as sys::bst_ulong,
                f32::NAN,
                &mut handle,
            )
        })?;
        let matrix = Matrix { handle, rows };
        matrix.set_str_info("feature_name", feature_names)?;
        Ok(matrix)
    }

    /// Sets the training labels, one per row.
    pub(crate) fn set_labels(&mut self, labels: &[f32]) -> Result<()> {
        self.set_float_info("label", labels)
    }

    /// Sets the rows' weights in training, one per row.
    pub(crate) fn set_weights(&mut self, weights: &[f32]) -> Result<()> {
        self.set_float_info("weight", weights)
    }

    fn set_float_info(&mut self, field: &str, values: &[f32]) -> Result<()> {
        if values.len() != self.rows {
            return Err(XgbError(format!(
                "{} {field}s for {} rows",
                values.len(),
                self.rows
            )));
        }
        let field = c_string(field)?;
        // SAFETY: `values` holds exactly `rows` floats; XGBoost copies them.
        check(unsafe {
            sys::XGDMatrixSetFloatInfo(
                self.handle,
                field.as_ptr(),
                values.as_ptr(),
                values.len() as sys::bst_ulong,
            )
        })
    }

    fn set_str_info(&self, field: &str, values: &[String]) -> Result<()> {
        let field = c_string(field)?;
        // SAFETY: the array and its strings are valid for the duration of the call.
        with_c_strings(values, |names, len| unsafe {
            sys::XGDMatrixSetStrFeatureInfo(self.handle, field.as_ptr(), names, len)
        })
    }
}

impl Drop for Matrix {
    fn drop(&mut self) {
        // SAFETY: the handle came from XGDMatrixCreateFromMat and is freed exactly once.
        unsafe { sys::XGDMatrixFree(self.handle) };
    }
}

/// A gradient-boosted model.
pub struct Booster {
    handle: sys::BoosterHandle,
}

// SAFETY: a Booster handle is owned by exactly one `Booster` and never used from two threads at once.
unsafe impl Send for Booster {}

impl Booster {
    /// An empty booster, as Python's `xgb.Booster(params, cache=[dtrain])` creates one.
    pub(crate) fn new(cache: &[&Matrix]) -> Result<Self> {
        on_this_thread()?;
        let handles: Vec<sys::DMatrixHandle> = cache.iter().map(|m| m.handle).collect();
        let mut handle = ptr::null_mut();
        // SAFETY: `handles` holds live DMatrix handles for the duration of the call.
        check(unsafe {
            sys::XGBoosterCreate(
                handles.as_ptr(),
                handles.len() as sys::bst_ulong,
                &mut handle,
            )
        })?;
        Ok(Booster { handle })
    }

    /// A booster holding the model in `bytes` (UBJSON or JSON, as saved by any XGBoost >= 1.0).
    pub(crate) fn load(bytes: &[u8], cache: &[&Matrix]) -> Result<Self> {
        // XGBoost 3.4 aborts the process (std::terminate) on an empty buffer.
        if bytes.is_empty() {
            return Err(XgbError("the model file is empty".into()));
        }
        let booster = Booster::new(cache)?;
        // SAFETY: `bytes` is valid for its length for the duration of the call.
        check(unsafe {
            sys::XGBoosterLoadModelFromBuffer(
                booster.handle,
                bytes.as_ptr().cast(),
                bytes.len() as sys::bst_ulong,
            )
        })?;
        Ok(booster)
    }

    /// A copy of the model alone: trees, parameters, feature names — without the training state
    /// (histograms, gradient buffers) a booster keeps after `update`, which is several times the
    /// model's size. `XGBoosterSlice` over all layers.
    pub(crate) fn model_copy(&self) -> Result<Booster> {
        on_this_thread()?;
        let mut handle = ptr::null_mut();
        // SAFETY: the handle is live and `handle` is a valid out pointer; layers 0..0 (all) are
        // never out of bounds.
        check(unsafe { sys::XGBoosterSlice(self.handle, 0, 0, 1, &mut handle) })?;
        Ok(Booster { handle })
    }

    /// Sets one training parameter.
    pub(crate) fn set_param(&mut self, name: &str, value: &str) -> Result<()> {
        let (name, value) = (c_string(name)?, c_string(value)?);
        // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
        check(unsafe { sys::XGBoosterSetParam(self.handle, name.as_ptr(), value.as_ptr()) })
    }

    /// Runs one boosting round numbered `iteration` on `train`.
    pub(crate) fn update(&mut self, iteration: i32, train: &Matrix) -> Result<()> {
        on_this_thread()?;
        // SAFETY: both handles are live.
        check(unsafe { sys::XGBoosterUpdateOneIter(self.handle, iteration, train.handle) })
    }

    /// How many boosting rounds the model holds (`Booster.num_boosted_rounds()` in Python).
    pub(crate) fn boosted_rounds(&self) -> Result<i32> {
        let mut rounds = 0;
        // SAFETY: the handle is live and `rounds` is a valid out pointer.
        check(unsafe { sys::XGBoosterBoostedRounds(self.handle, &mut rounds) })?;
        Ok(rounds)
    }

    /// The model as UBJSON, the format `Booster.save_model("m.ubj")` writes.
    pub(crate) fn save_ubjson(&self) -> Result<Vec<u8>> {
        self.save(r#"{"format": "ubj"}"#)
    }

    /// The model as JSON, the format `Booster.save_model("m.json")` writes.
    #[cfg(test)]
    pub(crate) fn save_json(&self) -> Result<Vec<u8>> {
        self.save(r#"{"format": "json"}"#)
    }

    fn save(&self, config: &str) -> Result<Vec<u8>> {
        on_this_thread()?;
        let config = c_string(config)?;
        let mut length: sys::bst_ulong = 0;
        let mut data: *const c_char = ptr::null();
        // SAFETY: out pointers are valid; XGBoost owns the returned buffer until the next call
        // on this handle, and it is copied out at once.
        check(unsafe {
            sys::XGBoosterSaveModelToBuffer(self.handle, config.as_ptr(), &mut length, &mut data)
        })?;
        // SAFETY: XGBoost guarantees `data` points at `length` bytes.
        Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length as usize) }.to_vec())
    }

    /// The booster's configuration as JSON (`Booster.save_config()` in Python).
    pub(crate) fn config_json(&self) -> Result<String> {
        let mut length: sys::bst_ulong = 0;
        let mut data: *const c_char = ptr::null();
        // SAFETY: as in `save_ubjson`.
        check(unsafe { sys::XGBoosterSaveJsonConfig(self.handle, &mut length, &mut data) })?;
        // SAFETY: XGBoost guarantees `data` points at `length` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length as usize) };
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The number of trees in the model.
    pub(crate) fn trees(&self) -> Result<i64> {
        let config: serde_json::Value = serde_json::from_str(&self.config_json()?)
            .map_err(|e| XgbError(format!("unreadable booster config: {e}")))?;
        let trees = config
            .pointer("/learner/gradient_booster/gbtree_model_param/num_trees")
            .and_then(|v| v.as_str()?.parse::<i64>().ok());
        match trees {
            Some(n) => Ok(n),
            // Linear boosters (gblinear) have no trees.
            None => Ok(0),
        }
    }

    /// Sets the model's feature names (stored in the saved model).
    pub(crate) fn set_feature_names(&mut self, names: &[String]) -> Result<()> {
        let field = c_string("feature_name")?;
        // SAFETY: the array and its strings are valid for the duration of the call.
        with_c_strings(names, |names, len| unsafe {
            sys::XGBoosterSetStrFeatureInfo(self.handle, field.as_ptr(), names, len)
        })
    }

    /// The model's feature names, empty when the model was saved without them.
    pub(crate) fn feature_names(&self) -> Result<Vec<String>> {
        let field = c_string("feature_name")?;
        let mut length: sys::bst_ulong = 0;
        let mut names: *mut *const c_char = ptr::null_mut();
        // SAFETY: out pointers are valid; XGBoost owns the returned strings until the next call.
        check(unsafe {
            sys::XGBoosterGetStrFeatureInfo(self.handle, field.as_ptr(), &mut length, &mut names)
        })?;
        let mut out = Vec::with_capacity(length as usize);
        for i in 0..length as usize {
            // SAFETY: XGBoost returned `length` valid C strings at `names`.
            out.push(
                unsafe { CStr::from_ptr(*names.add(i)) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        Ok(out)
    }

    /// How many features the model was trained on (0 for an untrained booster).
    pub(crate) fn num_features(&self) -> Result<u64> {
        let mut n: sys::bst_ulong = 0;
        // SAFETY: the handle is live and `n` is a valid out pointer.
        check(unsafe { sys::XGBoosterGetNumFeature(self.handle, &mut n) })?;
        Ok(n)
    }

    /// Predicts one value per row of `data`.
    pub(crate) fn predict(&self, data: &Matrix) -> Result<Vec<f32>> {
        on_this_thread()?;
        let config = c_string(
            r#"{"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": false}"#,
        )?;
        let mut shape: *const sys::bst_ulong = ptr::null();
        let mut dims: sys::bst_ulong = 0;
        let mut result: *const f32 = ptr::null();
        // SAFETY: all out pointers are valid; the result buffer belongs to the booster until the
        // next prediction and is copied out at once.
        check(unsafe {
            sys::XGBoosterPredictFromDMatrix(
                self.handle,
                data.handle,
                config.as_ptr(),
                &mut shape,
                &mut dims,
                &mut result,
            )
        })?;
        // SAFETY: XGBoost returned `dims` extents at `shape`.
        let extents = unsafe { std::slice::from_raw_parts(shape, dims as usize) };
        let len = extents.iter().product::<sys::bst_ulong>() as usize;
        // SAFETY: the result holds the product of the extents' floats.
        Ok(unsafe { std::slice::from_raw_parts(result, len) }.to_vec())
    }
}

impl Drop for Booster {
    fn drop(&mut self) {
        // SAFETY: the handle came from XGBoosterCreate and is freed exactly once.
        unsafe { sys::XGBoosterFree(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_model_file_is_an_error_not_an_abort() {
        let error = Booster::load(&[], &[]).err().expect("an error");
        assert!(error.0.contains("empty"), "{}", error.0);
        assert!(Booster::load(b"x", &[]).is_err());
    }

    /// XGBoost's thread count is per thread: a fresh thread starts at XGBoost's default (0, every
    /// core) and takes refit's on its first call (the training runs on tokio's blocking threads,
    /// made on demand).
    #[test]
    fn every_thread_that_calls_xgboost_uses_refits_thread_count() {
        fn nthread(config: String) -> i64 {
            let config: serde_json::Value = serde_json::from_str(&config).unwrap();
            config["nthread"].as_i64().unwrap()
        }
        let on_a_new_thread = std::thread::spawn(|| {
            let before = nthread(thread_config().unwrap());
            let names = vec!["a".to_owned(), "b".to_owned()];
            Matrix::dense(&[1.0, 2.0, 3.0, 4.0], 2, &names).unwrap();
            (before, nthread(thread_config().unwrap()))
        });
        assert_eq!(on_a_new_thread.join().unwrap(), (0, 1));
    }
}
