//! Sets an rpath to MLX's library directory (exported by mlx-sys), so the fuzz binaries run
//! without `LD_LIBRARY_PATH`, as the root crate's build script does for its own targets.

fn main() {
    if let Ok(dir) = std::env::var("DEP_MLXC_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
