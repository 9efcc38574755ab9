//! `/api/v1/federations`: federations through the node API (what `sov fl create`, `join`,
//! `status`, `ls` and `leave` call while a node runs).

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use sov_core::ContentId;
use sov_learn::federation::{Policy, Task};
use sov_node::{FederationStatus, Membership};

use crate::{ApiError, AppState, error::JsonBody};

/// `POST /api/v1/federations`: found one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateFederation {
    /// A name for people.
    pub name: String,
    /// What it learns.
    pub task: Task,
    /// How.
    pub policy: Policy,
    /// The creator's own data.
    pub member: Membership,
    /// The group (`sov gov`) whose votes decide admissions and removals.
    #[serde(default)]
    pub governance: Option<String>,
}

/// `POST /api/v1/federations/{id}/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinFederation {
    /// This member's data.
    pub member: Membership,
}

/// The answer to a create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedFederation {
    /// The federation's id.
    pub id: String,
}

fn parse_federation(id: &str) -> Result<ContentId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a federation id (a CID)")))
}

pub(crate) async fn list(
    State(s): State<AppState>,
) -> Result<Json<Vec<FederationStatus>>, ApiError> {
    Ok(Json(s.node.fl_list().await?))
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateFederation>,
) -> Result<Json<CreatedFederation>, ApiError> {
    let governance = req
        .governance
        .as_deref()
        .map(|g| {
            g.parse::<ContentId>()
                .map_err(|_| ApiError::bad_request(format!("{g:?} is not a group id (a CID)")))
        })
        .transpose()?;
    let id = s
        .node
        .fl_create(&req.name, req.task, req.policy, req.member, governance)
        .await?;
    Ok(Json(CreatedFederation { id: id.to_string() }))
}

pub(crate) async fn status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FederationStatus>, ApiError> {
    Ok(Json(s.node.fl_status(&parse_federation(&id)?).await?))
}

pub(crate) async fn join(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<JoinFederation>,
) -> Result<Json<FederationStatus>, ApiError> {
    Ok(Json(
        s.node.fl_join(parse_federation(&id)?, req.member).await?,
    ))
}

pub(crate) async fn leave(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_federation(&id)?;
    s.node.fl_leave(&id).await?;
    Ok(Json(serde_json::json!({ "left": id.to_string() })))
}
