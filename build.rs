//! Embeds the location of libxgboost.so (XGBOOST_LIB_DIR) as an rpath, so `refit` and the tests
//! run without LD_LIBRARY_PATH. libxgboost.so finds its own OpenMP runtime through its RPATH.
fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
    // sqlx::migrate! embeds migrations/: a new migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    if let Ok(dir) = std::env::var("XGBOOST_LIB_DIR") {
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}
