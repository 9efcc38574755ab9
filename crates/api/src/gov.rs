//! `/api/v1/gov`: governance through the node API (what `sov gov create`, `propose`, `vote`,
//! `ls` and `show` call while a node runs).

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::header,
    response::Response,
};
use serde::{Deserialize, Serialize};
use sov_core::ContentId;
use sov_node::{
    GroupStatus, ProposalStatus,
    gov::{ActionSpec, member},
};

use crate::{ApiError, AppState, error::JsonBody};

/// A member as a create request names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewMember {
    /// Its did:key.
    pub did: String,
    /// Its role (committee; default `member`).
    #[serde(default)]
    pub role: Option<String>,
    /// Its weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `POST /api/v1/gov/groups`: found a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroup {
    /// Its name (promoted models are served under it).
    pub name: String,
    /// Its members (this node is added if missing).
    pub members: Vec<NewMember>,
    /// When a proposal passes (default `majority`).
    #[serde(default)]
    pub rule: Option<String>,
    /// How long a proposal stays open by default, in seconds (default a week).
    #[serde(default)]
    pub voting_secs: Option<u64>,
}

/// `POST /api/v1/gov/proposals`: propose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Propose {
    /// The group.
    pub group: String,
    /// What to do.
    pub action: ActionSpec,
    /// How long it stays open, in seconds (default: the group's).
    #[serde(default)]
    pub voting_secs: Option<u64>,
}

/// `POST /api/v1/gov/proposals/{id}/votes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CastVote {
    /// yes, no or abstain.
    pub choice: String,
}

/// `GET /api/v1/gov/proposals?group=ID`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Only this group's.
    pub group: Option<String>,
}

/// A week: how long proposals stay open unless the group says otherwise.
pub const DEFAULT_VOTING_SECS: u64 = 7 * 86_400;

fn cid(id: &str, what: &str) -> Result<ContentId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!("{}: not a {what} id (a CID)", sov_core::quote(id)))
    })
}

pub(crate) async fn groups(State(s): State<AppState>) -> Result<Json<Vec<GroupStatus>>, ApiError> {
    Ok(Json(s.node.gov_groups().await?))
}

pub(crate) async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateGroup>,
) -> Result<Json<GroupStatus>, ApiError> {
    let mut members = Vec::with_capacity(req.members.len());
    for m in &req.members {
        let did = m.did.parse().map_err(|_| {
            ApiError::bad_request(format!("{}: not a did:key", sov_core::quote(&m.did)))
        })?;
        members.push(member(did, m.role.as_deref(), m.weight));
    }
    Ok(Json(
        s.node
            .gov_create(
                &req.name,
                members,
                req.rule.as_deref().unwrap_or("majority"),
                req.voting_secs.unwrap_or(DEFAULT_VOTING_SECS),
            )
            .await?,
    ))
}

pub(crate) async fn group(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GroupStatus>, ApiError> {
    Ok(Json(s.node.gov_status(&cid(&id, "group")?).await?))
}

pub(crate) async fn proposals(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ProposalStatus>>, ApiError> {
    let group = q.group.as_deref().map(|g| cid(g, "group")).transpose()?;
    Ok(Json(s.node.gov_proposals(group.as_ref()).await?))
}

pub(crate) async fn propose(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<Propose>,
) -> Result<Json<ProposalStatus>, ApiError> {
    let group = cid(&req.group, "group")?;
    let action = req.action.to_action()?;
    Ok(Json(
        s.node.gov_propose(&group, action, req.voting_secs).await?,
    ))
}

pub(crate) async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProposalStatus>, ApiError> {
    Ok(Json(s.node.gov_show(&cid(&id, "proposal")?).await?))
}

pub(crate) async fn vote(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CastVote>,
) -> Result<Json<ProposalStatus>, ApiError> {
    let choice = req
        .choice
        .parse::<sov_node::gov::Choice>()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(s.node.gov_vote(&cid(&id, "proposal")?, choice).await?))
}

pub(crate) async fn certificate(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = s.node.gov_certificate(&cid(&id, "proposal")?).await?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/vnd.ipld.dag-cbor")
        .body(Body::from(bytes))
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
