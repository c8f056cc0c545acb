//! Debian's `librocksdb.a` (linked statically: `ROCKSDB_STATIC` in `.cargo/config.toml`)
//! leaves its compression libraries to the final link; the shared library named them itself.

fn main() {
    for lib in ["snappy", "z", "bz2", "lz4", "zstd"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
