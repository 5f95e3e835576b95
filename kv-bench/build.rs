//! Compiles the subset of etcd's v3 API that kv-bench drives
//! (`proto/etcd.proto`) with the pure-Rust `protox` compiler, as kv-proto
//! does for the kv API: no system `protoc`. Output goes to `OUT_DIR` only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["etcd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Values are cloned for every put: `Bytes` makes that a refcount.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
