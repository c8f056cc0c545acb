//! Builds that link Debian's `librocksdb.a` instead of compiling RocksDB (the test builds
//! of `scripts/test`: `ROCKSDB_LIB_DIR` and `ROCKSDB_STATIC` set, see README "RocksDB:
//! compiled from source, Debian's for the tests") name its compression libraries for
//! the final link, which the shared library named itself. A RocksDB compiled from source
//! brings its own LZ4 (the `rocksdb` crate's `lz4` feature) and needs none of them.

fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_none() {
        return;
    }
    for lib in ["snappy", "z", "bz2", "lz4", "zstd"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
