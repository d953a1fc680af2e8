//! Batches of single-use codes: idempotent by the caller's request id, though
//! their codes are shown only once.

use futures::future::join_all;
use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, bad_fields, platform_template, reason, spawn_app};

fn generate(template_id: &str, count: i32, request_id: &str) -> pb::GenerateSingleUseCodesRequest {
    pb::GenerateSingleUseCodesRequest {
        template_id: template_id.into(),
        count,
        request_id: request_id.into(),
    }
}

/// Generates a batch, which must be answered.
async fn generated(
    app: &TestApp,
    template_id: &str,
    count: i32,
    request_id: &str,
) -> pb::GenerateSingleUseCodesResponse {
    app.coupons
        .clone()
        .generate_single_use_codes(generate(template_id, count, request_id))
        .await
        .unwrap()
        .into_inner()
}

#[sqlx::test]
async fn a_retried_batch_is_answered_with_the_same_batch_and_no_codes(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_template(platform_template("gift", 1000)).await;

    let first = generated(&app, "gift", 5, "batch-1").await;
    let retry = generated(&app, "gift", 5, "batch-1").await;

    assert_eq!(first.codes.len(), 5);
    assert!(!first.replayed);
    let batch = first.batch.unwrap();
    assert_eq!((batch.template_id.as_str(), batch.count), ("gift", 5));
    assert!(batch.create_time.is_some());
    assert!(retry.replayed);
    assert!(retry.codes.is_empty(), "codes are shown only once");
    assert_eq!(retry.batch, Some(batch.clone()));
    let (batches, codes_of_batch): (i64, i64) = sqlx::query_as(
        "select (select count(*) from code_batch), \
                (select count(*) from claim_code where code_batch_id = $1)",
    )
    .bind(batch.batch_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((batches, codes_of_batch), (1, 5));

    // The codes shown are the batch's: each claims the template once.
    app.register("alice").await;
    app.register("bob").await;
    let claim = |account: &str, code: &str| pb::ClaimCouponRequest {
        account_id: account.into(),
        code: code.into(),
    };
    let mut coupons = app.coupons.clone();
    let claimed = coupons
        .claim_coupon(claim("alice", &first.codes[0]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.coupon.unwrap().template_id, "gift");
    let again = coupons
        .claim_coupon(claim("bob", &first.codes[0]))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&again),
        "CODE_ALREADY_USED",
        "a single-use code is used once"
    );
}

#[sqlx::test]
async fn a_request_id_reused_with_other_content_is_already_exists(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("gift", 1000)).await;
    app.create_template(platform_template("other", 1000)).await;
    let mut coupons = app.coupons.clone();
    let first = generated(&app, "gift", 5, "batch-1").await;

    let other_count = coupons
        .generate_single_use_codes(generate("gift", 6, "batch-1"))
        .await
        .unwrap_err();
    let other_template = coupons
        .generate_single_use_codes(generate("other", 5, "batch-1"))
        .await
        .unwrap_err();

    for refused in [&other_count, &other_template] {
        assert_eq!(refused.code(), Code::AlreadyExists);
        assert_eq!(reason(refused), "IDEMPOTENCY_KEY_REUSED");
    }
    let metadata = other_template.get_details_error_info().unwrap().metadata;
    assert_eq!(metadata["template_id"], "other");
    assert_eq!(metadata["request_id"], "batch-1");
    assert_eq!(metadata["batch_id"], first.batch.unwrap().batch_id.to_string());
}

#[sqlx::test]
async fn a_batch_needs_a_well_formed_request_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("gift", 1000)).await;
    let mut coupons = app.coupons.clone();

    let missing = coupons
        .generate_single_use_codes(generate("gift", 5, ""))
        .await
        .unwrap_err();
    let malformed = coupons
        .generate_single_use_codes(generate("gift", 5, "not a key"))
        .await
        .unwrap_err();

    for refused in [&missing, &malformed] {
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(refused), ["request_id"]);
    }
}

#[sqlx::test]
async fn concurrent_retries_of_one_request_id_generate_one_batch(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = options.max_connections(16).connect_with(connect).await.unwrap();
    let app = spawn_app(pool.clone()).await;
    app.create_template(platform_template("gift", 1000)).await;

    for round in 0..5 {
        let request_id = format!("batch-{round}");
        let calls = (0..20).map(|_| {
            let mut coupons = app.coupons.clone();
            let request = generate("gift", 500, &request_id);
            async move { coupons.generate_single_use_codes(request).await }
        });
        let answers: Vec<_> = join_all(calls)
            .await
            .into_iter()
            .map(|answer| answer.expect("every retry is answered").into_inner())
            .collect();

        let generated: Vec<_> = answers.iter().filter(|a| !a.replayed).collect();
        assert_eq!(generated.len(), 1, "round {round}");
        assert_eq!(generated[0].codes.len(), 500);
        assert!(answers.iter().all(|a| a.batch == generated[0].batch));
        assert!(answers.iter().filter(|a| a.replayed).all(|a| a.codes.is_empty()));
    }
    let (batches, codes): (i64, i64) =
        sqlx::query_as("select (select count(*) from code_batch), (select count(*) from claim_code)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((batches, codes), (5, 5 * 500));
}
