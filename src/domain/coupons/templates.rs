//! Templates and claim codes: creating, reading, changing and pausing
//! templates; public codes and batches of single-use codes (stored hashed,
//! idempotent by the caller's request id).

use super::*;
use crate::domain::ids::BatchRequestId;

/// A claim code as typed: case and dashes do not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCode(String);

impl ClaimCode {
    /// Validates a code: 4 to 32 characters of `[A-Za-z0-9-]`.
    pub fn parse(code: &str) -> Result<Self, String> {
        let code = code.trim();
        if !(4..=32).contains(&code.len()) || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("must be 4 to 32 characters of letters, digits and '-'".to_owned());
        }
        Ok(Self(code.to_ascii_uppercase()))
    }

    /// The code in upper case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored: sha256 of the upper-cased code without dashes.
    pub fn hash(&self) -> Vec<u8> {
        let normalized: String = self.0.chars().filter(|c| *c != '-').collect();
        Sha256::digest(normalized.as_bytes()).to_vec()
    }

    /// A random single-use code, `XXXX-XXXX-XXXX-XXXX` in Crockford's base 32
    /// (no I, L, O, U): 80 bits from the operating system's generator.
    pub fn generate() -> Self {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut rng = OsRng;
        let mut code = String::with_capacity(19);
        for i in 0..16 {
            if i > 0 && i % 4 == 0 {
                code.push('-');
            }
            code.push(char::from(ALPHABET[rng.gen_range(0..32)]));
        }
        Self(code)
    }
}

impl fmt::Display for ClaimCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most single-use codes one call generates.
pub const MAX_CODES_PER_BATCH: u32 = 10_000;

impl Coupons {
    /// Creates a template; idempotent on its id and content.
    #[tracing::instrument(skip_all, fields(template_id = %spec.template_id))]
    pub async fn create_template(&self, spec: &TemplateSpec) -> Result<(Template, bool), Error> {
        spec.check()?;
        // A transaction, so that the deadline bounds the insert in PostgreSQL.
        let mut tx = db::begin(&self.pool).await?;
        if let Some(created) = db::coupons::insert_template(&mut tx, spec, self.clock.now()).await? {
            db::commit(tx).await?;
            return Ok((created, false));
        }
        let existing = db::coupons::get_template(&mut tx, &spec.template_id)
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        if existing.spec != *spec {
            return Err(Error::AlreadyExists {
                reason: "TEMPLATE_EXISTS",
                message: format!("template {} exists with other terms", spec.template_id),
            });
        }
        Ok((existing, true))
    }

    /// Reads a template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn template(&self, template_id: &TemplateId) -> Result<Template, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        db::coupons::get_template(&mut conn, template_id)
            .await?
            .ok_or_else(|| template_not_found(template_id))
    }

    /// A page of templates by id, and the key of the next page.
    #[tracing::instrument(skip_all)]
    pub async fn templates(
        &self,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<(Vec<Template>, Option<String>), Error> {
        let mut conn = db::acquire(&self.pool).await?;
        let mut templates = db::coupons::list_templates(&mut conn, after, page_size + 1).await?;
        let next = if templates.len() > page_size as usize {
            templates.truncate(page_size as usize);
            templates.last().map(|t| t.spec.template_id.to_string())
        } else {
            None
        };
        Ok((templates, next))
    }

    /// Replaces a template's terms for coupons issued from now on.
    #[tracing::instrument(skip_all, fields(template_id = %spec.template_id))]
    pub async fn update_template(&self, spec: &TemplateSpec) -> Result<Template, Error> {
        spec.check()?;
        let mut tx = db::begin(&self.pool).await?;
        // The template's turn first: the issued count read next is final
        // until this commits.
        if !db::coupons::lock_template(&mut tx, &spec.template_id).await? {
            return Err(template_not_found(&spec.template_id));
        }
        let current = db::coupons::get_template(&mut tx, &spec.template_id)
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        if current.spec.issuer != spec.issuer {
            return Err(Error::invalid(
                "template.issuer",
                "the issuer of a template cannot change",
            ));
        }
        if current.spec.currency != spec.currency {
            return Err(Error::invalid(
                "template.currency_code",
                "the currency of a template cannot change",
            ));
        }
        if spec.total_stock.is_some_and(|stock| stock < current.issued_count) {
            return Err(refused(
                "STOCK_BELOW_ISSUED",
                format!("{} coupons were already issued", current.issued_count),
            ));
        }
        let updated = db::coupons::update_template(&mut tx, spec, self.clock.now())
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        db::commit(tx).await?;
        Ok(updated)
    }

    /// Pauses or resumes a template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn set_paused(&self, template_id: &TemplateId, paused: bool) -> Result<Template, Error> {
        let mut tx = db::begin(&self.pool).await?;
        if !db::coupons::lock_template(&mut tx, template_id).await? {
            return Err(template_not_found(template_id));
        }
        let template = db::coupons::set_paused(&mut tx, template_id, paused, self.clock.now()).await?;
        db::commit(tx).await?;
        template.ok_or_else(|| template_not_found(template_id))
    }

    /// Creates a public code; idempotent when the code already claims this template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn create_public_code(
        &self,
        template_id: &TemplateId,
        code: &ClaimCode,
    ) -> Result<bool, Error> {
        let mut tx = db::begin(&self.pool).await?;
        db::coupons::get_template(&mut tx, template_id)
            .await?
            .ok_or_else(|| template_not_found(template_id))?;
        let hash = code.hash();
        if db::coupons::insert_public_code(&mut tx, &hash, template_id, code.as_str(), self.clock.now())
            .await?
        {
            db::commit(tx).await?;
            return Ok(false);
        }
        match db::coupons::find_code(&mut tx, &hash).await? {
            Some(existing)
                if existing.kind == CodeKind::Public && existing.template_id == template_id.as_str() =>
            {
                Ok(true)
            }
            _ => Err(Error::AlreadyExists {
                reason: "CODE_EXISTS",
                message: format!("the code {code} is already used"),
            }),
        }
    }

    /// Generates a batch of `count` single-use codes for a template, idempotent
    /// by `request_id`: the batch row and the codes' hashes are written in one
    /// transaction. A retry with the same content gets the same batch back,
    /// `replayed` and without codes (only their hashes were kept); the same
    /// request id with another template or count is `ALREADY_EXISTS`
    /// (`IDEMPOTENCY_KEY_REUSED`). Twin requests meet on the batch's unique key:
    /// one generates, the other waits for it and replays.
    #[tracing::instrument(skip_all, fields(template_id = %template_id, count))]
    pub async fn generate_codes(
        &self,
        request_id: &BatchRequestId,
        template_id: &TemplateId,
        count: u32,
    ) -> Result<CodeBatch, Error> {
        if !(1..=MAX_CODES_PER_BATCH).contains(&count) {
            return Err(Error::invalid(
                "count",
                format!("must be 1 to {MAX_CODES_PER_BATCH}"),
            ));
        }
        let mut tx = db::begin(&self.pool).await?;
        db::coupons::get_template(&mut tx, template_id)
            .await?
            .ok_or_else(|| template_not_found(template_id))?;
        let now = self.clock.now();
        let Some(batch) =
            db::coupons::insert_code_batch(&mut tx, request_id, template_id, count, now).await?
        else {
            let batch = db::coupons::get_code_batch(&mut tx, request_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("code batch {request_id} vanished after a conflict"))?;
            let batch = CodeBatch::from_row(batch, Vec::new(), true)?;
            if batch.template_id != *template_id || batch.count != count {
                return Err(Error::AlreadyExists {
                    reason: "IDEMPOTENCY_KEY_REUSED",
                    message: format!(
                        "request {request_id} already generated {} codes of template {}",
                        batch.count, batch.template_id
                    ),
                }
                .concerning("batch_id", batch.batch_id));
            }
            return Ok(batch);
        };
        let codes: Vec<ClaimCode> = (0..count).map(|_| ClaimCode::generate()).collect();
        let hashes: Vec<Vec<u8>> = codes.iter().map(ClaimCode::hash).collect();
        let inserted =
            db::coupons::insert_single_use_codes(&mut tx, template_id, batch.code_batch_id, &hashes).await?;
        if inserted != u64::from(count) {
            // 80 random bits per code: a collision means a broken generator.
            return Err(anyhow::anyhow!(
                "{} of {count} generated codes collided",
                u64::from(count) - inserted
            )
            .into());
        }
        db::commit(tx).await?;
        CodeBatch::from_row(batch, codes, false)
    }
}

/// A batch of single-use codes.
#[derive(Debug, Clone)]
pub struct CodeBatch {
    pub batch_id: i64,
    pub template_id: TemplateId,
    pub count: u32,
    pub created_at: DateTime<Utc>,
    /// The codes, shown only in the answer of the call that generated them:
    /// empty on a replay.
    pub codes: Vec<ClaimCode>,
    /// True when the request id already had this batch: nothing was generated.
    pub replayed: bool,
}

impl CodeBatch {
    fn from_row(
        row: db::coupons::CodeBatchRow,
        codes: Vec<ClaimCode>,
        replayed: bool,
    ) -> Result<Self, Error> {
        Ok(Self {
            batch_id: row.code_batch_id,
            template_id: TemplateId::parse(&row.template_id)
                .map_err(|e| anyhow::anyhow!("stored code batch: {e}"))?,
            count: u32::try_from(row.code_count)
                .map_err(|_| anyhow::anyhow!("stored code batch of {} codes", row.code_count))?,
            created_at: row.created_at,
            codes,
            replayed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_ignores_case_and_dashes() {
        let a = ClaimCode::parse("summer-25").unwrap();
        let b = ClaimCode::parse("SUMMER25").unwrap();
        assert_eq!(a.as_str(), "SUMMER-25");
        assert_eq!(a.hash(), b.hash());
        assert!(ClaimCode::parse("abc").is_err());
        assert!(ClaimCode::parse("has space").is_err());
    }

    #[test]
    fn generated_codes_are_distinct_and_parse_back() {
        let codes: BTreeSet<String> = (0..1000).map(|_| ClaimCode::generate().to_string()).collect();
        assert_eq!(codes.len(), 1000);
        for code in codes.iter().take(5) {
            assert_eq!(code.len(), 19);
            assert_eq!(ClaimCode::parse(code).unwrap().as_str(), code);
        }
    }
}
