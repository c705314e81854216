//! The gRPC `Agent` service: what `hotdeployctl agent ...` talks to.

use super::auth::{authorize, authorize_own_host};
use super::validate;
use crate::deploy::{Engine, EngineError, MaintProgress, Progress};
use crate::journal::{HoldKind, Purpose};
use crate::link::{Link, LinkError};
use crate::rotation::RotationControl;
use crate::service::ServiceController;
use crate::store::ReleaseStore;
use futures::Stream;
use hotdeploy_common::proto::agent_server::Agent;
use hotdeploy_common::proto::{
    AgentStatus, AgentStatusRequest, DeployProgress, DeployRequest, DrainRequest, Health,
    ListReleasesRequest, ListReleasesResponse, MaintenanceProgress, MaintenanceRequest,
    ReleaseInfo, RollbackRequest, RunMaintenanceRequest, UndrainRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// The parts the service reads and drives.
pub struct AgentService {
    pub host_id: String,
    pub groups: Vec<String>,
    pub engine: Engine,
    pub store: ReleaseStore,
    pub rotation: Arc<RotationControl>,
    pub service: Arc<ServiceController>,
    pub link: Option<Link>,
    /// The health this host reports (`health::reported`, kept by the daemon's report task).
    pub health: watch::Receiver<Health>,
}

/// A stream of deploy progress.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<DeployProgress, Status>> + Send>>;

/// A stream of maintenance progress.
pub type MaintenanceStream =
    Pin<Box<dyn Stream<Item = Result<MaintenanceProgress, Status>> + Send>>;

/// Maps an engine refusal to a gRPC status.
pub fn status_of(e: EngineError) -> Status {
    match e {
        EngineError::Busy(_) | EngineError::Precondition(_) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Link(LinkError::Timeout { .. }) => Status::unavailable(e.to_string()),
        EngineError::Link(_) => Status::failed_precondition(e.to_string()),
        EngineError::Host(ref h) if h.retryable => Status::unavailable(e.to_string()),
        EngineError::Host(_) | EngineError::Journal(_) => Status::internal(e.to_string()),
        EngineError::Shutdown => Status::unavailable(e.to_string()),
    }
}

/// Waits for an operation the engine runs in a task of its own. The caller going away drops
/// this wait, never the operation.
async fn finished(task: tokio::task::JoinHandle<Result<(), EngineError>>) -> Result<(), Status> {
    match task.await {
        Ok(r) => r.map_err(status_of),
        Err(e) => Err(Status::internal(format!(
            "the operation's task failed: {e}"
        ))),
    }
}

impl AgentService {
    fn status(&self) -> AgentStatus {
        let view = self.engine.view();
        let current = self.store.current().ok().flatten().unwrap_or_default();
        let previous = self.store.previous().ok().flatten().unwrap_or_default();
        AgentStatus {
            host: self.host_id.clone(),
            groups: self.groups.clone(),
            health: *self.health.borrow() as i32,
            rotation: self.rotation.state() as i32,
            current,
            previous,
            phase: view.phase.clone(),
            last_outcome: view
                .last_outcome
                .map(|o| o.as_str().to_owned())
                .unwrap_or_default(),
            last_error: match &view.problem {
                Some(p) => p.clone(),
                None => view.last_error.clone(),
            },
            slot_token: view.token,
            service_pid: self
                .service
                .child()
                .map(|c| u32::try_from(c.pid).unwrap_or(0))
                .unwrap_or(0),
            maintenance: view
                .hold
                .as_ref()
                .is_some_and(|h| h.kind == HoldKind::Maintenance),
            coordinator_connected: self.link.as_ref().is_some_and(Link::connected),
        }
    }

    fn stream(rx: mpsc::UnboundedReceiver<DeployProgress>) -> ProgressStream {
        Box::pin(UnboundedReceiverStream::new(rx).map(Ok))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(
        &self,
        req: Request<AgentStatusRequest>,
    ) -> Result<Response<AgentStatus>, Status> {
        authorize(&req, "Status")?;
        Ok(Response::new(AgentService::status(self)))
    }

    type DeployStream = ProgressStream;

    async fn deploy(
        &self,
        req: Request<DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        authorize(&req, "Deploy")?;
        let params = validate::deploy_request(req.get_ref())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tracing::info!(release = %params.release, url = %params.artifact.url, "deploy requested");
        // The deploy runs in its own task: a client that hangs up does not stop it.
        self.engine
            .deploy(params, Progress::to(tx))
            .map_err(status_of)?;
        Ok(Response::new(Self::stream(rx)))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<AgentStatus>, Status> {
        authorize(&req, "Drain")?;
        // Owned by the engine: a client that hangs up does not cancel it half done.
        let task = self
            .engine
            .drain(Purpose::Drain, "operator drain through the agent API")
            .map_err(status_of)?;
        finished(task).await?;
        Ok(Response::new(AgentService::status(self)))
    }

    async fn undrain(&self, req: Request<UndrainRequest>) -> Result<Response<AgentStatus>, Status> {
        authorize(&req, "Undrain")?;
        finished(self.engine.undrain().map_err(status_of)?).await?;
        Ok(Response::new(AgentService::status(self)))
    }

    type RollbackStream = ProgressStream;

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<Response<Self::RollbackStream>, Status> {
        authorize(&req, "Rollback")?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.engine.rollback(Progress::to(tx)).map_err(status_of)?;
        Ok(Response::new(Self::stream(rx)))
    }

    async fn list_releases(
        &self,
        req: Request<ListReleasesRequest>,
    ) -> Result<Response<ListReleasesResponse>, Status> {
        authorize(&req, "ListReleases")?;
        let list = self
            .store
            .list()
            .map_err(|e| Status::internal(format!("cannot list releases: {e}")))?;
        Ok(Response::new(ListReleasesResponse {
            releases: list
                .into_iter()
                .map(|r| ReleaseInfo {
                    id: r.id,
                    current: r.current,
                    previous: r.previous,
                    staged_at_ms: r.staged_at_ms,
                })
                .collect(),
        }))
    }

    async fn maintenance(
        &self,
        req: Request<MaintenanceRequest>,
    ) -> Result<Response<AgentStatus>, Status> {
        authorize(&req, "Maintenance")?;
        let req = req.into_inner();
        if req.reason.len() > 1024 {
            return Err(Status::invalid_argument("reason is longer than 1024 bytes"));
        }
        if req.enable {
            let reason = if req.reason.is_empty() {
                "maintenance".to_owned()
            } else {
                req.reason
            };
            let task = self
                .engine
                .drain(Purpose::Maintenance, &reason)
                .map_err(status_of)?;
            finished(task).await?;
        } else {
            finished(self.engine.undrain().map_err(status_of)?).await?;
        }
        Ok(Response::new(AgentService::status(self)))
    }

    type RunMaintenanceStream = MaintenanceStream;

    async fn run_maintenance(
        &self,
        req: Request<RunMaintenanceRequest>,
    ) -> Result<Response<Self::RunMaintenanceStream>, Status> {
        authorize_own_host(&req, "RunMaintenance", &self.host_id)?;
        let params = validate::maint_request(req.get_ref())?;
        tracing::info!(reason = %params.reason, argv = ?params.argv, "maintenance requested");
        let (tx, rx) = mpsc::unbounded_channel();
        // The run is the engine's: a client that hangs up does not stop it.
        self.engine
            .maint(params, MaintProgress::to(tx))
            .map_err(status_of)?;
        Ok(Response::new(Box::pin(
            UnboundedReceiverStream::new(rx).map(Ok),
        )))
    }
}
