//! The typed encore.v1.Scoring API.

use encore_proto::encore::v1::scoring_client::ScoringClient;
use encore_proto::encore::v1::*;
use tonic::transport::Channel;

use crate::fixtures::*;

pub async fn client(addr: std::net::SocketAddr) -> ScoringClient<Channel> {
    ScoringClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub fn churn_request(ids: &[i64]) -> ScoreChurnRequest {
    ScoreChurnRequest {
        user_ids: ids.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn score_churn_gives_horizons_tiers_segments_and_a_flagged_fallback() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let response = client
        .score_churn(churn_request(&[100, 7, 123_456, 100]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (response.model_name.as_str(), response.model_version),
        ("churn", 1)
    );
    assert_eq!(response.variant, "");
    let ids: Vec<i64> = response.scores.iter().map(|s| s.user_id).collect();
    assert_eq!(
        ids,
        [100, 7, 123_456, 100],
        "request order, duplicates kept"
    );
    for s in &response.scores {
        assert!(s.p7 <= s.p15 && s.p15 <= s.p30, "{s:?}");
    }
    let user100 = &response.scores[0];
    let p = sigmoid(churn_features(100).iter().sum());
    assert!((user100.p30 - p).abs() < 1e-6 && (user100.p7 - 0.5 * p).abs() < 1e-6);
    assert_eq!(user100.risk_tier(), RiskTier::High);
    let segment = user100.segment.as_ref().unwrap();
    assert_eq!(
        (segment.lifecycle.as_str(), segment.value_tier.as_str()),
        ("core", "high")
    );
    assert!(!user100.fallback);
    assert_eq!(response.scores[3], *user100);

    let user7 = &response.scores[1];
    assert_eq!(user7.risk_tier(), RiskTier::Low);
    assert_eq!(user7.segment.as_ref().unwrap().lifecycle, "new");

    let unknown = &response.scores[2];
    assert!(unknown.fallback);
    assert_eq!((unknown.p7, unknown.p15, unknown.p30), (0.05, 0.1, 0.2));
    assert_eq!(unknown.segment.as_ref().unwrap().lifecycle, "");
    // A user near the middle lands in the medium tier (p30 ≈ 0.5).
    let middle = client
        .score_churn(churn_request(&[45]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(middle.scores[0].risk_tier(), RiskTier::Medium, "{middle:?}");
}

#[tokio::test]
async fn recommend_ranks_excludes_and_falls_back_to_popular_items() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let ask = |user_id: i64, k: u32, exclude: Vec<i64>, device: &str| RecommendRequest {
        user_id,
        k,
        exclude_item_ids: exclude,
        context: Some(Context {
            hour: 8,
            device: device.into(),
        }),
        ..Default::default()
    };
    let r = client
        .recommend(ask(2, 5, vec![], "mobile"))
        .await
        .unwrap()
        .into_inner();
    let items: Vec<i64> = r.items.iter().map(|i| i.item_id).collect();
    assert_eq!(items, expected_items(2, 5));
    assert!(!r.fallback);
    assert_eq!((r.model_name.as_str(), r.model_version), ("recommend", 1));
    assert!(r.items.windows(2).all(|w| w[0].score >= w[1].score));

    // Excluded items are skipped and the list is still k long.
    let top = expected_items(2, 7);
    let r = client
        .recommend(ask(2, 5, vec![top[0], top[2]], "mobile"))
        .await
        .unwrap()
        .into_inner();
    let items: Vec<i64> = r.items.iter().map(|i| i.item_id).collect();
    assert_eq!(items, [top[1], top[3], top[4], top[5], top[6]]);

    // k = 0 means 10.
    let r = client
        .recommend(ask(1, 0, vec![], ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 10);

    // Cold start: popular for the device, else overall; excluded still honoured.
    let r = client
        .recommend(ask(4242, 2, vec![1050], "Car"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.fallback);
    let items: Vec<i64> = r.items.iter().map(|i| i.item_id).collect();
    assert_eq!(items, [1051, 1052]);
    let r = client
        .recommend(ask(4242, 10, vec![], "tv"))
        .await
        .unwrap()
        .into_inner();
    let items: Vec<i64> = r.items.iter().map(|i| i.item_id).collect();
    assert_eq!(
        items,
        [1001, 1002, 1003, 1004, 1005],
        "fewer than k when the list runs out"
    );
}

#[tokio::test]
async fn typed_api_rejects_bad_input_naming_it() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let status = client.score_churn(churn_request(&[])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("user_ids"), "{status:?}");
    let too_many: Vec<i64> = (0..10_001).collect();
    let status = client
        .score_churn(churn_request(&too_many))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut wrong = churn_request(&[1]);
    wrong.model_name = "recommend".into();
    let status = client.score_churn(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("not 'churn'"), "{status:?}");
    let mut missing = churn_request(&[1]);
    missing.model_version = "3".into();
    let status = client.score_churn(missing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let bad = [
        (
            RecommendRequest {
                user_id: 1,
                k: 501,
                ..Default::default()
            },
            "k must be at most 500",
        ),
        (
            RecommendRequest {
                user_id: 1,
                context: Some(Context {
                    hour: 24,
                    device: String::new(),
                }),
                ..Default::default()
            },
            "hour must be 0 to 23",
        ),
        (
            RecommendRequest {
                user_id: 1,
                exclude_item_ids: vec![0; 10_001],
                ..Default::default()
            },
            "exclude_item_ids",
        ),
    ];
    for (request, needle) in bad {
        let status = client.recommend(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "'{needle}' not in {status:?}"
        );
    }
}

/// The server's exact item index answers as the module's `forward` does;
/// a module whose `items()` disagrees with `forward`, one without `items()`
/// and a server with the index turned off all keep `forward`.
#[tokio::test]
async fn recommend_item_index_answers_as_forward_and_is_refused_when_it_disagrees() {
    let cases = [
        (RecommendModule::Indexed, true, Some(ITEMS)),
        (RecommendModule::Plain, true, Some(0)),
        (RecommendModule::Wrong, true, Some(0)),
        (RecommendModule::Indexed, false, None),
    ];
    for (module, item_index, indexed) in cases {
        let registry = tempfile::tempdir().unwrap();
        export_recommend_as(registry.path(), 1, module);
        let server = serve_with(registry.path(), |c| c.item_index = item_index).await;
        let case = format!("{module:?}, item_index {item_index}");
        let text = metrics(server.addr()).await;
        let gauge = text
            .lines()
            .find(|l| {
                l.starts_with("encore_model_server_item_index_items{")
                    && l.contains("model=\"recommend\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap());
        assert_eq!(gauge, indexed, "{case}");

        let mut client = client(server.addr()).await;
        let contexts = [
            Some(Context {
                hour: 8,
                device: "mobile".into(),
            }),
            Some(Context {
                hour: 23,
                device: "car".into(),
            }),
            None,
        ];
        for user_id in 1..=8 {
            for k in [1u32, 5, 16, 25] {
                for context in &contexts {
                    let r = client
                        .recommend(RecommendRequest {
                            user_id,
                            k,
                            context: context.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let items: Vec<i64> = r.items.iter().map(|i| i.item_id).collect();
                    assert_eq!(items, expected_items(user_id, k as usize), "{case}");
                    for item in &r.items {
                        // Item 1000 + i scores (i + 1) / ITEMS.
                        let expected = (item.item_id - 1000 + 1) as f32 / ITEMS as f32;
                        assert!((item.score - expected).abs() < 1e-6, "{case}: {item:?}");
                    }
                }
            }
        }
    }
}
