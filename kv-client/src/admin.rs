//! The admin API: projects, quotas, usage and tokens.

use std::{future::Future, sync::Arc};

use kv_proto::v1 as pb;

use crate::{Client, Error, endpoints::Conn, retry::Safety};

/// Limits on what a project holds and how fast it calls; `None` means the
/// server's default.
///
/// ```
/// let quota = kv_client::Quota { ops_per_second: Some(100), ..Default::default() };
/// assert_eq!(quota.max_keys, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys.
    pub max_keys: Option<u64>,
    /// Most bytes of keys plus encoded values.
    pub max_bytes: Option<u64>,
    /// Most calls per one-second window (every call counts one, whatever
    /// its number of keys). `Some(0)`: unlimited, whatever the server
    /// default. Over it, calls fail with `RESOURCE_EXHAUSTED` and a
    /// `retry-after-ms` hint.
    pub ops_per_second: Option<u64>,
    /// Most bytes written (keys plus encoded values) per one-second window.
    /// `Some(0)`: unlimited, whatever the server default.
    pub write_bytes_per_second: Option<u64>,
}

/// A project with its usage, quota and incarnation; from the [`Admin`]
/// project methods.
///
/// ```no_run
/// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
/// let shop = admin.get_project("shop").await?;
/// println!("{} (incarnation {}): {} keys", shop.name, shop.incarnation, shop.keys);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectInfo {
    /// The name.
    pub name: String,
    /// Keys held.
    pub keys: u64,
    /// Bytes of keys plus encoded values held.
    pub bytes: u64,
    /// The project's own quota (unset fields: server default).
    pub quota: Quota,
    /// Which life of the name this is: 0 for the first project of the
    /// name; a project deleted and created again gets a new, larger one, so
    /// versions and resume points of the old project are told apart from
    /// the new one's.
    pub incarnation: u64,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id (for revoking).
    pub id: String,
    /// The project it opens.
    pub project: String,
    /// Reads only.
    pub read_only: bool,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// The token's own rate limits (none set: only its project's apply).
    pub limits: TokenLimits,
}

/// Rate limits of one token, on top of its project's quota: a call made
/// with the token is admitted only if both admit it. `None` or `Some(0)`:
/// no limit of the token's own. Over one, calls fail with
/// `RESOURCE_EXHAUSTED` naming the token id, with a `retry-after-ms` hint
/// ([`Error::retry_after`]). Set when the token is created
/// ([`Admin::create_token_with`]); to change them, create another token
/// and revoke this one.
///
/// ```
/// let limits = kv_client::TokenLimits { ops_per_second: Some(20), ..Default::default() };
/// assert_eq!(limits.write_bytes_per_second, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// Most calls per one-second window made with the token (counted as
    /// for [`Quota::ops_per_second`]).
    pub ops_per_second: Option<u64>,
    /// Most bytes written per one-second window with the token (counted
    /// as for [`Quota::write_bytes_per_second`]).
    pub write_bytes_per_second: Option<u64>,
}

/// A token just created: its secret is shown here only.
#[derive(Clone)]
pub struct NewToken {
    /// The bearer secret.
    pub token: String,
    /// The rest.
    pub info: TokenInfo,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

fn project(p: pb::Project) -> ProjectInfo {
    let quota = p.quota.unwrap_or_default();
    ProjectInfo {
        name: p.name,
        keys: p.keys,
        bytes: p.bytes,
        quota: Quota {
            max_keys: quota.max_keys,
            max_bytes: quota.max_bytes,
            ops_per_second: quota.ops_per_second,
            write_bytes_per_second: quota.write_bytes_per_second,
        },
        incarnation: p.incarnation,
    }
}

fn token(t: pb::TokenInfo) -> TokenInfo {
    TokenInfo {
        id: t.id,
        project: t.project,
        read_only: t.read_only,
        created_at_ms: t.created_at_ms,
        limits: t.limits.map_or_else(TokenLimits::default, |l| TokenLimits {
            ops_per_second: l.ops_per_second,
            write_bytes_per_second: l.write_bytes_per_second,
        }),
    }
}

fn quota(q: Quota) -> Option<pb::Quota> {
    Some(pb::Quota {
        max_keys: q.max_keys,
        max_bytes: q.max_bytes,
        ops_per_second: q.ops_per_second,
        write_bytes_per_second: q.write_bytes_per_second,
    })
}

/// The admin API; from [`Client::admin`]. Every method needs the admin
/// token when the server requires authentication.
///
/// # Errors
///
/// Every method: [`Error::Status`] with `UNAUTHENTICATED` (no or bad
/// credentials), `PERMISSION_DENIED` (a project token), `NOT_FOUND` (an
/// unregistered project), `ALREADY_EXISTS`, `INVALID_ARGUMENT`;
/// [`Error::Timeout`].
#[derive(Clone, Debug)]
pub struct Admin {
    pub(crate) client: Client,
}

impl Admin {
    /// An admin call, retried as the client's policy says. Admin writes
    /// have no request ids, so they are retried only when an attempt surely
    /// did not reach the server.
    async fn call<M, T, F, Fut>(&self, safety: Safety, message: M, call: F) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Arc<Conn>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client
            .unary(safety, None, None, false, message, call)
            .await
    }

    /// Registers a project.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let quota = kv_client::Quota { max_keys: Some(10_000), ..Default::default() };
    /// admin.create_project("shop", quota).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn create_project(&self, name: &str, limits: Quota) -> Result<ProjectInfo, Error> {
        let message = pb::CreateProjectRequest {
            name: name.into(),
            quota: quota(limits),
        };
        let reply = self
            .call(Safety::Unsafe, message, |conn, r| async move {
                conn.admin().create_project(r).await
            })
            .await?;
        Ok(project(reply))
    }

    /// Deletes a project, its data and its tokens; returns how many live
    /// keys it held.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let removed = admin.delete_project("old-shop").await?;
    /// # let _ = removed; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn delete_project(&self, name: &str) -> Result<u64, Error> {
        let message = pb::DeleteProjectRequest { name: name.into() };
        let reply = self
            .call(Safety::Unsafe, message, |conn, r| async move {
                conn.admin().delete_project(r).await
            })
            .await?;
        Ok(reply.deleted_keys)
    }

    /// One project with its usage.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let shop = admin.get_project("shop").await?;
    /// println!("{} keys, {} bytes", shop.keys, shop.bytes);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn get_project(&self, name: &str) -> Result<ProjectInfo, Error> {
        let message = pb::GetProjectRequest { name: name.into() };
        Ok(project(
            self.call(Safety::Read, message, |conn, r| async move {
                conn.admin().get_project(r).await
            })
            .await?,
        ))
    }

    /// Every registered project, by name.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// for p in admin.list_projects().await? { println!("{}: {} keys", p.name, p.keys); }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn list_projects(&self) -> Result<Vec<ProjectInfo>, Error> {
        let message = pb::ListProjectsRequest {};
        let reply = self
            .call(Safety::Read, message, |conn, r| async move {
                conn.admin().list_projects(r).await
            })
            .await?;
        Ok(reply.projects.into_iter().map(project).collect())
    }

    /// Replaces a project's quota.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let quota = kv_client::Quota {
    ///     max_keys: Some(50_000),
    ///     max_bytes: Some(1 << 30),
    ///     ops_per_second: Some(1_000),
    ///     write_bytes_per_second: None,
    /// };
    /// admin.set_quota("shop", quota).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn set_quota(&self, name: &str, limits: Quota) -> Result<ProjectInfo, Error> {
        let message = pb::SetQuotaRequest {
            name: name.into(),
            quota: quota(limits),
        };
        Ok(project(
            self.call(Safety::Unsafe, message, |conn, r| async move {
                conn.admin().set_quota(r).await
            })
            .await?,
        ))
    }

    /// Creates a token for `project` (read-write or read-only).
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let reader = admin.create_token("shop", true).await?;
    /// let shop = kv_client::Client::builder("http://127.0.0.1:50051").token(reader.token).connect().await?;
    /// # let _ = shop; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn create_token(&self, project: &str, read_only: bool) -> Result<NewToken, Error> {
        self.create_token_with(project, read_only, TokenLimits::default())
            .await
    }

    /// Creates a token for `project` with rate limits of its own, on top
    /// of the project's.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let limits = kv_client::TokenLimits { ops_per_second: Some(20), ..Default::default() };
    /// let batch_job = admin.create_token_with("shop", false, limits).await?;
    /// assert_eq!(batch_job.info.limits, limits);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn create_token_with(
        &self,
        project: &str,
        read_only: bool,
        limits: TokenLimits,
    ) -> Result<NewToken, Error> {
        let set = limits.ops_per_second.is_some() || limits.write_bytes_per_second.is_some();
        let message = pb::CreateTokenRequest {
            project: project.into(),
            read_only,
            limits: set.then_some(pb::TokenLimits {
                ops_per_second: limits.ops_per_second,
                write_bytes_per_second: limits.write_bytes_per_second,
            }),
        };
        let reply = self
            .call(Safety::Unsafe, message, |conn, r| async move {
                conn.admin().create_token(r).await
            })
            .await?;
        let info = reply
            .info
            .ok_or_else(|| Error::Protocol("CreateToken reply without token info".into()))?;
        Ok(NewToken {
            token: reply.token,
            info: token(info),
        })
    }

    /// Revokes a token; false if there was no such token.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// admin.revoke_token("3f2a9c0d1e4b5a67").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        let message = pb::RevokeTokenRequest { id: id.into() };
        Ok(self
            .call(Safety::Unsafe, message, |conn, r| async move {
                conn.admin().revoke_token(r).await
            })
            .await?
            .revoked)
    }

    /// Tokens (never secrets) of one project, or of all with `None`.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// let tokens = admin.list_tokens(Some("shop")).await?;
    /// # let _ = tokens; Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`].
    pub async fn list_tokens(&self, project: Option<&str>) -> Result<Vec<TokenInfo>, Error> {
        let message = pb::ListTokensRequest {
            project: project.unwrap_or_default().into(),
        };
        let reply = self
            .call(Safety::Read, message, |conn, r| async move {
                conn.admin().list_tokens(r).await
            })
            .await?;
        Ok(reply.tokens.into_iter().map(token).collect())
    }
}

/// What [`Admin::backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Bytes of the backup file.
    pub bytes: u64,
    /// Chunks the server sent.
    pub chunks: u64,
    /// The SHA-256 the file ends with (over every byte before it), hex:
    /// `kv-server restore` checks it.
    pub checksum: String,
}

impl Admin {
    /// Streams a consistent backup of the whole server, or of `project`
    /// alone (its data, catalog entry, quota and tokens), into `out` (a
    /// file, usually): the state after every write logged before one cut of
    /// the log, taken while writes go on. Restore it with `kv-server restore
    /// --from FILE --data-dir DIR`. No deadline applies: a large backup
    /// takes as long as it takes. `out` is flushed at the end; on an error
    /// it holds an incomplete file, which a restore refuses.
    ///
    /// ```no_run
    /// # async fn demo(admin: kv_client::Admin) -> Result<(), kv_client::Error> {
    /// // Any `AsyncWrite`: a `tokio::fs::File`, or memory.
    /// let mut backup = Vec::new();
    /// let summary = admin.backup(None, &mut backup).await?;
    /// assert_eq!(summary.bytes, backup.len() as u64);
    /// println!("{} bytes, sha256 {}", summary.bytes, summary.checksum);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Admin`]; `NOT_FOUND` for an unknown project; `UNIMPLEMENTED`
    /// from a Redis Cluster backed server;
    /// [`Error::Output`] when writing to `out` fails; [`Error::Protocol`]
    /// when the stream ends before the file's trailer.
    pub async fn backup(
        &self,
        project: Option<&str>,
        mut out: impl tokio::io::AsyncWrite + Unpin + Send,
    ) -> Result<BackupSummary, Error> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self
            .client
            .unary(
                Safety::Read,
                None,
                None,
                true,
                pb::BackupRequest {
                    project: project.map(Into::into),
                },
                |conn, r| async move { conn.admin().backup(r).await },
            )
            .await?;
        let (mut bytes, mut chunks) = (0u64, 0u64);
        // The file's last 32 bytes are its digest.
        let mut tail = Vec::with_capacity(64);
        while let Some(chunk) = stream.message().await? {
            out.write_all(&chunk.data).await.map_err(Error::Output)?;
            bytes += chunk.data.len() as u64;
            chunks += 1;
            tail.extend_from_slice(&chunk.data[chunk.data.len().saturating_sub(32)..]);
            let extra = tail.len().saturating_sub(32);
            tail.drain(..extra);
        }
        out.flush().await.map_err(Error::Output)?;
        if tail.len() < 32 || bytes < 10 + 9 + 40 {
            return Err(Error::Protocol(format!(
                "the backup stream ended after {bytes} bytes, before its trailer"
            )));
        }
        Ok(BackupSummary {
            bytes,
            chunks,
            checksum: tail.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

impl Client {
    /// The admin API (projects, quotas, tokens), with this client's
    /// credentials (the admin token when the server requires one).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kv_client::Error> {
    /// let admin = kv_client::Client::builder("http://127.0.0.1:50051")
    ///     .token("the-admin-token")
    ///     .connect()
    ///     .await?
    ///     .admin();
    /// admin.create_project("shop", kv_client::Quota::default()).await?;
    /// let token = admin.create_token("shop", false).await?;
    /// println!("give the shop service this secret once: {}", token.token);
    /// # Ok(())
    /// # }
    /// ```
    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_carry_their_incarnation() {
        let info = project(pb::Project {
            name: "shop".into(),
            keys: 3,
            bytes: 40,
            quota: Some(pb::Quota {
                max_keys: Some(10),
                ops_per_second: Some(50),
                ..Default::default()
            }),
            incarnation: 1_700_000_000_000,
        });
        assert_eq!(
            info,
            ProjectInfo {
                name: "shop".into(),
                keys: 3,
                bytes: 40,
                quota: Quota {
                    max_keys: Some(10),
                    ops_per_second: Some(50),
                    ..Quota::default()
                },
                incarnation: 1_700_000_000_000,
            }
        );
        assert_eq!(project(pb::Project::default()).incarnation, 0);
    }
}
