//! Quickstart: typed values, TTLs and projects through the SDK.
//! Run a server first (`cargo run --release -p kv-server`), then
//! `cargo run -p kv-client --example quickstart`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct User {
    name: String,
    visits: u32,
}

#[tokio::main]
async fn main() -> Result<(), kv_client::Error> {
    let url = std::env::var("KV_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = kv_client::Client::connect(url).await?;
    let kv = client.project("shop"); // cheap Clone handle, one project's keys

    let ada = User {
        name: "Ada".into(),
        visits: 3,
    };
    kv.set("user:1", &ada).await?;
    kv.set_with_ttl("session:x", &"token-123", Duration::from_secs(3600))
        .await?;

    let user: Option<User> = kv.get("user:1").await?;
    assert_eq!(user, Some(ada));
    assert!(kv.has("session:x").await?);
    assert!(kv.delete("user:1").await?);
    assert_eq!(kv.get::<User>("user:1").await?, None);

    // Other projects never see "shop"'s keys.
    assert!(!client.project("blog").has("session:x").await?);

    // Integers beyond ±2^53 would be rounded as JSON numbers: refused.
    let err = kv.set("too-big", &(1u64 << 60)).await.unwrap_err();
    assert_eq!(err.code(), kv_client::Code::InvalidArgument);

    let removed = kv.clear().await?;
    println!("quickstart ok: cleared {removed} key(s) from project shop");
    Ok(())
}
