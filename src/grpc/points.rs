//! The `loyalty.v1.Points` service: adapts the wire to [`Points`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::call;
use crate::clock::Clock;
use crate::domain::ids::{AccountId, CampaignId, CategoryId, OrderId, PostId, ProductId, ReviewId};
use crate::domain::points::{
    Award, Bonus, CapReason, ConfirmedOrder, EntryQuery, OrderReversal, PointEntry, Points, PointsSource,
    Post, ReversalReason, Review, Visit, VisitChannel,
};
use crate::domain::text;
use crate::error::{Error, FieldContext};
use crate::grpc::convert::{
    PageQuery, date, event_instant, money, optional_instant, optional_instant_not_future, page_size,
    required_enum, timestamp,
};
use crate::pb;

/// The gRPC face of points operations.
pub struct PointsService {
    points: Points,
    clock: Arc<dyn Clock>,
}

impl PointsService {
    /// Serves `points`; `clock` bounds how far in the future instants may be.
    pub fn new(points: Points, clock: Arc<dyn Clock>) -> Self {
        Self { points, clock }
    }
}

pub(crate) fn source_pb(source: PointsSource) -> pb::PointsSource {
    match source {
        PointsSource::Order => pb::PointsSource::Order,
        PointsSource::CategoryVariety => pb::PointsSource::CategoryVariety,
        PointsSource::Review => pb::PointsSource::Review,
        PointsSource::Visit => pb::PointsSource::Visit,
        PointsSource::Post => pb::PointsSource::Post,
        PointsSource::Bonus => pb::PointsSource::Bonus,
    }
}

fn source_domain(source: pb::PointsSource) -> Option<PointsSource> {
    Some(match source {
        pb::PointsSource::Unspecified => return None,
        pb::PointsSource::Order => PointsSource::Order,
        pb::PointsSource::CategoryVariety => PointsSource::CategoryVariety,
        pb::PointsSource::Review => PointsSource::Review,
        pb::PointsSource::Visit => PointsSource::Visit,
        pb::PointsSource::Post => PointsSource::Post,
        pb::PointsSource::Bonus => PointsSource::Bonus,
    })
}

pub(crate) fn cap_reason_pb(reason: Option<CapReason>) -> pb::CapReason {
    match reason {
        None => pb::CapReason::Unspecified,
        Some(CapReason::DailyCap) => pb::CapReason::DailyCap,
        Some(CapReason::MonthlyCap) => pb::CapReason::MonthlyCap,
        Some(CapReason::BelowMinimum) => pb::CapReason::BelowMinimum,
        Some(CapReason::CurrencyNotEligible) => pb::CapReason::CurrencyNotEligible,
        Some(CapReason::MemberFlagged) => pb::CapReason::MemberFlagged,
    }
}

fn entry_pb(entry: PointEntry) -> pb::PointEntry {
    pb::PointEntry {
        entry_id: entry.entry_id,
        account_id: entry.account_id.to_string(),
        source: source_pb(entry.source).into(),
        reference: entry.reference,
        points: entry.points,
        cap_reason: cap_reason_pb(entry.cap_reason).into(),
        occurred_at: Some(timestamp(entry.occurred_at)),
        local_date: Some(date(entry.local_date)),
        recorded_at: Some(timestamp(entry.recorded_at)),
        reverses_entry_id: entry.reverses_entry_id.unwrap_or(0),
    }
}

/// The one entry of a single-entry award (review, visit, post, bonus).
fn single_entry(award: Award) -> Result<(Option<pb::PointEntry>, bool), Status> {
    let replayed = award.replayed;
    match <[PointEntry; 1]>::try_from(award.entries) {
        Ok([entry]) => Ok((Some(entry_pb(entry)), replayed)),
        Err(entries) => {
            Err(Error::from(anyhow::anyhow!("expected one entry, found {}", entries.len())).into())
        }
    }
}

/// Keeps ledger page tokens apart from other listings' tokens.
const PAGE_KIND: &str = "entries.v1";

#[tonic::async_trait]
impl pb::points_server::Points for PointsService {
    async fn record_confirmed_order(
        &self,
        request: Request<pb::RecordConfirmedOrderRequest>,
    ) -> Result<Response<pb::RecordConfirmedOrderResponse>, Status> {
        let request = request.into_inner();
        let products = request
            .products
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok((
                    ProductId::parse(&p.product_id).field_with(|| format!("products[{i}].product_id"))?,
                    CategoryId::parse(&p.category_id).field_with(|| format!("products[{i}].category_id"))?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        let order_id = OrderId::parse(&request.order_id).field("order_id")?;
        call::concerns([("account_id", &account_id), ("order_id", &order_id)]);
        let order = ConfirmedOrder::new(
            account_id,
            order_id,
            money(request.amount, "amount")?,
            event_instant(request.confirmed_at, "confirmed_at", self.clock.now())?,
            products,
        )?;
        let award = self.points.record_order(&order).await?;
        Ok(Response::new(pb::RecordConfirmedOrderResponse {
            points_awarded: award.points(),
            replayed: award.replayed,
            entries: award.entries.into_iter().map(entry_pb).collect(),
            request_id: call::request_id(),
        }))
    }

    async fn reverse_order(
        &self,
        request: Request<pb::ReverseOrderRequest>,
    ) -> Result<Response<pb::ReverseOrderResponse>, Status> {
        let request = request.into_inner();
        let reason = match required_enum::<pb::ReversalReason>(request.reason, "reason")? {
            pb::ReversalReason::Returned => ReversalReason::Returned,
            pb::ReversalReason::Fraud => ReversalReason::Fraud,
            pb::ReversalReason::Unspecified => return Err(Error::invalid("reason", "is required").into()),
        };
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        let order_id = OrderId::parse(&request.order_id).field("order_id")?;
        call::concerns([("account_id", &account_id), ("order_id", &order_id)]);
        let reversal = OrderReversal {
            account_id,
            order_id,
            reason,
            reversed_at: event_instant(request.reversed_at, "reversed_at", self.clock.now())?,
        };
        let award = self.points.reverse_order(&reversal).await?;
        Ok(Response::new(pb::ReverseOrderResponse {
            points_reversed: award.points(),
            replayed: award.replayed,
            entries: award.entries.into_iter().map(entry_pb).collect(),
            request_id: call::request_id(),
        }))
    }

    async fn record_review(
        &self,
        request: Request<pb::RecordReviewRequest>,
    ) -> Result<Response<pb::RecordReviewResponse>, Status> {
        let request = request.into_inner();
        let review = Review {
            account_id: AccountId::parse(&request.account_id).field("account_id")?,
            review_id: ReviewId::parse(&request.review_id).field("review_id")?,
            order_id: OrderId::parse(&request.order_id).field("order_id")?,
            product_id: ProductId::parse(&request.product_id).field("product_id")?,
            published_at: event_instant(request.published_at, "published_at", self.clock.now())?,
        };
        call::concerns([
            ("account_id", &review.account_id),
            ("review_id", &review.review_id),
            ("order_id", &review.order_id),
            ("product_id", &review.product_id),
        ]);
        let (entry, replayed) = single_entry(self.points.record_review(&review).await?)?;
        Ok(Response::new(pb::RecordReviewResponse {
            entry,
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn record_visit(
        &self,
        request: Request<pb::RecordVisitRequest>,
    ) -> Result<Response<pb::RecordVisitResponse>, Status> {
        let request = request.into_inner();
        let channel = match required_enum::<pb::VisitChannel>(request.channel, "channel")? {
            pb::VisitChannel::Web => VisitChannel::Web,
            pb::VisitChannel::App => VisitChannel::App,
            pb::VisitChannel::Unspecified => return Err(Error::invalid("channel", "is required").into()),
        };
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let visit = Visit {
            account_id,
            channel,
            visited_at: event_instant(request.visited_at, "visited_at", self.clock.now())?,
        };
        let (entry, replayed) = single_entry(self.points.record_visit(&visit).await?)?;
        Ok(Response::new(pb::RecordVisitResponse {
            entry,
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn record_post(
        &self,
        request: Request<pb::RecordPostRequest>,
    ) -> Result<Response<pb::RecordPostResponse>, Status> {
        let request = request.into_inner();
        let post = Post {
            account_id: AccountId::parse(&request.account_id).field("account_id")?,
            post_id: PostId::parse(&request.post_id).field("post_id")?,
            published_at: event_instant(request.published_at, "published_at", self.clock.now())?,
        };
        call::concerns([("account_id", &post.account_id), ("post_id", &post.post_id)]);
        let (entry, replayed) = single_entry(self.points.record_post(&post).await?)?;
        Ok(Response::new(pb::RecordPostResponse {
            entry,
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn grant_bonus(
        &self,
        request: Request<pb::GrantBonusRequest>,
    ) -> Result<Response<pb::GrantBonusResponse>, Status> {
        let request = request.into_inner();
        let now = self.clock.now();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        let campaign_id = CampaignId::parse(&request.campaign_id).field("campaign_id")?;
        call::concerns([("account_id", &account_id), ("campaign_id", &campaign_id)]);
        text::check(&request.description, 500).field("description")?;
        let bonus = Bonus {
            account_id,
            campaign_id,
            points: request.points,
            description: request.description,
            granted_at: optional_instant_not_future(request.granted_at, "granted_at", now)?.unwrap_or(now),
        };
        let (entry, replayed) = single_entry(self.points.grant_bonus(&bonus).await?)?;
        Ok(Response::new(pb::GrantBonusResponse {
            entry,
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let balance = self.points.balance(&account_id).await?;
        Ok(Response::new(pb::GetBalanceResponse {
            account_id: balance.account_id.to_string(),
            window_points: balance.window_points,
            window_start: Some(date(balance.window_start)),
            window_end: Some(date(balance.window_end)),
            current_month_points: balance.current_month_points,
            lifetime_points: balance.lifetime_points,
            points_leaving_at_next_evaluation: balance.leaving_points,
            leaving_month: Some(date(balance.leaving_month)),
        }))
    }

    async fn list_point_entries(
        &self,
        request: Request<pb::ListPointEntriesRequest>,
    ) -> Result<Response<pb::ListPointEntriesResponse>, Status> {
        let request = request.into_inner();
        let sources = request
            .sources
            .iter()
            .enumerate()
            .map(|(i, &value)| {
                let field = format!("sources[{i}]");
                source_domain(required_enum(value, &field)?)
                    .ok_or_else(|| Error::invalid(&field, "is required"))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let start_time = optional_instant(request.start_time, "start_time")?;
        let end_time = optional_instant(request.end_time, "end_time")?;
        let page_query = PageQuery::new(PAGE_KIND)
            .with("account_id", &account_id)
            .with_set("sources", sources.iter().map(|s| s.as_str()))
            .with_instant("start_time", start_time)
            .with_instant("end_time", end_time);
        let query = EntryQuery {
            page_size: page_size(request.page_size)?,
            before_entry_id: page_query.parse(&request.page_token)?,
            account_id,
            sources,
            start_time,
            end_time,
        };
        let page = self.points.list_entries(&query).await?;
        Ok(Response::new(pb::ListPointEntriesResponse {
            entries: page.entries.into_iter().map(entry_pb).collect(),
            next_page_token: page
                .next_before_entry_id
                .map(|id| page_query.token(&id))
                .unwrap_or_default(),
        }))
    }
}
