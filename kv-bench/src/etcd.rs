//! etcd's v3 KV messages and client, generated from `proto/etcd.proto`.

include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
