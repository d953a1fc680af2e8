//! The `loyalty.v1.Membership` service: adapts the wire to [`Members`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::domain::ids::AccountId;
use crate::domain::members::{FraudReason, Member, Members};
use crate::error::FieldContext;
use crate::grpc::convert::{birthday, birthday_pb, event_instant, timestamp};
use crate::pb;

/// The gRPC face of member operations.
pub struct MembershipService {
    members: Members,
    clock: Arc<dyn Clock>,
}

impl MembershipService {
    /// Serves `members`; `clock` bounds how far in the future instants may be.
    pub fn new(members: Members, clock: Arc<dyn Clock>) -> Self {
        Self { members, clock }
    }
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

#[tonic::async_trait]
impl pb::membership_server::Membership for MembershipService {
    async fn register_member(
        &self,
        request: Request<pb::RegisterMemberRequest>,
    ) -> Result<Response<pb::RegisterMemberResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
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
        }))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
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
        let birthday = request
            .birthday
            .as_ref()
            .map(birthday)
            .transpose()
            .field("birthday")?;
        let member = self.members.update_birthday(&account_id, birthday).await?;
        Ok(Response::new(pb::UpdateBirthdayResponse {
            member: Some(member_pb(member)),
        }))
    }

    async fn flag_member(
        &self,
        request: Request<pb::FlagMemberRequest>,
    ) -> Result<Response<pb::FlagMemberResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        let reason = FraudReason::parse(&request.reason).field("reason")?;
        let member = self.members.flag(&account_id, &reason).await?;
        Ok(Response::new(pb::FlagMemberResponse {
            member: Some(member_pb(member)),
        }))
    }

    async fn unflag_member(
        &self,
        request: Request<pb::UnflagMemberRequest>,
    ) -> Result<Response<pb::UnflagMemberResponse>, Status> {
        let account_id = AccountId::parse(&request.get_ref().account_id).field("account_id")?;
        let member = self.members.unflag(&account_id).await?;
        Ok(Response::new(pb::UnflagMemberResponse {
            member: Some(member_pb(member)),
        }))
    }
}
