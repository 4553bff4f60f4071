//! `encore.v1.Scoring`: typed churn scores and recommendations over the same
//! deployments as the KServe service (proto/proto/encore/v1/scoring.proto).

use std::collections::HashSet;
use std::sync::Arc;

use encore_proto::encore::v1::scoring_server::Scoring;
use encore_proto::encore::v1::{
    ChurnScore, RecommendMode, RecommendRequest, RecommendResponse, RiskTier, ScoreChurnRequest,
    ScoreChurnResponse, ScoredItem, Segment,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::contract::{DEFAULT_K, MAX_K};
use crate::error::{Error, Result};
use crate::model::RecommendQuery;
use crate::request::{deadline, shadow};
use crate::store::ModelStore;

/// Most users in one ScoreChurn request.
pub const MAX_CHURN_USERS: usize = 10_000;
/// Most excluded items in one Recommend request.
pub const MAX_EXCLUDED: usize = 10_000;

/// The typed scoring service.
pub struct ScoringService {
    store: Arc<ModelStore>,
}

impl ScoringService {
    /// Serves the models of `store`.
    pub fn new(store: Arc<ModelStore>) -> Self {
        Self { store }
    }
}

fn tier(name: &str) -> RiskTier {
    match name {
        "high" => RiskTier::High,
        "medium" => RiskTier::Medium,
        _ => RiskTier::Low,
    }
}

fn or_default<'a>(name: &'a str, default: &'a str) -> &'a str {
    if name.is_empty() { default } else { name }
}

impl ScoringService {
    async fn score_churn(
        &self,
        r: ScoreChurnRequest,
        deadline: Option<std::time::Instant>,
        served: &mut (String, String),
    ) -> Result<ScoreChurnResponse> {
        if r.user_ids.is_empty() || r.user_ids.len() > MAX_CHURN_USERS {
            return Err(Error::InvalidArgument(format!(
                "user_ids: give 1 to {MAX_CHURN_USERS} ids, got {}",
                r.user_ids.len()
            )));
        }
        let name = or_default(&r.model_name, "churn");
        let deployment = self.store.deployment(name)?;
        let selection =
            deployment.select(&r.model_version, r.user_ids[0] as u64, &self.store.registry)?;
        let model = selection.model;
        *served = (
            model.manifest.version.to_string(),
            selection.variant.clone(),
        );
        if let Some(s) = selection.shadow {
            let ids = r.user_ids.clone();
            shadow(self.store.metrics().clone(), name.to_owned(), async move {
                s.churn(&ids, None).await
            });
        }
        let scores = model.churn(&r.user_ids, deadline).await?;
        let tiers = model.risk_tiers(&scores.horizons);
        let horizon = |days: &str, i: usize| {
            model
                .manifest
                .outputs
                .iter()
                .position(|o| o.name == format!("churn_{days}d"))
                .map_or(f32::NAN, |h| scores.horizons[h][i])
        };
        let scores = r
            .user_ids
            .iter()
            .enumerate()
            .map(|(i, &user_id)| {
                let segment = scores.rows[i].map(|row| {
                    let (lifecycle, value_tier) = model.snapshot.segment(row);
                    Segment {
                        lifecycle: lifecycle.to_owned(),
                        value_tier: value_tier.to_owned(),
                    }
                });
                ChurnScore {
                    user_id,
                    p7: horizon("7", i),
                    p15: horizon("15", i),
                    p30: horizon("30", i),
                    risk_tier: tier(tiers[i]).into(),
                    segment: Some(segment.unwrap_or_default()),
                    fallback: scores.fallback[i],
                }
            })
            .collect();
        Ok(ScoreChurnResponse {
            scores,
            model_name: model.manifest.name.clone(),
            model_version: model.manifest.version,
            variant: selection.variant,
        })
    }

    async fn recommend(
        &self,
        r: RecommendRequest,
        deadline: Option<std::time::Instant>,
        served: &mut (String, String),
    ) -> Result<RecommendResponse> {
        let k = if r.k == 0 { DEFAULT_K } else { r.k as usize };
        if k > MAX_K {
            return Err(Error::InvalidArgument(format!(
                "k must be at most {MAX_K}, got {k}"
            )));
        }
        if r.exclude_item_ids.len() > MAX_EXCLUDED {
            return Err(Error::InvalidArgument(format!(
                "exclude_item_ids: at most {MAX_EXCLUDED} ids, got {}",
                r.exclude_item_ids.len()
            )));
        }
        let (hour, device) = r
            .context
            .map_or((-1, String::new()), |c| (c.hour, c.device.to_lowercase()));
        let name = or_default(&r.model_name, "recommend");
        let deployment = self.store.deployment(name)?;
        let selection =
            deployment.select(&r.model_version, r.user_id as u64, &self.store.registry)?;
        let model = selection.model;
        *served = (
            model.manifest.version.to_string(),
            selection.variant.clone(),
        );
        let exclude: HashSet<i64> = r.exclude_item_ids.iter().copied().collect();
        let query = RecommendQuery {
            user_id: r.user_id,
            hour,
            device: &device,
            exclude: &exclude,
        };
        if r.mode == RecommendMode::ReturnPlaylist as i32 {
            let share = if r.replay_share == 0.0 {
                0.5
            } else {
                r.replay_share
            };
            let (items, fallback) = model.return_playlist(&query, k, share, deadline).await?;
            return Ok(RecommendResponse {
                items: items
                    .into_iter()
                    .map(|(item_id, score, reason)| ScoredItem {
                        item_id,
                        score,
                        reason: reason.into(),
                    })
                    .collect(),
                fallback,
                model_name: model.manifest.name.clone(),
                model_version: model.manifest.version,
                variant: selection.variant,
            });
        }
        if RecommendMode::try_from(r.mode).is_err() {
            return Err(Error::InvalidArgument(format!(
                "mode {} is not a known RecommendMode",
                r.mode
            )));
        }
        let mut recs = model.recommend(&[query], k, deadline).await?;
        if let Some(s) = selection.shadow {
            let (user_id, device, exclude) = (r.user_id, device.clone(), exclude.clone());
            shadow(self.store.metrics().clone(), name.to_owned(), async move {
                let query = RecommendQuery {
                    user_id,
                    hour,
                    device: &device,
                    exclude: &exclude,
                };
                s.recommend(&[query], k, None).await
            });
        }
        let recs = recs.pop().unwrap_or_else(|| crate::model::Recommendations {
            items: Vec::new(),
            fallback: true,
        });
        Ok(RecommendResponse {
            items: recs
                .items
                .into_iter()
                .map(|(item_id, score)| ScoredItem {
                    item_id,
                    score,
                    reason: if recs.fallback { "popular" } else { "model" }.into(),
                })
                .collect(),
            fallback: recs.fallback,
            model_name: model.manifest.name.clone(),
            model_version: model.manifest.version,
            variant: selection.variant,
        })
    }

    fn timer(
        &self,
        name: &str,
        default: &str,
        method: &'static str,
    ) -> Option<crate::metrics::RequestTimer<'_>> {
        let name = or_default(name, default);
        self.store
            .deployment(name)
            .ok()
            .map(|_| self.store.metrics().request(name, method))
    }
}

#[tonic::async_trait]
impl Scoring for ScoringService {
    #[instrument(level = "debug", skip_all, fields(model = %request.get_ref().model_name, users = request.get_ref().user_ids.len()))]
    async fn score_churn(
        &self,
        request: Request<ScoreChurnRequest>,
    ) -> Result<Response<ScoreChurnResponse>, Status> {
        let deadline = deadline(request.metadata())?;
        let r = request.into_inner();
        let timer = self.timer(&r.model_name, "churn", "ScoreChurn");
        let mut served = Default::default();
        let result = self.score_churn(r, deadline, &mut served).await;
        if let Some(timer) = timer {
            timer.finish_result(&served, &result);
        }
        Ok(Response::new(result?))
    }

    #[instrument(level = "debug", skip_all, fields(model = %request.get_ref().model_name, user_id = request.get_ref().user_id))]
    async fn recommend(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<RecommendResponse>, Status> {
        let deadline = deadline(request.metadata())?;
        let r = request.into_inner();
        let timer = self.timer(&r.model_name, "recommend", "Recommend");
        let mut served = Default::default();
        let result = self.recommend(r, deadline, &mut served).await;
        if let Some(timer) = timer {
            timer.finish_result(&served, &result);
        }
        Ok(Response::new(result?))
    }
}
