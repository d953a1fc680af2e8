//! Requests built from the descriptors with a seeded RNG: structured with edge
//! and hostile values, malformed wire data, raw bytes, oversized messages, and
//! broken gRPC framing.

use bytes::Bytes;
use prost_types::FieldDescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::schema::Schema;
use super::wire::{self, Value};
use super::{ACCOUNTS, ORDER_ID, PUBLIC_CODE, TEMPLATE_ID, truncate};
use crate::helpers::default_now;

/// One case in this many is an oversized message.
const OVERSIZED_EVERY: usize = 500;
const OVERSIZED_LEN: usize = 5 * 1024 * 1024;
const LONG_STRING_LEN: usize = 100 * 1024;
/// Nested messages deeper than this are left empty.
const MAX_DEPTH: usize = 4;
const TIMESTAMP: &str = ".google.protobuf.Timestamp";
const DATE: &str = ".loyalty.v1.Date";

/// One call to make.
pub(super) struct Case {
    pub(super) number: usize,
    pub(super) path: String,
    pub(super) kind: String,
    /// The hostile values the case holds, to explain a failure.
    pub(super) notes: Vec<String>,
    pub(super) body: Bytes,
}

/// Builds cases from the descriptors with a seeded RNG.
pub(super) struct Generator<'a> {
    rng: StdRng,
    schema: &'a Schema,
    /// Whether the current case prefers the ids the test set up.
    ids: bool,
    /// Long strings the current case may still hold (they are costly).
    long_strings: usize,
    notes: Vec<String>,
}

impl<'a> Generator<'a> {
    pub(super) fn new(seed: u64, schema: &'a Schema) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            schema,
            ids: false,
            long_strings: 0,
            notes: Vec::new(),
        }
    }

    pub(super) fn case(&mut self, number: usize) -> Case {
        let (path, input) = &self.schema.methods[number % self.schema.methods.len()];
        self.ids = false;
        self.long_strings = 1;
        self.notes.clear();
        let (kind, body) = if number % OVERSIZED_EVERY == OVERSIZED_EVERY - 1 {
            let mut body = Vec::with_capacity(OVERSIZED_LEN + 8);
            wire::len_field(&mut body, 1, &vec![b'a'; OVERSIZED_LEN]);
            ("oversized".to_owned(), body)
        } else {
            match self.rng.gen_range(0..100) {
                0..40 => ("structured".to_owned(), self.message(input, "", 0)),
                40..60 => {
                    self.ids = true;
                    ("structured+ids".to_owned(), self.message(input, "", 0))
                }
                60..85 => self.malformed(input),
                _ => {
                    let len = match self.rng.gen_range(0..10) {
                        0..4 => self.rng.gen_range(0..32),
                        4..8 => self.rng.gen_range(0..256),
                        _ => self.rng.gen_range(0..4096),
                    };
                    let body = (0..len).map(|_| self.rng.r#gen()).collect();
                    ("raw-bytes".to_owned(), body)
                }
            }
        };
        Case {
            number,
            path: path.clone(),
            kind,
            notes: std::mem::take(&mut self.notes),
            body: body.into(),
        }
    }

    /// Whether the next value should be an edge or a hostile one: with ids, one
    /// value in ten, so that a case mostly holds one and gets past the others'
    /// validation to where that one is used; else one in two.
    fn hostile(&mut self) -> bool {
        self.rng.gen_bool(if self.ids { 0.1 } else { 0.5 })
    }

    fn note(&mut self, path: &str, what: impl std::fmt::Display) {
        if self.notes.len() < 8 {
            self.notes.push(format!("{path}: {what}"));
        }
    }

    /// A message of `type_name`, each field present or absent.
    fn message(&mut self, type_name: &str, path: &str, depth: usize) -> Vec<u8> {
        if type_name == TIMESTAMP {
            return self.timestamp(path);
        }
        if type_name == DATE && self.ids {
            return self.date();
        }
        let schema = self.schema;
        let Some(descriptor) = schema.messages.get(type_name) else {
            return Vec::new();
        };
        if depth > MAX_DEPTH {
            return Vec::new();
        }
        let presence = if self.ids { 0.97 } else { 0.6 };
        let in_real_oneof = |f: &FieldDescriptorProto| f.oneof_index.is_some() && !f.proto3_optional();
        let mut chosen: Vec<&FieldDescriptorProto> = descriptor
            .field
            .iter()
            .filter(|f| !in_real_oneof(f) && self.rng.gen_bool(presence))
            .collect();
        for index in 0..descriptor.oneof_decl.len() as i32 {
            let mut members: Vec<&FieldDescriptorProto> = descriptor
                .field
                .iter()
                .filter(|f| in_real_oneof(f) && f.oneof_index == Some(index))
                .collect();
            members.shuffle(&mut self.rng);
            let count = match self.rng.gen_range(0..20) {
                _ if self.ids => 1,
                0..5 => 0,
                5..18 => 1,
                _ => 2,
            };
            chosen.extend(members.into_iter().take(count));
        }
        if !self.ids && self.rng.gen_bool(0.2) {
            chosen.shuffle(&mut self.rng);
        }
        let mut buf = Vec::new();
        for field in &chosen {
            self.field(&mut buf, field, path, depth);
        }
        // A repeated singular field: valid, the last one wins.
        if !self.ids
            && self.rng.gen_bool(0.05)
            && let Some(field) = chosen.iter().find(|f| f.label() != Label::Repeated)
        {
            self.field(&mut buf, field, path, depth);
        }
        buf
    }

    fn field(&mut self, buf: &mut Vec<u8>, field: &FieldDescriptorProto, parent: &str, depth: usize) {
        let path = if parent.is_empty() {
            field.name().to_owned()
        } else {
            format!("{parent}.{}", field.name())
        };
        let number = field.number() as u32;
        if field.label() != Label::Repeated {
            self.value(field, &path, depth).write(buf, number);
            return;
        }
        let count = self.count(&path, depth);
        let packable = !matches!(
            field.r#type(),
            Type::String | Type::Bytes | Type::Message | Type::Group
        );
        if packable && self.rng.gen_bool(0.5) {
            let mut packed = Vec::new();
            for _ in 0..count {
                self.value(field, &path, depth).write_packed(&mut packed);
            }
            wire::len_field(buf, number, &packed);
        } else {
            for i in 0..count {
                self.value(field, &format!("{path}[{i}]"), depth)
                    .write(buf, number);
            }
        }
    }

    fn count(&mut self, path: &str, depth: usize) -> usize {
        if self.ids || depth > 1 {
            return self.rng.gen_range(0..=3);
        }
        match self.rng.gen_range(0..10) {
            0..7 => self.rng.gen_range(0..=3),
            7..9 => self.rng.gen_range(4..=20),
            _ => {
                let count = self.rng.gen_range(200..=1000);
                self.note(path, format!("{count} items"));
                count
            }
        }
    }

    fn value(&mut self, field: &FieldDescriptorProto, path: &str, depth: usize) -> Value {
        match field.r#type() {
            Type::Int32 | Type::Int64 => Value::Varint(self.int(field.name(), path) as u64),
            Type::Sint32 | Type::Sint64 => Value::Varint(wire::zigzag(self.int(field.name(), path))),
            Type::Uint32 | Type::Uint64 => Value::Varint(self.int(field.name(), path) as u64),
            Type::Bool => Value::Varint(self.boolean(path)),
            Type::Enum => Value::Varint(self.enum_number(field.type_name(), path) as i64 as u64),
            Type::Fixed64 | Type::Sfixed64 | Type::Double => Value::I64(self.rng.r#gen()),
            Type::Fixed32 | Type::Sfixed32 | Type::Float => Value::I32(self.rng.r#gen()),
            Type::String => Value::Len(self.string(field.name(), path).into_bytes()),
            Type::Bytes => {
                let len = self.rng.gen_range(0..64);
                Value::Len((0..len).map(|_| self.rng.r#gen()).collect())
            }
            Type::Message | Type::Group => Value::Len(self.message(field.type_name(), path, depth + 1)),
        }
    }

    fn int(&mut self, name: &str, path: &str) -> i64 {
        if self.ids {
            let plausible = match name {
                "coupon_id" | "coupon_ids" => Some(self.rng.gen_range(1..=4)),
                "points" => Some(self.rng.gen_range(1..=100)),
                "page_size" | "count" | "quantity" => Some(self.rng.gen_range(0..=50)),
                "year" => Some(self.rng.gen_range(2024..=2027)),
                _ => None,
            };
            if let Some(value) = plausible.filter(|_| !self.hostile()) {
                return value;
            }
        }
        if !self.hostile() {
            return self.rng.gen_range(0..=1000);
        }
        let edges = [
            0,
            1,
            -1,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            i64::from(u32::MAX),
            1 << 53,
            i64::MIN,
            i64::MAX,
        ];
        let value = *edges.choose(&mut self.rng).expect("edges");
        if !(0..=1).contains(&value) {
            self.note(path, value);
        }
        value
    }

    fn boolean(&mut self, path: &str) -> u64 {
        if self.ids || self.rng.gen_bool(0.95) {
            return self.rng.gen_range(0..=1);
        }
        let value = *[2, u64::MAX].choose(&mut self.rng).expect("edges");
        self.note(path, format!("bool {value}"));
        value
    }

    fn enum_number(&mut self, type_name: &str, path: &str) -> i32 {
        let known = self.schema.enums.get(type_name).cloned().unwrap_or_default();
        if !known.is_empty() && (self.ids || self.rng.gen_bool(0.8)) {
            // With ids, rather a meaningful value than the zero `UNSPECIFIED`.
            let meaningful: Vec<i32> = known.iter().copied().filter(|&n| n != 0).collect();
            let choices = if self.ids && !meaningful.is_empty() {
                &meaningful
            } else {
                &known
            };
            return *choices.choose(&mut self.rng).expect("known");
        }
        let value = *[-1, 99, i32::MAX, i32::MIN].choose(&mut self.rng).expect("edges");
        self.note(path, format!("enum {value}"));
        value
    }

    fn string(&mut self, name: &str, path: &str) -> String {
        if self.ids {
            match self.known_string(name) {
                Some(known) if !self.hostile() => return known,
                None if !self.hostile() => return self.plain(1..=16),
                _ => {}
            }
        }
        let (value, what) = match self.rng.gen_range(0..13) {
            0 => (String::new(), None),
            1..=3 => (self.plain(1..=24), None),
            4 | 12 => (
                pick(&mut self.rng, &["a\0b", "\0", "fuzz-1\0", "x\0\0\0y"]),
                Some("NUL"),
            ),
            5 => (
                pick(
                    &mut self.rng,
                    &["\u{1}\u{2}\u{1b}[31m", "tab\tnew\nline\r", "\u{7f}", "\u{85}x"],
                ),
                Some("control characters"),
            ),
            6 => (
                pick(
                    &mut self.rng,
                    &[
                        "ünïcödé",
                        "日本語のテキスト",
                        "🎉🎉",
                        "\u{202e}gnp.exe",
                        "e\u{301}",
                        "\u{feff}bom",
                        "\u{fffd}",
                    ],
                ),
                Some("non-ASCII"),
            ),
            7 => (
                pick(
                    &mut self.rng,
                    &[
                        "a b",
                        "../../etc/passwd",
                        "fuzz-1'; drop table member; --",
                        "%00",
                        "fuzz-1\n",
                        "*",
                        "<b>",
                        "\\",
                    ],
                ),
                Some("bad characters"),
            ),
            8 if self.long_strings > 0 => {
                self.long_strings -= 1;
                let mut long = "x".repeat(LONG_STRING_LEN);
                if self.rng.gen_bool(0.5) {
                    long.push('\0');
                }
                (long, Some("100 KB"))
            }
            8 | 9 => ("x".repeat(self.rng.gen_range(60..=300)), Some("long")),
            10 => (pick(&mut self.rng, &[" ", "  \t ", "\u{a0}"]), Some("blank")),
            _ => (
                self.known_string(name).unwrap_or_else(|| "fuzz-1".to_owned()),
                None,
            ),
        };
        if let Some(what) = what {
            self.note(path, format!("{what} {:?}", truncate(&value, 24)));
        }
        value
    }

    /// A value the test set up (or, now and then, a fresh one for creations),
    /// for fields with a well-known name.
    fn known_string(&mut self, name: &str) -> Option<String> {
        let fresh = self.rng.gen_bool(0.15);
        Some(match name {
            "account_id" if fresh => format!("fuzz-new-{}", self.rng.gen_range(0..100)),
            "account_id" => pick(&mut self.rng, &ACCOUNTS),
            "template_id" | "template_ids" if fresh => {
                format!("{TEMPLATE_ID}-{}", self.rng.gen_range(0..100))
            }
            "template_id" | "template_ids" => TEMPLATE_ID.to_owned(),
            "code" | "codes" => PUBLIC_CODE.to_owned(),
            "order_id" => ORDER_ID.to_owned(),
            "currency_code" => "USD".to_owned(),
            _ => return None,
        })
    }

    fn plain(&mut self, len: std::ops::RangeInclusive<usize>) -> String {
        let len = self.rng.gen_range(len);
        (0..len)
            .map(|_| {
                *b"abcdefghijklmnopqrstuvwxyz0123456789-"
                    .choose(&mut self.rng)
                    .expect("alphabet") as char
            })
            .collect()
    }

    /// A `google.protobuf.Timestamp`: mostly near the test clock with ids, else
    /// often an instant no database holds or nanos out of range.
    fn timestamp(&mut self, path: &str) -> Vec<u8> {
        let (seconds, nanos) = if self.ids && !self.hostile() {
            let now = default_now().timestamp();
            let day = 86_400;
            (
                now - self.rng.gen_range(0..=400 * day),
                self.rng.gen_range(0..1_000_000_000),
            )
        } else {
            let seconds = if self.rng.gen_bool(0.5) {
                self.rng.gen_range(946_684_800..4_102_444_800) // 2000 to 2100
            } else {
                let edges = [
                    i64::MIN,
                    i64::MAX,
                    1_000_000_000_000,
                    -1_000_000_000_000,
                    -210_866_803_201, // just before 4714-11-24 BC, PostgreSQL's first day
                    -210_866_803_200,
                    -62_135_596_801, // just before 0001-01-01
                    253_402_300_799, // 9999-12-31T23:59:59
                    253_402_300_800,
                    9_224_318_016_000, // past PostgreSQL's last day (294276 AD)
                    0,
                    -1,
                ];
                let value = *edges.choose(&mut self.rng).expect("edges");
                self.note(path, format!("seconds {value}"));
                value
            };
            let nanos = if self.rng.gen_bool(0.8) {
                self.rng.gen_range(0..1_000_000_000)
            } else {
                let value = *[-1, 1_000_000_000, i32::MAX, i32::MIN]
                    .choose(&mut self.rng)
                    .expect("edges");
                self.note(path, format!("nanos {value}"));
                value
            };
            (seconds, nanos)
        };
        let mut buf = Vec::new();
        if seconds != 0 || self.rng.gen_bool(0.5) {
            Value::Varint(seconds as u64).write(&mut buf, 1);
        }
        if nanos != 0 || self.rng.gen_bool(0.5) {
            Value::Varint(i64::from(nanos) as u64).write(&mut buf, 2);
        }
        buf
    }

    /// A valid `loyalty.v1.Date` around the test clock.
    fn date(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        Value::Varint(self.rng.gen_range(2024..=2027)).write(&mut buf, 1);
        Value::Varint(self.rng.gen_range(1..=12)).write(&mut buf, 2);
        Value::Varint(self.rng.gen_range(1..=28)).write(&mut buf, 3);
        buf
    }

    /// A structured request of `type_name` with broken (or unknown) wire data.
    fn malformed(&mut self, type_name: &str) -> (String, Vec<u8>) {
        let mut body = self.message(type_name, "", 0);
        self.notes.clear();
        let schema = self.schema;
        let fields = schema
            .messages
            .get(type_name)
            .map(|m| m.field.as_slice())
            .unwrap_or_default();
        let number = fields.choose(&mut self.rng).map_or(1, |f| f.number() as u32);
        let how = match self.rng.gen_range(0..11) {
            0 => {
                let path = schema
                    .path_to(type_name, |f| f.r#type() == Type::String)
                    .unwrap_or(vec![1]);
                let (last, outer) = path.split_last().expect("a path has a field");
                let mut inner = Vec::new();
                wire::len_field(&mut inner, *last, &[b'o', 0xff, 0xfe, b'k', 0xc3, 0x28]);
                body.extend(wire::nest(outer, inner));
                "invalid-utf8"
            }
            1 => {
                wire::tag(&mut body, number, wire::VARINT);
                body.extend([0x80, 0x80]);
                "truncated-varint"
            }
            2 => {
                let proper = fields
                    .iter()
                    .find(|f| f.number() as u32 == number)
                    .map(wire_type_of);
                let wrong = *[wire::VARINT, wire::I64, wire::LEN, wire::I32]
                    .iter()
                    .filter(|&&t| Some(t) != proper)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .expect("another wire type");
                match *wrong {
                    wire::VARINT => Value::Varint(1).write(&mut body, number),
                    wire::I64 => Value::I64(u64::MAX).write(&mut body, number),
                    wire::I32 => Value::I32(7).write(&mut body, number),
                    _ => Value::Len(b"\xff\x00garbage".to_vec()).write(&mut body, number),
                }
                "wrong-wire-type"
            }
            3 => {
                wire::tag(&mut body, number, wire::LEN);
                wire::varint(&mut body, self.rng.gen_range(10..1_000_000));
                body.extend(b"abc");
                "length-past-end"
            }
            4 => {
                let mut unknown = Vec::new();
                for field in [998, 19_000, 536_870_910] {
                    Value::Varint(self.rng.r#gen()).write(&mut unknown, field);
                    Value::Len(b"unknown".to_vec()).write(&mut unknown, field + 1);
                }
                Value::I64(1).write(&mut unknown, 1000);
                Value::I32(1).write(&mut unknown, 1001);
                wire::tag(&mut unknown, 1002, wire::START_GROUP);
                Value::Varint(5).write(&mut unknown, 1);
                wire::tag(&mut unknown, 1002, wire::END_GROUP);
                if self.rng.gen_bool(0.5) {
                    unknown.extend(body);
                    body = unknown;
                } else {
                    body.extend(unknown);
                }
                "unknown-fields"
            }
            5 => {
                Value::Varint(1).write(&mut body, 0);
                "field-number-zero"
            }
            6 => {
                wire::tag(&mut body, number, wire::VARINT);
                body.extend([0xff; 10]);
                body.push(0x01);
                "overlong-varint"
            }
            7 => {
                wire::tag(&mut body, number, *[6, 7].choose(&mut self.rng).expect("types"));
                body.push(0);
                "invalid-wire-type"
            }
            8 => {
                wire::tag(&mut body, number, wire::END_GROUP);
                "stray-end-group"
            }
            9 => match schema.path_to(type_name, |f| f.r#type() == Type::Message) {
                Some(path) => {
                    let garbage: Vec<u8> = (0..self.rng.gen_range(1..32)).map(|_| self.rng.r#gen()).collect();
                    body.extend(wire::nest(&path, garbage));
                    "bad-submessage"
                }
                None => {
                    body.extend([0xff, 0xff, 0xff]);
                    "trailing-garbage"
                }
            },
            _ => {
                let cut = self.rng.gen_range(0..=body.len());
                body.truncate(cut);
                "cut"
            }
        };
        (format!("malformed/{how}"), body)
    }
}

fn wire_type_of(field: &FieldDescriptorProto) -> u8 {
    match field.r#type() {
        Type::Fixed64 | Type::Sfixed64 | Type::Double => wire::I64,
        Type::Fixed32 | Type::Sfixed32 | Type::Float => wire::I32,
        Type::String | Type::Bytes | Type::Message | Type::Group => wire::LEN,
        _ if field.label() == Label::Repeated => wire::LEN,
        _ => wire::VARINT,
    }
}

fn pick(rng: &mut StdRng, choices: &[&str]) -> String {
    (*choices.choose(rng).expect("choices")).to_owned()
}

/// Broken gRPC framing: `(path, how, HTTP/2 request body)`.
pub(super) fn framing_cases() -> Vec<(&'static str, &'static str, Bytes)> {
    let mut message = Vec::new();
    wire::len_field(&mut message, 1, ACCOUNTS[0].as_bytes());
    let frame = |flag: u8, announced: usize, payload: &[u8]| {
        let mut frame = vec![flag];
        frame.extend((announced as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    let cases = [
        ("empty-body", Vec::new()),
        ("compression-flag-2", frame(2, message.len(), &message)),
        ("compressed-without-encoding", frame(1, message.len(), &message)),
        ("frame-shorter-than-announced", frame(0, 100, &message)),
        ("partial-header", vec![0, 0, 0]),
        (
            "two-messages",
            [
                frame(0, message.len(), &message),
                frame(0, message.len(), &message),
            ]
            .concat(),
        ),
    ];
    [
        "/loyalty.v1.Points/GetBalance",
        "/loyalty.v1.Membership/GetMember",
    ]
    .into_iter()
    .flat_map(|path| {
        cases
            .iter()
            .map(move |(how, body)| (path, *how, Bytes::from(body.clone())))
    })
    .collect()
}
