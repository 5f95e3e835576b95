//! Admin changes on the cluster: projects, quotas, tokens. Conditions are
//! judged by the catalog functions in the catalog's slot, so of two
//! front-ends creating (or deleting) one name at once exactly one wins.

use kv_engine::{
    EngineError, Quota,
    catalog::CatalogChange,
    memory::Usage,
    project::ProjectName,
    wal::{AdminChange, AdminOutcome},
};
use redis::Value;

use crate::{
    backend::RedisBackend,
    catalog::{generation, status, token_record},
    codec::{array, int, malformed},
    inner::unreachable,
};

impl RedisBackend {
    async fn catalog_call(
        &self,
        function: &str,
        args: impl FnOnce(&mut redis::Cmd),
    ) -> Result<Vec<Value>, EngineError> {
        let keys = self.inner.names.catalog_keys();
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len()).arg(&keys[..]);
        args(&mut cmd);
        let mut conn = self.inner.conn.clone();
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(unreachable("changing the catalog"))?;
        array(reply)
    }

    /// What `project` holds and its incarnation, read now.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unreachable`] when the cluster does not answer.
    pub async fn usage(&self, project: &ProjectName) -> Result<(Usage, u64), EngineError> {
        let reply = self
            .inner
            .call("kv_stat", project, |_| {})
            .await
            .map_err(unreachable(format!("reading project {project}")))?;
        let parts = array(reply)?;
        let [inc, _, keys, bytes] = parts.as_slice() else {
            return Err(malformed("a short kv_stat reply"));
        };
        let incarnation = int(inc)?;
        self.inner.saw_incarnation(project, incarnation);
        Ok((
            Usage {
                keys: int(keys)?,
                bytes: int(bytes)?,
            },
            incarnation,
        ))
    }

    /// Checks and applies an admin change, as the embedded store's log
    /// writer does; this front-end's catalog has it when this returns,
    /// the others within one read of the catalog stream.
    ///
    /// # Errors
    ///
    /// As the embedded store: [`EngineError::ProjectExists`],
    /// [`EngineError::ProjectNotFound`], [`EngineError::ProjectGone`],
    /// [`EngineError::TokenNotFound`]; [`EngineError::Unreachable`] when the
    /// cluster does not answer.
    pub async fn admin(&self, change: AdminChange) -> Result<AdminOutcome, EngineError> {
        let catalog = &self.inner.catalog;
        match change {
            AdminChange::CreateProject { project, quota } => {
                let created = generation();
                self.put_project(&project, quota, &created, "create")
                    .await?;
                self.inner.generations.insert(project.clone(), created);
                self.registered(project, quota).await
            }
            AdminChange::SetQuota { project, quota } => {
                self.put_project(&project, quota, "", "quota").await?;
                self.registered(project, quota).await
            }
            AdminChange::DeleteProject { project } => {
                if catalog.project(&project).is_none() {
                    return Err(EngineError::ProjectNotFound { project });
                }
                // The data first: the catalog change wakes open streams,
                // which must then find the project gone.
                let reply = self
                    .inner
                    .call("kv_drop", &project, |_| {})
                    .await
                    .map_err(unreachable(format!("deleting project {project}")))?;
                let parts = array(reply)?;
                let [removed, incarnation] = parts.as_slice() else {
                    return Err(malformed("a short kv_drop reply"));
                };
                let (removed, incarnation) = (int(removed)?, int(incarnation)?);
                self.inner.saw_incarnation(&project, incarnation);
                let reply = self
                    .catalog_call("kv_catalog_delete_project", |cmd| {
                        cmd.arg(project.as_str()).arg(incarnation);
                    })
                    .await?;
                if status(&reply)? == "missing" {
                    return Err(EngineError::ProjectNotFound { project });
                }
                self.inner.generations.remove(&project);
                catalog.apply(&CatalogChange::DeleteProject { project });
                Ok(AdminOutcome {
                    removed,
                    incarnation,
                })
            }
            AdminChange::CreateToken { token, incarnation } => {
                let project = token.project.clone();
                let Some(created) = self.inner.generations.get(&project).map(|g| g.clone()) else {
                    return Err(EngineError::ProjectNotFound { project });
                };
                if self.incarnation_now(&project).await? != incarnation {
                    return Err(EngineError::ProjectGone { project });
                }
                let reply = self
                    .catalog_call("kv_catalog_put_token", |cmd| {
                        cmd.arg(&token.id).arg(token_record(&token)).arg(&created);
                    })
                    .await?;
                match status(&reply)? {
                    "missing" => return Err(EngineError::ProjectNotFound { project }),
                    "gone" => return Err(EngineError::ProjectGone { project }),
                    _ => {}
                }
                catalog.apply(&CatalogChange::PutToken(token));
                Ok(AdminOutcome {
                    removed: 0,
                    incarnation,
                })
            }
            AdminChange::RevokeToken { id } => {
                let reply = self
                    .catalog_call("kv_catalog_revoke", |cmd| {
                        cmd.arg(&id);
                    })
                    .await?;
                if status(&reply)? == "missing" {
                    return Err(EngineError::TokenNotFound { id });
                }
                catalog.apply(&CatalogChange::RevokeToken { id });
                Ok(AdminOutcome {
                    removed: 1,
                    incarnation: 0,
                })
            }
        }
    }

    /// `kv_catalog_put_project` in `mode` ("create" refuses an existing
    /// project, "quota" a missing one and keeps its generation).
    async fn put_project(
        &self,
        project: &ProjectName,
        quota: Quota,
        generation: &str,
        mode: &str,
    ) -> Result<(), EngineError> {
        let limit = |l: Option<u64>| l.map_or(String::new(), |n| n.to_string());
        let reply = self
            .catalog_call("kv_catalog_put_project", |cmd| {
                cmd.arg(project.as_str())
                    .arg(generation)
                    .arg(limit(quota.max_keys))
                    .arg(limit(quota.max_bytes))
                    .arg(mode)
                    .arg(limit(quota.ops_per_second))
                    .arg(limit(quota.write_bytes_per_second));
            })
            .await?;
        match status(&reply)? {
            "exists" => Err(EngineError::ProjectExists {
                project: project.clone(),
            }),
            "missing" => Err(EngineError::ProjectNotFound {
                project: project.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// This front-end's catalog learns at once what the cluster's holds;
    /// the outcome carries the project's incarnation.
    async fn registered(
        &self,
        project: ProjectName,
        quota: Quota,
    ) -> Result<AdminOutcome, EngineError> {
        self.inner.catalog.apply(&CatalogChange::PutProject {
            project: project.clone(),
            quota,
        });
        let (_, incarnation) = self.usage(&project).await?;
        Ok(AdminOutcome {
            removed: 0,
            incarnation,
        })
    }

    async fn incarnation_now(&self, project: &ProjectName) -> Result<u64, EngineError> {
        Ok(self.usage(project).await?.1)
    }
}
