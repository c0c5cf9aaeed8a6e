//! Build script of `mlx-sys`: obtains the pinned mlx-c source and a prebuilt MLX, compiles
//! mlx-c with CMake, and generates the FFI with bindgen.
//!
//! Every input is pinned and checksum-verified (see `external/mlx-c.lock` and
//! `external/requirements-*.txt`); everything fetched lands under `external/` (git-ignored),
//! so a second build and an offline build reuse it. Overrides:
//! - `MLX_C_DIR`: an mlx-c source tree to use instead of the pinned one;
//! - `MLX_DIR`: an installed MLX's CMake package directory (`…/share/cmake/MLX`);
//! - `LIBCLANG_PATH`, `CMAKE`: the usual bindgen / cmake-crate variables.

use sha2::{Digest, Sha256};
use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates.io package whose `src/mlx-c/` tree is our pinned mlx-c (mlx-c for MLX v0.32.2).
const MLX_C_CRATE: &str = "mlx-sys";
const MLX_C_CRATE_VERSION: &str = "0.7.0";
const MLX_C_CRATE_SHA256: &str = "da965f83ce211b80f9b681d9bbd6fa625fe6bb2e659ba7bc55dd95eea8d3b028";

type BuildResult<T> = Result<T, String>;

fn main() {
    if let Err(message) = run() {
        // A build script reports failure by exiting non-zero; say what to do, in one place.
        eprintln!("\nmlx-sys build failed: {message}\n");
        println!("cargo:warning=mlx-sys: {}", message.replace('\n', " | "));
        std::process::exit(1);
    }
}

fn run() -> BuildResult<()> {
    for var in ["MLX_DIR", "MLX_C_DIR", "LIBCLANG_PATH", "CMAKE", "PYTHON"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=compat/mlx_c_compat_format.h");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let external = manifest_dir
        .parent()
        .ok_or("mlx-sys must live inside the mlx-engine workspace")?
        .join("external");
    println!(
        "cargo:rerun-if-changed={}",
        external.join("mlx-c.lock").display()
    );
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);

    let mlx_c = mlx_c_source(&external, &out_dir)?;
    let flavor = Flavor::detect();
    let mlx_cmake_dir = mlx_package(&external, flavor)?;
    let mlx_prefix = mlx_cmake_dir
        .ancestors()
        .nth(3)
        .ok_or_else(|| {
            format!(
                "MLX_DIR {} is not <prefix>/share/cmake/MLX",
                mlx_cmake_dir.display()
            )
        })?
        .to_path_buf();
    let mlx_lib_dir = mlx_prefix.join("lib");
    let mlx_include_dir = mlx_prefix.join("include");

    let cmake = find_cmake(&external)?;
    let compat = manifest_dir.join("compat");
    // The CUDA wheel's MLXConfig.cmake demands a CUDA toolkit (find_dependency(CUDAToolkit),
    // CUDNN); mlx-c, a static library, needs only MLX's headers, so it is configured against a
    // minimal package describing the wheel's libmlx.so and include directory instead.
    let mlxc_cmake_dir = match flavor {
        Flavor::LinuxCuda12 => headers_only_package(&out_dir, &mlx_lib_dir, &mlx_include_dir)?,
        Flavor::LinuxCpu | Flavor::MacOs => mlx_cmake_dir.clone(),
    };
    let lib_dir = build_mlx_c(&mlx_c, &mlxc_cmake_dir, &cmake, &compat);
    generate_bindings(&mlx_c, &external, &out_dir)?;

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=static=mlxc");
    println!("cargo:rustc-link-search=native={}", mlx_lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if cfg!(target_os = "macos") {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }
    // Exported to dependents' build scripts as DEP_MLXC_*: they compile C++ against the same
    // MLX and set an rpath to its library directory (a dependency cannot set their rpath).
    println!("cargo:lib_dir={}", mlx_lib_dir.display());
    println!("cargo:mlx_include={}", mlx_include_dir.display());
    println!("cargo:mlxc_include={}", mlx_c.display());
    println!(
        "cargo:compat_header={}",
        compat.join("mlx_c_compat_format.h").display()
    );
    // DEP_MLXC_FLAVOR: the root build script tells the linker that the CUDA libmlx.so's own
    // dependencies (libcuda, cuBLAS, cuDNN, NCCL: not installed at build time) resolve at run time.
    println!("cargo:flavor={}", flavor.dir_name());
    Ok(())
}

/// Writes an `MLXConfig.cmake` that imports `libmlx.so` and MLX's headers as the target `mlx`,
/// with none of the CUDA toolkit lookups of the wheel's own config; returns its directory.
fn headers_only_package(
    out_dir: &Path,
    lib_dir: &Path,
    include_dir: &Path,
) -> BuildResult<PathBuf> {
    let library = lib_dir.join("libmlx.so");
    if !library.is_file() || !include_dir.join("mlx/mlx.h").is_file() {
        return Err(format!(
            "the CUDA MLX at {} lacks lib/libmlx.so or include/mlx/mlx.h",
            lib_dir.parent().unwrap_or(lib_dir).display()
        ));
    }
    let dir = out_dir.join("mlx-cmake-headers-only");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = format!(
        "# Written by mlx-sys/build.rs: MLX's headers and library, without the CUDA toolkit\n\
         # lookups of the wheel's own MLXConfig.cmake (mlx-c, a static library, needs none).\n\
         if(NOT TARGET mlx)\n\
         \x20 add_library(mlx SHARED IMPORTED)\n\
         \x20 set_target_properties(mlx PROPERTIES\n\
         \x20   IMPORTED_LOCATION \"{lib}\"\n\
         \x20   IMPORTED_SONAME \"libmlx.so\"\n\
         \x20   INTERFACE_COMPILE_FEATURES \"cxx_std_20\"\n\
         \x20   INTERFACE_INCLUDE_DIRECTORIES \"{include}\")\n\
         endif()\n\
         set(MLX_INCLUDE_DIRS \"{include}\")\n\
         set(MLX_LIBRARIES mlx)\n",
        lib = library.display(),
        include = include_dir.display(),
    );
    let path = dir.join("MLXConfig.cmake");
    fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(dir)
}

/// Which prebuilt MLX to use.
#[derive(Clone, Copy)]
enum Flavor {
    LinuxCpu,
    LinuxCuda12,
    MacOs,
}

impl Flavor {
    fn detect() -> Flavor {
        if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
            Flavor::MacOs
        } else if env::var_os("CARGO_FEATURE_CUDA").is_some() {
            Flavor::LinuxCuda12
        } else {
            Flavor::LinuxCpu
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Flavor::LinuxCpu => "cpu",
            Flavor::LinuxCuda12 => "cuda12",
            Flavor::MacOs => "macos",
        }
    }

    /// pip arguments that install this flavor's pinned MLX.
    fn pip_args(self, external: &Path) -> Vec<String> {
        match self {
            Flavor::LinuxCpu if cfg!(target_arch = "x86_64") => vec![
                "--require-hashes".into(),
                "-r".into(),
                external
                    .join("requirements-linux-x86_64-cpu.txt")
                    .display()
                    .to_string(),
            ],
            Flavor::LinuxCpu => vec!["mlx-cpu==0.32.2".into()],
            // The wheel alone (pip runs with --no-deps): its nvidia-* runtime wheels are needed
            // only to run on a GPU, not to compile and link (see the requirements file).
            Flavor::LinuxCuda12 if cfg!(target_arch = "x86_64") => vec![
                "--require-hashes".into(),
                "-r".into(),
                external
                    .join("requirements-linux-x86_64-cuda12.txt")
                    .display()
                    .to_string(),
            ],
            Flavor::LinuxCuda12 => vec!["mlx-cuda-12==0.32.2".into()],
            Flavor::MacOs => vec!["mlx==0.32.2".into()],
        }
    }
}

/// The mlx-c source tree: `MLX_C_DIR`, else `external/mlx-c/`, fetched there if absent.
fn mlx_c_source(external: &Path, out_dir: &Path) -> BuildResult<PathBuf> {
    if let Some(dir) = env::var_os("MLX_C_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("mlx/c/mlx.h").is_file() {
            return Err(format!("MLX_C_DIR={} holds no mlx/c/mlx.h", dir.display()));
        }
        return Ok(dir);
    }
    let target = external.join("mlx-c");
    let stamp = target.join(".mlx-engine-sha256");
    if fs::read_to_string(&stamp)
        .map(|s| s.trim() == MLX_C_CRATE_SHA256)
        .unwrap_or(false)
    {
        return Ok(target);
    }
    let crate_file = fetch_crate_file(out_dir)?;
    let bytes = fs::read(&crate_file).map_err(|e| format!("{}: {e}", crate_file.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    if digest != MLX_C_CRATE_SHA256 {
        return Err(format!(
            "{}: sha256 {digest}, expected {MLX_C_CRATE_SHA256} (pinned in external/mlx-c.lock)",
            crate_file.display()
        ));
    }
    unpack_mlx_c(&bytes, &target)?;
    fs::write(&stamp, MLX_C_CRATE_SHA256).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(target)
}

/// Downloads the pinned crate through cargo itself (the registry client the machine is set up
/// for) with a throw-away manifest, and returns the path of the `.crate` file in cargo's cache.
fn fetch_crate_file(out_dir: &Path) -> BuildResult<PathBuf> {
    let cargo_home = cargo_home()?;
    if let Some(found) = find_cached_crate(&cargo_home) {
        return Ok(found);
    }
    let dir = out_dir.join("fetch-mlx-c");
    fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    // `[workspace]` keeps this manifest out of the enclosing mlx-engine workspace.
    let manifest = format!(
        "[package]\nname = \"fetch-mlx-c\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n{MLX_C_CRATE} = {{ version = \"={MLX_C_CRATE_VERSION}\", default-features = false }}\n\n\
         [workspace]\n"
    );
    fs::write(dir.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
    fs::write(dir.join("src/lib.rs"), "").map_err(|e| e.to_string())?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .arg("fetch")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("could not run `{cargo} fetch` to obtain mlx-c: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo fetch` of {MLX_C_CRATE} {MLX_C_CRATE_VERSION} (the pinned mlx-c source) failed; \
             with no registry access, set MLX_C_DIR to an mlx-c v0.7.0 tree.\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    find_cached_crate(&cargo_home).ok_or_else(|| {
        format!(
            "`cargo fetch` succeeded but no {MLX_C_CRATE}-{MLX_C_CRATE_VERSION}.crate is in {}",
            cargo_home.display()
        )
    })
}

fn cargo_home() -> BuildResult<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo"))
        .ok_or_else(|| "neither CARGO_HOME nor HOME is set".to_string())
}

fn find_cached_crate(cargo_home: &Path) -> Option<PathBuf> {
    let name = format!("{MLX_C_CRATE}-{MLX_C_CRATE_VERSION}.crate");
    fs::read_dir(cargo_home.join("registry/cache"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join(&name))
        .find(|path| path.is_file())
}

/// Unpacks `<crate>/src/mlx-c/**` of the `.crate` (a gzipped tar) into `target`, atomically.
fn unpack_mlx_c(crate_bytes: &[u8], target: &Path) -> BuildResult<()> {
    let prefix = format!("{MLX_C_CRATE}-{MLX_C_CRATE_VERSION}/src/mlx-c/");
    let staging = target.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(crate_bytes));
    let entries = archive
        .entries()
        .map_err(|e| format!("mlx-c crate archive: {e}"))?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("mlx-c crate archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        if rel.is_empty() || rel.split('/').any(|part| part == "..") {
            continue;
        }
        let dest = staging.join(rel);
        if entry.header().entry_type().is_dir() {
            fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
            continue;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        fs::write(&dest, data).map_err(|e| format!("{}: {e}", dest.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "the {MLX_C_CRATE} {MLX_C_CRATE_VERSION} crate holds no src/mlx-c/"
        ));
    }
    let _ = fs::remove_dir_all(target);
    fs::rename(&staging, target).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(())
}

/// MLX's CMake package directory: `MLX_DIR`, else the pinned wheel installed under
/// `external/deps/<flavor>/`.
fn mlx_package(external: &Path, flavor: Flavor) -> BuildResult<PathBuf> {
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("MLXConfig.cmake").is_file() {
            return Err(format!(
                "MLX_DIR={} holds no MLXConfig.cmake",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    let prefix = external.join("deps").join(flavor.dir_name());
    let cmake_dir = prefix.join("mlx/share/cmake/MLX");
    if !cmake_dir.join("MLXConfig.cmake").is_file() {
        pip_install(&prefix, &flavor.pip_args(external))?;
    }
    if !cmake_dir.join("MLXConfig.cmake").is_file() {
        return Err(format!(
            "pip installed MLX into {} but it has no share/cmake/MLX",
            prefix.display()
        ));
    }
    Ok(cmake_dir)
}

/// `python3 -m pip install --target prefix …`, with one clear error if Python or pip is missing.
fn pip_install(prefix: &Path, args: &[String]) -> BuildResult<()> {
    let python = find_python().ok_or(
        "python3 with pip is needed to install the pinned MLX wheel and build tools from PyPI \
         (Debian: `apt-get install python3-pip`), or set MLX_DIR to an installed MLX \
         (<prefix>/share/cmake/MLX) and provide cmake and libclang",
    )?;
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--upgrade", "--target"])
        .arg(prefix)
        .args(args)
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .output()
        .map_err(|e| format!("could not run {python} -m pip: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{python} -m pip install --target {} {}` failed:\n{}",
            prefix.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn find_python() -> Option<String> {
    let candidates = env::var("PYTHON")
        .into_iter()
        .chain(["python3".to_string(), "python".to_string()]);
    for candidate in candidates {
        let ok = Command::new(&candidate)
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(candidate);
        }
    }
    None
}

/// Build tools bootstrapped from PyPI when the system lacks them.
fn tools_prefix(external: &Path) -> BuildResult<PathBuf> {
    let prefix = external.join("deps/tools");
    if !prefix.join("cmake/data/bin/cmake").is_file() || !prefix.join("clang/native").is_dir() {
        let args = if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            vec![
                "--require-hashes".to_string(),
                "-r".to_string(),
                external
                    .join("requirements-linux-x86_64-tools.txt")
                    .display()
                    .to_string(),
            ]
        } else {
            vec!["cmake==4.4.4".to_string(), "libclang==18.1.1".to_string()]
        };
        pip_install(&prefix, &args)?;
    }
    Ok(prefix)
}

/// `CMAKE` if set, else a system cmake ≥ 3.16, else the PyPI one.
fn find_cmake(external: &Path) -> BuildResult<PathBuf> {
    if let Some(cmake) = env::var_os("CMAKE") {
        return Ok(PathBuf::from(cmake));
    }
    let system_ok = Command::new("cmake")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_string))
        .map(|version| {
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (3, 16)
        })
        .unwrap_or(false);
    if system_ok {
        return Ok(PathBuf::from("cmake"));
    }
    Ok(tools_prefix(external)?.join("cmake/data/bin/cmake"))
}

/// Compiles mlx-c as a static library against the chosen MLX; returns its library directory.
fn build_mlx_c(mlx_c: &Path, mlx_cmake_dir: &Path, cmake: &Path, compat: &Path) -> PathBuf {
    // The compat header defines std::format only where the standard library lacks it (GCC 12).
    let compat_flag = format!(
        "-include {}",
        compat.join("mlx_c_compat_format.h").display()
    );
    // The cmake crate picks its executable from this variable of our own process.
    env::set_var("CMAKE", cmake);
    if let Ok(out_dir) = env::var("OUT_DIR") {
        drop_stale_cmake_cache(&PathBuf::from(out_dir).join("build"));
    }
    let dst = cmake::Config::new(mlx_c)
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", mlx_cmake_dir)
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define(
            "CMAKE_PROGRAM_PATH",
            cmake.parent().unwrap_or(Path::new(".")),
        )
        .cxxflag(compat_flag)
        .profile("Release")
        .build_target("mlxc")
        .build();
    dst.join("build")
}

/// Removes a CMake cache written for another build directory (a `target/` copied or moved
/// from elsewhere), which CMake refuses to reuse; the next configure starts afresh.
fn drop_stale_cmake_cache(build_dir: &Path) {
    let cache = build_dir.join("CMakeCache.txt");
    let Ok(text) = fs::read_to_string(&cache) else {
        return;
    };
    let recorded = text
        .lines()
        .find_map(|line| line.strip_prefix("CMAKE_CACHEFILE_DIR:INTERNAL="));
    if recorded.is_some_and(|dir| Path::new(dir) != build_dir) {
        let _ = fs::remove_file(&cache);
        let _ = fs::remove_dir_all(build_dir.join("CMakeFiles"));
    }
}

/// libclang for bindgen: `LIBCLANG_PATH`, a system one, else the PyPI wheel (which needs GCC's
/// builtin headers on the include path: it ships no `stddef.h`).
fn libclang_setup(external: &Path) -> BuildResult<Vec<String>> {
    if env::var_os("LIBCLANG_PATH").is_some() || system_libclang_present() {
        return Ok(Vec::new());
    }
    let native = tools_prefix(external)?.join("clang/native");
    // bindgen's clang-sys reads this variable when it loads libclang below.
    env::set_var("LIBCLANG_PATH", &native);
    let mut args = Vec::new();
    if let Ok(out) = Command::new("gcc").arg("-print-file-name=include").output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if Path::new(&dir).join("stddef.h").is_file() {
            args.push(format!("-I{dir}"));
        }
    }
    Ok(args)
}

fn system_libclang_present() -> bool {
    let dirs = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ];
    let has_libclang = |dir: &Path| {
        fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| is_libclang_name(&e.file_name().to_string_lossy()))
            })
            .unwrap_or(false)
    };
    if dirs.iter().any(|d| has_libclang(Path::new(d))) {
        return true;
    }
    let llvm_libs = fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|e| e.path().join("lib"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    cfg!(target_os = "macos") || llvm_libs.iter().any(|d| has_libclang(d))
}

/// `libclang.so`, `libclang.so.N`, `libclang-N.so…` (not `libclang-cpp`) or `libclang.dylib`.
fn is_libclang_name(name: &str) -> bool {
    name.starts_with("libclang.so")
        || name == "libclang.dylib"
        || name.strip_prefix("libclang-").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit()) && rest.contains(".so")
        })
}

fn generate_bindings(mlx_c: &Path, external: &Path, out_dir: &Path) -> BuildResult<()> {
    let extra = libclang_setup(external)?;
    let bindings = bindgen::Builder::default()
        .header(mlx_c.join("mlx/c/mlx.h").display().to_string())
        .clang_arg(format!("-I{}", mlx_c.display()))
        .clang_args(extra)
        .allowlist_function("mlx_.*")
        .allowlist_type("mlx_.*")
        .allowlist_var("MLX_.*|mlx_.*")
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate()
        .map_err(|e| format!("bindgen over {}: {e}", mlx_c.join("mlx/c/mlx.h").display()))?;
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .map_err(|e| format!("writing bindings: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
