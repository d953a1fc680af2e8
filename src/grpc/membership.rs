//! The `loyalty.v1.Membership` service: adapts the wire to [`Members`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use chrono::{Datelike, NaiveDate};

use crate::call;
use crate::clock::Clock;
use crate::domain::ids::{AccountId, TemplateId};
use crate::domain::levels::{Benefits, Level};
use crate::domain::members::{FraudReason, Member, Members};
use crate::domain::membership::{LevelPeriod, Membership, Reward};
use crate::domain::money::Currency;
use crate::error::{Error, FieldContext};
use crate::grpc::convert::{
    PageQuery, birthday, birthday_pb, date, event_instant, money, money_pb, page_size, required_enum,
    required_instant, timestamp,
};
use crate::grpc::coupons::{coupon_pb, level_domain, level_pb};
use crate::pb;

/// The gRPC face of member and membership-level operations.
pub struct MembershipService {
    members: Members,
    membership: Membership,
    program_currency: Currency,
    clock: Arc<dyn Clock>,
}

impl MembershipService {
    /// Serves `members` and `membership`; `clock` bounds how far in the future
    /// instants may be.
    pub fn new(
        members: Members,
        membership: Membership,
        program_currency: Currency,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            members,
            membership,
            program_currency,
            clock,
        }
    }

    fn benefits_pb(&self, benefits: Benefits) -> pb::Benefits {
        pb::Benefits {
            birthday_reward: benefits.birthday_reward,
            anniversary_reward: benefits.anniversary_reward,
            level_up_reward: benefits.level_up_reward,
            top_weekly_brands: benefits.top_weekly_brands,
            member_discount_basis_points: i32::try_from(benefits.member_discount_basis_points)
                .unwrap_or(i32::MAX),
            exclusive_member_prices: benefits.exclusive_member_prices,
            exclusive_event_benefits: benefits.exclusive_event_benefits,
            fast_refund_limit: benefits
                .fast_refund_limit_minor
                .map(|limit| money_pb(limit, self.program_currency)),
            limited_daily_coupons: benefits.limited_daily_coupons,
        }
    }

    async fn rewards_pb(&self) -> Result<Vec<pb::RewardTemplates>, Error> {
        let mut grouped: Vec<pb::RewardTemplates> = Vec::new();
        for (reward, template) in self.membership.reward_templates().await? {
            let (kind, level) = match reward {
                Reward::LevelUp(level) => (pb::RewardKind::LevelUp, level_pb(level)),
                Reward::Birthday => (pb::RewardKind::Birthday, pb::Level::Unspecified),
                Reward::Anniversary => (pb::RewardKind::Anniversary, pb::Level::Unspecified),
                Reward::DiamondDaily => (pb::RewardKind::DiamondDaily, pb::Level::Unspecified),
            };
            match grouped
                .iter_mut()
                .find(|g| g.reward == kind as i32 && g.level == level as i32)
            {
                Some(group) => group.template_ids.push(template.to_string()),
                None => grouped.push(pb::RewardTemplates {
                    reward: kind.into(),
                    level: level.into(),
                    template_ids: vec![template.to_string()],
                }),
            }
        }
        Ok(grouped)
    }
}

fn period_pb(period: LevelPeriod) -> pb::LevelPeriod {
    pb::LevelPeriod {
        level: level_pb(period.level).into(),
        effective_from: Some(timestamp(period.effective_from)),
        effective_to: period.effective_to.map(timestamp),
        window_points: period.window_points,
        evaluation_month: period.evaluation_month.map(date),
    }
}

/// A calendar date from the wire; with `day_ignored`, the first of its month.
fn calendar_date(value: Option<pb::Date>, field: &str, day_ignored: bool) -> Result<NaiveDate, Error> {
    let value = value.ok_or_else(|| Error::invalid(field, "is required"))?;
    let day = if day_ignored { 1 } else { value.day };
    u32::try_from(value.month)
        .ok()
        .zip(u32::try_from(day).ok())
        .and_then(|(month, day)| NaiveDate::from_ymd_opt(value.year, month, day))
        .filter(|d| (1..=9999).contains(&d.year()))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("{}-{}-{} is not a calendar date", value.year, value.month, day),
            )
        })
}

fn member_pb(member: Member) -> pb::Member {
    let (fraud_flagged_at, fraud_reason) = match member.fraud {
        Some(flag) => (Some(timestamp(flag.flagged_at)), flag.reason),
        None => (None, String::new()),
    };
    pb::Member {
        account_id: member.account_id.to_string(),
        registered_at: Some(timestamp(member.registered_at)),
        birthday: member.birthday.as_ref().map(birthday_pb),
        birthday_updated_at: member.birthday_updated_at.map(timestamp),
        fraud_flagged: fraud_flagged_at.is_some(),
        fraud_flagged_at,
        fraud_reason,
    }
}

/// Keeps level history page tokens apart from other listings' tokens.
const HISTORY_PAGE_KIND: &str = "levels.v1";

#[tonic::async_trait]
impl pb::membership_server::Membership for MembershipService {
    async fn register_member(
        &self,
        request: Request<pb::RegisterMemberRequest>,
    ) -> Result<Response<pb::RegisterMemberResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let registered_at = event_instant(request.registered_at, "registered_at", self.clock.now())?;
        let birthday = request
            .birthday
            .as_ref()
            .map(birthday)
            .transpose()
            .field("birthday")?;
        let registration = self.members.register(account_id, registered_at, birthday).await?;
        Ok(Response::new(pb::RegisterMemberResponse {
            member: Some(member_pb(registration.member)),
            replayed: registration.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let member = self.members.get(&account_id).await?;
        Ok(Response::new(pb::GetMemberResponse {
            member: Some(member_pb(member)),
        }))
    }

    async fn update_birthday(
        &self,
        request: Request<pb::UpdateBirthdayRequest>,
    ) -> Result<Response<pb::UpdateBirthdayResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let birthday = request
            .birthday
            .as_ref()
            .map(birthday)
            .transpose()
            .field("birthday")?;
        let member = self.members.update_birthday(&account_id, birthday).await?;
        Ok(Response::new(pb::UpdateBirthdayResponse {
            member: Some(member_pb(member)),
            request_id: call::request_id(),
        }))
    }

    async fn flag_member(
        &self,
        request: Request<pb::FlagMemberRequest>,
    ) -> Result<Response<pb::FlagMemberResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let reason = FraudReason::parse(&request.reason).field("reason")?;
        let member = self.members.flag(&account_id, &reason).await?;
        Ok(Response::new(pb::FlagMemberResponse {
            member: Some(member_pb(member)),
            request_id: call::request_id(),
        }))
    }

    async fn get_membership(
        &self,
        request: Request<pb::GetMembershipRequest>,
    ) -> Result<Response<pb::GetMembershipResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let view = self.membership.view(&account_id).await?;
        Ok(Response::new(pb::GetMembershipResponse {
            account_id: view.account_id.to_string(),
            level: level_pb(view.level).into(),
            level_since: Some(timestamp(view.level_since)),
            window_points: view.window_points,
            window_start: Some(date(view.window_start)),
            window_end: Some(date(view.window_end)),
            projected_level: level_pb(view.projected_level).into(),
            points_to_next_level: view.points_to_next_level,
            next_evaluation_date: Some(date(view.next_evaluation_date)),
            next_effective_from: Some(timestamp(view.next_effective_from)),
            benefits: Some(self.benefits_pb(view.benefits)),
        }))
    }

    async fn get_level_at(
        &self,
        request: Request<pb::GetLevelAtRequest>,
    ) -> Result<Response<pb::GetLevelAtResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let at = required_instant(request.at, "at")?;
        let period = self.membership.level_at(&account_id, at).await?;
        Ok(Response::new(pb::GetLevelAtResponse {
            period: Some(period_pb(period)),
        }))
    }

    async fn list_level_history(
        &self,
        request: Request<pb::ListLevelHistoryRequest>,
    ) -> Result<Response<pb::ListLevelHistoryResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let page_size = page_size(request.page_size)?;
        let query = PageQuery::new(HISTORY_PAGE_KIND).with("account_id", &account_id);
        let before = query.parse(&request.page_token)?;
        let (periods, next) = self.membership.history(&account_id, before, page_size).await?;
        Ok(Response::new(pb::ListLevelHistoryResponse {
            periods: periods.into_iter().map(period_pb).collect(),
            next_page_token: next.map(|from| query.token(&from)).unwrap_or_default(),
        }))
    }

    async fn check_fast_refund(
        &self,
        request: Request<pb::CheckFastRefundRequest>,
    ) -> Result<Response<pb::CheckFastRefundResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let amount = money(request.amount, "amount")?;
        let check = self.membership.fast_refund(&account_id, amount).await?;
        Ok(Response::new(pb::CheckFastRefundResponse {
            eligible: check.eligible,
            level: level_pb(check.level).into(),
            limit: check
                .limit_minor
                .map(|limit| money_pb(limit, self.program_currency)),
        }))
    }

    async fn evaluate_levels(
        &self,
        request: Request<pb::EvaluateLevelsRequest>,
    ) -> Result<Response<pb::EvaluateLevelsResponse>, Status> {
        let month = calendar_date(request.into_inner().month, "month", true)?;
        let outcome = self.membership.evaluate(month).await?;
        let run = outcome.result;
        Ok(Response::new(pb::EvaluateLevelsResponse {
            month: Some(date(run.month)),
            effective_from: Some(timestamp(run.effective_from)),
            members_evaluated: run.members_evaluated,
            level_changes: run.level_changes,
            level_ups: run.level_ups,
            replayed: outcome.replayed,
            rewards_settled: i64::try_from(outcome.rewards_settled).unwrap_or(i64::MAX),
            request_id: call::request_id(),
        }))
    }

    async fn run_daily_rewards(
        &self,
        request: Request<pb::RunDailyRewardsRequest>,
    ) -> Result<Response<pb::RunDailyRewardsResponse>, Status> {
        let day = calendar_date(request.into_inner().date, "date", false)?;
        let outcome = self.membership.run_daily_rewards(day).await?;
        let run = outcome.result;
        Ok(Response::new(pb::RunDailyRewardsResponse {
            date: Some(date(run.local_date)),
            birthday_rewards: run.birthday_rewards,
            anniversary_rewards: run.anniversary_rewards,
            replayed: outcome.replayed,
            rewards_settled: i64::try_from(outcome.rewards_settled).unwrap_or(i64::MAX),
            request_id: call::request_id(),
        }))
    }

    async fn set_reward_templates(
        &self,
        request: Request<pb::SetRewardTemplatesRequest>,
    ) -> Result<Response<pb::SetRewardTemplatesResponse>, Status> {
        let rewards = request
            .into_inner()
            .rewards
            .ok_or_else(|| Error::invalid("rewards", "is required"))?;
        let reward = match required_enum::<pb::RewardKind>(rewards.reward, "rewards.reward")? {
            pb::RewardKind::LevelUp => Reward::LevelUp(level_domain(rewards.level, "rewards.level")?),
            kind if rewards.level != 0 => {
                return Err(Error::invalid(
                    "rewards.level",
                    format!("only a level-up reward has a level, not {kind:?}"),
                )
                .into());
            }
            pb::RewardKind::Birthday => Reward::Birthday,
            pb::RewardKind::Anniversary => Reward::Anniversary,
            pb::RewardKind::DiamondDaily => Reward::DiamondDaily,
            pb::RewardKind::Unspecified => return Err(Error::invalid("rewards.reward", "is required").into()),
        };
        if reward == Reward::LevelUp(Level::Silver) {
            return Err(
                Error::invalid("rewards.level", "a level-up reaches Gold, Platinum or Diamond").into(),
            );
        }
        let templates = rewards
            .template_ids
            .iter()
            .enumerate()
            .map(|(i, id)| TemplateId::parse(id).field_with(|| format!("rewards.template_ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let distinct: std::collections::BTreeSet<&TemplateId> = templates.iter().collect();
        if distinct.len() != templates.len() {
            return Err(Error::invalid("rewards.template_ids", "must not repeat a template").into());
        }
        self.membership.set_reward_templates(reward, &templates).await?;
        Ok(Response::new(pb::SetRewardTemplatesResponse {
            rewards: self.rewards_pb().await?,
            request_id: call::request_id(),
        }))
    }

    async fn list_reward_templates(
        &self,
        _request: Request<pb::ListRewardTemplatesRequest>,
    ) -> Result<Response<pb::ListRewardTemplatesResponse>, Status> {
        Ok(Response::new(pb::ListRewardTemplatesResponse {
            rewards: self.rewards_pb().await?,
        }))
    }

    async fn claim_daily_coupon(
        &self,
        request: Request<pb::ClaimDailyCouponRequest>,
    ) -> Result<Response<pb::ClaimDailyCouponResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let issued = self.membership.claim_daily_coupon(&account_id).await?;
        Ok(Response::new(pb::ClaimDailyCouponResponse {
            coupon: Some(coupon_pb(issued.coupon)),
            replayed: issued.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn unflag_member(
        &self,
        request: Request<pb::UnflagMemberRequest>,
    ) -> Result<Response<pb::UnflagMemberResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let member = self.members.unflag(&account_id).await?;
        Ok(Response::new(pb::UnflagMemberResponse {
            member: Some(member_pb(member)),
            request_id: call::request_id(),
        }))
    }
}
