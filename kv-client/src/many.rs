//! Many keys in one call: GetMany, SetMany, DeleteMany. Like single-key
//! calls they ride the auto-batching stream when the server takes them
//! there (see [`crate::pipeline`]), and are unary calls otherwise.

use kv_proto::v1::{self as pb, call::Request as Req, reply::Response as Res};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    DeleteManyOptions, Entry, Error, Project, SetManyOptions, pipeline,
    project::{encode, entry_from_proto},
};

impl Project {
    /// Reads many keys as `T`s in one call, all as of one moment: one
    /// result per key, in order (`None` for a missing or expired key;
    /// duplicates allowed). No keys: an empty result, without a call.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let carts = kv.get_many::<serde_json::Value, _>(["cart:1", "cart:2"]).await?;
    /// for (key, cart) in ["cart:1", "cart:2"].iter().zip(&carts) {
    ///     match cart {
    ///         Some(entry) => println!("{key}: {} (version {})", entry.value, entry.version),
    ///         None => println!("{key}: none"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::get`]; `RESOURCE_EXHAUSTED` from the server over its
    /// limit of keys per call (1000 by default). One value that does not fit
    /// `T` fails the whole call with [`Error::Decode`].
    pub async fn get_many<T, I>(&self, keys: I) -> Result<Vec<Option<Entry<T>>>, Error>
    where
        T: DeserializeOwned,
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let count = keys.len();
        match self.run(Req::GetMany(pb::GetManyRequest { keys })).await? {
            Res::GetMany(reply) => get_many_results(count, reply),
            _ => Err(pipeline::mismatch("GetMany")),
        }
    }

    /// Writes many keys in one call, all or nothing, with no expiry; returns
    /// each entry's new version, in order. No entries: an empty result,
    /// without a call.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let versions = kv.set_many([("color", &"red"), ("size", &"XL")]).await?;
    /// # let _ = versions; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`] for any one entry (then nothing is written);
    /// `RESOURCE_EXHAUSTED` from the server over its limit of entries per
    /// call (1000 by default).
    pub async fn set_many<'v, K, V, I>(&self, entries: I) -> Result<Vec<u64>, Error>
    where
        I: IntoIterator<Item = (K, &'v V)>,
        K: AsRef<str>,
        V: Serialize + ?Sized + 'v,
    {
        self.set_many_with(entries, SetManyOptions::new()).await
    }

    /// [`Project::set_many`] with options: the expiry of every entry, a
    /// request id.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::SetManyOptions;
    /// use serde_json::json;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let (a, b) = (json!({"n": 1}), json!([1, 2]));
    /// let options = SetManyOptions::new().ttl(Duration::from_secs(300)).request_id("import-7");
    /// kv.set_many_with([("cache:a", &a), ("cache:b", &b)], options).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set_many`]; [`Error::InvalidArgument`] for a zero TTL
    /// or a bad request id.
    pub async fn set_many_with<'v, K, V, I>(
        &self,
        entries: I,
        options: SetManyOptions,
    ) -> Result<Vec<u64>, Error>
    where
        I: IntoIterator<Item = (K, &'v V)>,
        K: AsRef<str>,
        V: Serialize + ?Sized + 'v,
    {
        let entries = entries
            .into_iter()
            .map(|(key, value)| Ok((key.as_ref().to_owned(), encode(value)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let count = entries.len();
        let message = options.to_request(entries)?;
        let Res::SetMany(reply) = self.run(Req::SetMany(message)).await? else {
            return Err(pipeline::mismatch("SetMany"));
        };
        if reply.versions.len() != count {
            return Err(Error::Protocol(format!(
                "SetMany reply has {} versions for {count} entries",
                reply.versions.len()
            )));
        }
        Ok(reply.versions)
    }

    /// Removes many keys in one call, all or nothing; returns how many live
    /// keys were removed. No keys: 0, without a call.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let removed = kv.delete_many(["cart:1", "cart:2", "cart:3"]).await?;
    /// # let _ = removed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::delete`]; `RESOURCE_EXHAUSTED` from the server over its
    /// limit of keys per call (1000 by default).
    pub async fn delete_many<I>(&self, keys: I) -> Result<u64, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.delete_many_with(keys, DeleteManyOptions::new()).await
    }

    /// [`Project::delete_many`] with a request id.
    ///
    /// ```no_run
    /// use kv_client::DeleteManyOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let keys = vec!["a".to_string(), "b".to_string()];
    /// kv.delete_many_with(&keys, DeleteManyOptions::new().request_id("purge-1")).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::delete_many`]; [`Error::InvalidArgument`] for a bad
    /// request id.
    pub async fn delete_many_with<I>(
        &self,
        keys: I,
        options: DeleteManyOptions,
    ) -> Result<u64, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let message = options.to_request(keys)?;
        match self.run(Req::DeleteMany(message)).await? {
            Res::DeleteMany(reply) => Ok(reply.deleted),
            _ => Err(pipeline::mismatch("DeleteMany")),
        }
    }
}

fn get_many_results<T: DeserializeOwned>(
    count: usize,
    reply: pb::GetManyResponse,
) -> Result<Vec<Option<Entry<T>>>, Error> {
    if reply.results.len() != count {
        return Err(Error::Protocol(format!(
            "GetMany reply has {} results for {count} keys",
            reply.results.len()
        )));
    }
    reply.results.into_iter().map(entry_from_proto).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found(
        value: serde_json::Value,
        version: u64,
        expires_at_ms: Option<u64>,
    ) -> pb::GetResponse {
        pb::GetResponse {
            found: true,
            value: Some(crate::json::to_proto(&value).unwrap()),
            version,
            expires_at_ms,
            incarnation: 8,
        }
    }

    #[test]
    fn results_keep_request_order_and_absences() {
        let reply = pb::GetManyResponse {
            results: vec![
                found(json!(1), 3, None),
                pb::GetResponse::default(),
                found(json!(2), 9, Some(1_700_000_000_000)),
            ],
        };
        let entries: Vec<Option<Entry<u32>>> = get_many_results(3, reply).unwrap();
        assert_eq!(
            entries,
            [
                Some(Entry {
                    value: 1,
                    version: 3,
                    expires_at_ms: None,
                    incarnation: 8,
                }),
                None,
                Some(Entry {
                    value: 2,
                    version: 9,
                    expires_at_ms: Some(1_700_000_000_000),
                    incarnation: 8,
                }),
            ]
        );
    }

    #[test]
    fn bad_replies_are_errors() {
        let short = get_many_results::<u32>(
            2,
            pb::GetManyResponse {
                results: vec![pb::GetResponse::default()],
            },
        );
        assert!(matches!(short, Err(Error::Protocol(_))));
        let wrong_type = get_many_results::<u32>(
            1,
            pb::GetManyResponse {
                results: vec![found(json!("x"), 1, None)],
            },
        );
        assert!(matches!(wrong_type, Err(Error::Decode(_))));
        let no_value = get_many_results::<u32>(
            1,
            pb::GetManyResponse {
                results: vec![pb::GetResponse {
                    found: true,
                    ..Default::default()
                }],
            },
        );
        assert!(matches!(no_value, Err(Error::Protocol(_))));
    }

    #[tokio::test]
    async fn empty_calls_do_not_reach_the_server() {
        // Nothing listens on port 1: a call would fail.
        let kv = crate::Client::builder("http://127.0.0.1:1")
            .connect_lazy()
            .unwrap()
            .project("p");
        let none: [&str; 0] = [];
        assert!(kv.get_many::<u32, _>(none).await.unwrap().is_empty());
        assert!(kv.set_many::<&str, u32, _>([]).await.unwrap().is_empty());
        assert_eq!(kv.delete_many(Vec::<String>::new()).await.unwrap(), 0);
        // A value the SDK refuses is reported before anything else.
        let err = kv
            .set_many([("a", &json!(1)), ("b", &json!(u64::MAX))])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
