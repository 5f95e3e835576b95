//! One project's keys: [`Project`] and the results its calls return.

use std::{future::Future, sync::Arc, time::Duration};

use kv_proto::contract::PROJECT_HEADER;
use kv_proto::v1::{
    self as pb, GetRequest, HasRequest, call::Request as Req, reply::Response as Res,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
};

use crate::{
    ClearOptions, Client, DeleteOptions, Error, IncrOptions, MergeOptions, SetOptions,
    endpoints::Conn,
    json, pipeline,
    retry::{Failure, Safety},
};

pub(crate) fn project_header(name: &str) -> Result<AsciiMetadataValue, String> {
    kv_proto::contract::check_project_name(name)
        .map_err(|e| format!("project name {name:?} is invalid: {e}"))?;
    MetadataValue::try_from(name).map_err(|e| format!("project name {name:?}: {e}"))
}

/// One project's keys. Cheap to clone; every call is independent.
///
/// ```no_run
/// # async fn demo(client: kv_client::Client) -> Result<(), kv_client::Error> {
/// let kv = client.project("shop");
/// kv.set("cart:7", &serde_json::json!({"items": [1, 2]})).await?;
/// let cart: Option<serde_json::Value> = kv.get("cart:7").await?;
/// # let _ = cart; Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Project {
    pub(crate) client: Client,
    /// Travels with each auto-batched call, shared rather than copied.
    pub(crate) name: Arc<str>,
    pub(crate) header: Arc<Result<AsciiMetadataValue, String>>,
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("client", &self.client)
            .field("header", &self.header)
            .finish()
    }
}

impl Project {
    /// This project's header, or the reason its name is refused.
    pub(crate) fn header(&self) -> Result<&AsciiMetadataValue, Error> {
        self.header
            .as_ref()
            .as_ref()
            .map_err(|e| Error::InvalidArgument(e.clone()))
    }

    /// A unary call on this project, retried as the client's policy says;
    /// see [`Client::unary`].
    pub(crate) async fn unary<M, T, F, Fut>(
        &self,
        safety: Safety,
        request_id: Option<&str>,
        message: M,
        call: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Arc<Conn>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let header = self.header()?;
        self.client
            .unary(safety, request_id, Some(header), false, message, call)
            .await
    }

    /// A read (safe to retry) on this project.
    pub(crate) async fn read<M, T, F, Fut>(&self, message: M, call: F) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Arc<Conn>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.unary(Safety::Read, None, message, call).await
    }

    /// The start of a stream on this project: a read, and without a
    /// deadline (the stream outlives the per-call timeout).
    pub(crate) async fn open_stream<M, T, F, Fut>(&self, message: M, call: F) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Arc<Conn>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let header = self.header()?;
        self.client
            .unary(Safety::Read, None, Some(header), true, message, call)
            .await
    }

    /// A single-key call, or a GetMany, SetMany or DeleteMany: over the
    /// auto-batching stream when there is one and it takes the call,
    /// otherwise (or when the server has none) as its unary call; retried
    /// as the client's policy says. A write without a request id gets one
    /// unless automatic ids are off.
    pub(crate) async fn run(&self, mut request: Req) -> Result<Res, Error> {
        self.header()?;
        let client = &self.client;
        let safety = match &mut request {
            Req::Get(_) | Req::Has(_) | Req::GetMany(_) => Safety::Read,
            Req::Set(r) => client.write_safety(&mut r.request_id),
            Req::Delete(r) => client.write_safety(&mut r.request_id),
            Req::Incr(r) => client.write_safety(&mut r.request_id),
            Req::Merge(r) => client.write_safety(&mut r.request_id),
            Req::SetMany(r) => client.write_safety(&mut r.request_id),
            Req::DeleteMany(r) => client.write_safety(&mut r.request_id),
        };
        let request_id = match &request {
            Req::Set(r) => Some(r.request_id.as_str()),
            Req::Delete(r) => Some(r.request_id.as_str()),
            Req::Incr(r) => Some(r.request_id.as_str()),
            Req::Merge(r) => Some(r.request_id.as_str()),
            Req::SetMany(r) => Some(r.request_id.as_str()),
            Req::DeleteMany(r) => Some(r.request_id.as_str()),
            Req::Get(_) | Req::Has(_) | Req::GetMany(_) => None,
        }
        .filter(|id| !id.is_empty());
        let batchable = request.encoded_len() <= pipeline::MAX_CALL_BYTES;
        let request = &request;
        client
            .retrying(safety, request_id, |conn, left| async move {
                let Some(pipeline) = client.pipeline.as_ref().filter(|_| batchable) else {
                    return self.run_unary(&conn, request.clone(), left).await;
                };
                match pipeline
                    .call(&self.name, request.clone(), safety, left)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(request) => self.run_unary(&conn, request, left).await,
                }
            })
            .await
    }

    /// One attempt of a single-key call as its unary call.
    async fn run_unary(&self, conn: &Conn, request: Req, left: Duration) -> Result<Res, Failure> {
        let header = self.header().map_err(Failure::fatal)?;
        fn with<M>(
            mut request: Request<M>,
            header: &AsciiMetadataValue,
            left: Duration,
        ) -> Request<M> {
            request
                .metadata_mut()
                .insert(PROJECT_HEADER, header.clone());
            request.set_timeout(left);
            request
        }
        macro_rules! make {
            ($message:expr) => {
                with(self.client.request_without_deadline($message), header, left)
            };
        }
        let mut kv = conn.kv();
        let reply = match request {
            Req::Get(r) => kv.get(make!(r)).await.map(|r| Res::Get(r.into_inner())),
            Req::Set(r) => kv.set(make!(r)).await.map(|r| Res::Set(r.into_inner())),
            Req::Has(r) => kv.has(make!(r)).await.map(|r| Res::Has(r.into_inner())),
            Req::Delete(r) => kv
                .delete(make!(r))
                .await
                .map(|r| Res::Delete(r.into_inner())),
            Req::Incr(r) => kv.incr(make!(r)).await.map(|r| Res::Incr(r.into_inner())),
            Req::Merge(r) => kv.merge(make!(r)).await.map(|r| Res::Merge(r.into_inner())),
            Req::GetMany(r) => kv
                .get_many(make!(r))
                .await
                .map(|r| Res::GetMany(r.into_inner())),
            Req::SetMany(r) => kv
                .set_many(make!(r))
                .await
                .map(|r| Res::SetMany(r.into_inner())),
            Req::DeleteMany(r) => kv
                .delete_many(make!(r))
                .await
                .map(|r| Res::DeleteMany(r.into_inner())),
        };
        reply.map_err(Failure::from_status)
    }

    /// Reads `key` as a `T`; `None` when the key is missing or expired.
    /// A stored JSON null reads as `Some` when `T` accepts null (an
    /// `Option<_>` or [`serde_json::Value`]). [`Project::get_entry`] also
    /// gives the version and the deadline.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let visits: Option<u64> = kv.get("visits").await?;
    /// # let _ = visits; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server (`INVALID_ARGUMENT` for a bad key),
    /// [`Error::Decode`] when the value does not fit `T`, [`Error::Timeout`],
    /// [`Error::InvalidArgument`] for a bad project name.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        Ok(self.get_entry(key).await?.map(|entry| entry.value))
    }

    /// Reads `key` as a `T` with its version and deadline; `None` when the
    /// key is missing or expired.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if let Some(entry) = kv.get_entry::<u64>("stock:42").await? {
    ///     // Write back only if nobody changed it meanwhile.
    ///     let outcome = kv.compare_and_swap("stock:42", entry.version, &(entry.value - 1)).await?;
    ///     if !outcome.applied { /* reread and retry */ }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::get`].
    pub async fn get_entry<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, Error> {
        match self.run(Req::Get(GetRequest { key: key.into() })).await? {
            Res::Get(reply) => entry_from_proto(reply),
            _ => Err(pipeline::mismatch("Get")),
        }
    }

    /// Stores `value` under `key` with no expiry (removing any earlier TTL).
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// kv.set("flags", &serde_json::json!({"beta": true})).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an integer beyond ±2^53 or nesting
    /// deeper than [`MAX_DEPTH`](crate::MAX_DEPTH); [`Error::Encode`] when `value` cannot be
    /// JSON; [`Error::Status`] from the server (`RESOURCE_EXHAUSTED` over a
    /// size limit, `INVALID_ARGUMENT` for a bad key); [`Error::Timeout`].
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.set_with(key, value, SetOptions::new()).await?;
        Ok(())
    }

    /// Stores `value` under `key`, expiring after `ttl` (millisecond
    /// resolution; a fraction of a millisecond rounds up).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// kv.set_with_ttl("session:abc", &"user-7", Duration::from_secs(3600)).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`], plus [`Error::InvalidArgument`] for a zero `ttl`
    /// and `INVALID_ARGUMENT` from the server past its maximum TTL.
    pub async fn set_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), Error> {
        if ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "ttl is zero; use set() for a key that never expires".into(),
            ));
        }
        self.set_with(key, value, SetOptions::new().ttl(ttl))
            .await?;
        Ok(())
    }

    /// Stores `value` under `key` as `options` say: with a TTL or keeping
    /// the current one, only if absent or only at a version
    /// (compare-and-swap), with a request id. Tells whether the write was
    /// applied, and the key's version: the new one when applied, otherwise
    /// the current one (0 when absent), ready for the next compare-and-swap.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::SetOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let lock = SetOptions::new().if_absent().ttl(Duration::from_secs(30));
    /// let outcome = kv.set_with("lock:job-9", &"worker-3", lock).await?;
    /// if outcome.applied {
    ///     // We hold the lock; renew it only if it is still ours.
    ///     let renew = SetOptions::new().if_version(outcome.version).ttl(Duration::from_secs(30));
    ///     kv.set_with("lock:job-9", &"worker-3", renew).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set_with_ttl`]; [`Error::InvalidArgument`] for a
    /// request id that is empty or longer than [`MAX_REQUEST_ID_BYTES`](crate::MAX_REQUEST_ID_BYTES);
    /// `FAILED_PRECONDITION` from the server when a request id is reused
    /// for a different request. A condition that does not hold is not an
    /// error: it is `applied = false`.
    pub async fn set_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: SetOptions,
    ) -> Result<SetOutcome, Error> {
        let message = options.to_request(key, encode(value)?)?;
        let Res::Set(reply) = self.run(Req::Set(message)).await? else {
            return Err(pipeline::mismatch("Set"));
        };
        Ok(SetOutcome {
            applied: reply.applied,
            version: reply.version,
        })
    }

    /// Stores `value` under `key` only if the key is absent (or expired),
    /// with no expiry.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let created = kv.set_if_absent("user:ada", &serde_json::json!({"id": 1})).await?;
    /// if !created.applied { println!("taken, at version {}", created.version); }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`].
    pub async fn set_if_absent<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<SetOutcome, Error> {
        self.set_with(key, value, SetOptions::new().if_absent())
            .await
    }

    /// Stores `value` under `key` only if the key is at exactly
    /// `expected_version`, with no expiry (use [`Project::set_with`] and
    /// [`SetOptions::keep_ttl`] to keep a deadline).
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// loop {
    ///     let Some(entry) = kv.get_entry::<Vec<String>>("tags").await? else { break };
    ///     let mut tags = entry.value;
    ///     tags.push("new".into());
    ///     if kv.compare_and_swap("tags", entry.version, &tags).await?.applied { break }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`]; `INVALID_ARGUMENT` from the server for version 0.
    pub async fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected_version: u64,
        value: &T,
    ) -> Result<SetOutcome, Error> {
        self.set_with(key, value, SetOptions::new().if_version(expected_version))
            .await
    }

    /// Whether `key` exists and has not expired.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if kv.has("lock:job-9").await? { /* someone holds it */ }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Status`] from the server, [`Error::Timeout`],
    /// [`Error::InvalidArgument`] for a bad project name.
    pub async fn has(&self, key: &str) -> Result<bool, Error> {
        match self.run(Req::Has(HasRequest { key: key.into() })).await? {
            Res::Has(reply) => Ok(reply.exists),
            _ => Err(pipeline::mismatch("Has")),
        }
    }

    /// Removes `key`; true only when a live key was removed.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let existed = kv.delete("cart:7").await?;
    /// # let _ = existed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`].
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self.delete_with(key, DeleteOptions::new()).await?.deleted)
    }

    /// Removes `key` only if it is at exactly `version`.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// if let Some(lock) = kv.get_entry::<String>("lock:job-9").await? {
    ///     // Release the lock only if nobody took it over meanwhile.
    ///     let released = kv.delete_if_version("lock:job-9", lock.version).await?;
    ///     # let _ = released;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]. A version that does not match is not an
    /// error: it is `deleted = false`.
    pub async fn delete_if_version(&self, key: &str, version: u64) -> Result<DeleteOutcome, Error> {
        self.delete_with(key, DeleteOptions::new().if_version(version))
            .await
    }

    /// Removes `key` as `options` say (at a version, with a request id).
    ///
    /// ```no_run
    /// use kv_client::DeleteOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let outcome = kv.delete_with("cart:7", DeleteOptions::new().request_id("checkout-7")).await?;
    /// println!("deleted: {} (version {})", outcome.deleted, outcome.version);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]; [`Error::InvalidArgument`] for a bad request id.
    pub async fn delete_with(
        &self,
        key: &str,
        options: DeleteOptions,
    ) -> Result<DeleteOutcome, Error> {
        let Res::Delete(reply) = self.run(Req::Delete(options.to_request(key)?)).await? else {
            return Err(pipeline::mismatch("Delete"));
        };
        Ok(DeleteOutcome {
            deleted: reply.deleted,
            version: reply.version,
        })
    }

    /// Removes every key of the project; returns how many live keys it
    /// removed. Other projects are untouched.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let removed = kv.clear().await?;
    /// # let _ = removed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`].
    pub async fn clear(&self) -> Result<u64, Error> {
        Ok(self.clear_with(ClearOptions::new()).await?.deleted)
    }

    /// Removes every key of the project, with a request id; returns how
    /// many live keys it removed and the version of the clear.
    ///
    /// ```no_run
    /// use kv_client::ClearOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let id = kv_client::new_request_id();
    /// let outcome = kv.clear_with(ClearOptions::new().request_id(id)).await?;
    /// println!("removed {} keys at version {}", outcome.deleted, outcome.version);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::has`]; [`Error::InvalidArgument`] for a bad request id.
    pub async fn clear_with(&self, options: ClearOptions) -> Result<ClearOutcome, Error> {
        let mut message = options.to_request()?;
        let safety = self.client.write_safety(&mut message.request_id);
        let id = Some(message.request_id.as_str()).filter(|id| !id.is_empty());
        let reply = self
            .unary(safety, id, message.clone(), |conn, r| async move {
                conn.kv().clear(r).await
            })
            .await?;
        Ok(ClearOutcome {
            deleted: reply.deleted,
            version: reply.version,
        })
    }

    /// Adds `delta` to the JSON number under `key` atomically (an absent key
    /// counts as 0) and returns the result.
    ///
    /// `delta` may be negative or fractional; it must be finite and within
    /// ±2^53, like every number the SDK sends.
    ///
    /// ```no_run
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let views = kv.incr("views:home", 1.0).await?;
    /// println!("{views} views");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a non-finite `delta` or one beyond
    /// ±2^53; `FAILED_PRECONDITION` from the server when the stored value is
    /// not a number or the result would be beyond ±2^53 (nothing changes);
    /// otherwise as [`Project::has`].
    pub async fn incr(&self, key: &str, delta: f64) -> Result<f64, Error> {
        Ok(self.incr_with(key, delta, IncrOptions::new()).await?.value)
    }

    /// [`Project::incr`] with options (the TTL of a key it creates, a request
    /// id); returns the number and the key's new version.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::IncrOptions;
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// // A fixed one-minute window: the first hit creates the key and its TTL.
    /// let window = IncrOptions::new().ttl(Duration::from_secs(60));
    /// let hits = kv.incr_with("rate:client-9", 1.0, window).await?;
    /// if hits.value > 100.0 { /* throttle */ }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::incr`]; [`Error::InvalidArgument`] for a zero TTL or a
    /// bad request id.
    pub async fn incr_with(
        &self,
        key: &str,
        delta: f64,
        options: IncrOptions,
    ) -> Result<Versioned<f64>, Error> {
        let Res::Incr(reply) = self.run(Req::Incr(options.to_request(key, delta)?)).await? else {
            return Err(pipeline::mismatch("Incr"));
        };
        Ok(Versioned {
            value: reply.value,
            version: reply.version,
        })
    }

    /// Applies an RFC 7386 JSON merge patch to `key` atomically and returns
    /// the value after it as a `T`. Object members of the patch replace,
    /// null members remove, nested objects merge; a non-object patch
    /// replaces the value; an absent key is patched as if it held `{}`. The
    /// key keeps its deadline.
    ///
    /// ```no_run
    /// use serde_json::{Value, json};
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let profile: Value = kv.merge("user:1", &json!({"email": "ada@example.com", "phone": null})).await?;
    /// # let _ = profile; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::set`], plus [`Error::Decode`] when the result does not
    /// fit `T` (the patch was applied all the same).
    pub async fn merge<P, T>(&self, key: &str, patch: &P) -> Result<T, Error>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        Ok(self
            .merge_with(key, patch, MergeOptions::new())
            .await?
            .value)
    }

    /// [`Project::merge`] with options (a new TTL, a request id); returns the
    /// value after the patch and the key's new version.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kv_client::MergeOptions;
    /// use serde_json::{Value, json};
    /// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
    /// let options = MergeOptions::new().ttl(Duration::from_secs(1800));
    /// let session = kv.merge_with::<_, Value>("session:x", &json!({"cart": [7]}), options).await?;
    /// println!("version {}: {}", session.version, session.value);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Project::merge`]; [`Error::InvalidArgument`] for a zero TTL or a
    /// bad request id.
    pub async fn merge_with<P, T>(
        &self,
        key: &str,
        patch: &P,
        options: MergeOptions,
    ) -> Result<Versioned<T>, Error>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let message = options.to_request(key, encode(patch)?)?;
        let Res::Merge(reply) = self.run(Req::Merge(message)).await? else {
            return Err(pipeline::mismatch("Merge"));
        };
        let value = reply
            .value
            .ok_or_else(|| Error::Protocol("Merge reply without a value".into()))?;
        Ok(Versioned {
            value: decode(value)?,
            version: reply.version,
        })
    }
}

/// `value` as JSON on the wire, checked against the number and depth rules.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<prost_types::Value, Error> {
    json::to_proto(&serde_json::to_value(value).map_err(Error::Encode)?)
}

/// A value from the wire as a `T`.
pub(crate) fn decode<T: DeserializeOwned>(value: prost_types::Value) -> Result<T, Error> {
    serde_json::from_value(json::from_proto(value)?).map_err(Error::Decode)
}

pub(crate) fn entry_from_proto<T: DeserializeOwned>(
    reply: pb::GetResponse,
) -> Result<Option<Entry<T>>, Error> {
    if !reply.found {
        return Ok(None);
    }
    let value = reply
        .value
        .ok_or_else(|| Error::Protocol("found = true without a value".into()))?;
    Ok(Some(Entry {
        value: decode(value)?,
        version: reply.version,
        expires_at_ms: reply.expires_at_ms,
        incarnation: reply.incarnation,
    }))
}

/// A stored value with its version, deadline and the project's incarnation;
/// from [`Project::get_entry`] and [`Project::get_many`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// if let Some(entry) = kv.get_entry::<String>("session:x").await? {
///     println!("{} at version {}, expires {:?}", entry.value, entry.version, entry.expires_at_ms);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry<T> {
    /// The value.
    pub value: T,
    /// The version of the change that last wrote the key.
    pub version: u64,
    /// When the key expires (unix milliseconds), if it has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The project's incarnation: [`version`](Self::version) means something
    /// only in it (see [`WatchOptions::incarnation`](crate::WatchOptions::incarnation)).
    pub incarnation: u64,
}

/// What a conditional set did; from [`Project::set_with`],
/// [`Project::set_if_absent`] and [`Project::compare_and_swap`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let kv_client::SetOutcome { applied, version } = kv.set_if_absent("id:ada", &1).await?;
/// # let _ = (applied, version); Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetOutcome {
    /// False when the condition did not hold; nothing changed.
    pub applied: bool,
    /// The key's new version when applied; otherwise its current version
    /// (0 when absent).
    pub version: u64,
}

/// What a delete did; from [`Project::delete_with`] and
/// [`Project::delete_if_version`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let outcome = kv.delete_if_version("lock:job-9", 4).await?;
/// if !outcome.deleted { println!("now at version {}", outcome.version); }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeleteOutcome {
    /// True only when a live key was removed.
    pub deleted: bool,
    /// The version of the deletion when deleted; otherwise the key's
    /// current version (0 when absent).
    pub version: u64,
}

/// What a clear did; from [`Project::clear_with`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let outcome = kv.clear_with(kv_client::ClearOptions::new()).await?;
/// println!("{} keys removed at version {}", outcome.deleted, outcome.version);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClearOutcome {
    /// How many live keys were removed.
    pub deleted: u64,
    /// The version of the clear (0 when the project held nothing).
    pub version: u64,
}

/// A value just written, with the key's new version; from
/// [`Project::incr_with`] and [`Project::merge_with`].
///
/// ```no_run
/// # async fn demo(kv: kv_client::Project) -> Result<(), kv_client::Error> {
/// let kv_client::Versioned { value, version } =
///     kv.incr_with("hits", 1.0, kv_client::IncrOptions::new()).await?;
/// # let _ = (value, version); Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Versioned<T> {
    /// The value after the write.
    pub value: T,
    /// The key's new version.
    pub version: u64,
}

impl Client {
    /// A handle on the keys of project `name`. Cheap, and holds nothing
    /// on the client (handles of any number of projects share the client's
    /// one auto-batching stream); clone it freely, or make one per request.
    ///
    /// The name is checked here (1-64 characters of `[A-Za-z0-9_.-]`); an
    /// invalid one makes every call on the handle fail with
    /// [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(client: kv_client::Client) -> Result<(), kv_client::Error> {
    /// let prefs = client.project("prefs");
    /// prefs.set("theme", &"dark").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn project(&self, name: &str) -> Project {
        Project {
            client: self.clone(),
            name: Arc::from(name),
            header: Arc::new(project_header(name)),
        }
    }
}
