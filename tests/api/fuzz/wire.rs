//! The protobuf wire format, written by hand so that a case can also break it.

pub(super) const VARINT: u8 = 0;
pub(super) const I64: u8 = 1;
pub(super) const LEN: u8 = 2;
pub(super) const START_GROUP: u8 = 3;
pub(super) const END_GROUP: u8 = 4;
pub(super) const I32: u8 = 5;

pub(super) fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(super) fn tag(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(super) fn len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

pub(super) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// `inner` wrapped in the length-delimited fields `path` leads through.
pub(super) fn nest(path: &[u32], inner: Vec<u8>) -> Vec<u8> {
    path.iter().rev().fold(inner, |inner, &field| {
        let mut outer = Vec::new();
        len_field(&mut outer, field, &inner);
        outer
    })
}

/// One encoded field value.
pub(super) enum Value {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(Vec<u8>),
}

impl Value {
    pub(super) fn write(&self, buf: &mut Vec<u8>, field: u32) {
        let wire_type = match self {
            Value::Varint(_) => VARINT,
            Value::I64(_) => I64,
            Value::I32(_) => I32,
            Value::Len(bytes) => return len_field(buf, field, bytes),
        };
        tag(buf, field, wire_type);
        self.write_packed(buf);
    }

    /// The value without its tag, as in a packed repeated field.
    pub(super) fn write_packed(&self, buf: &mut Vec<u8>) {
        match self {
            Value::Varint(v) => varint(buf, *v),
            Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Value::Len(bytes) => buf.extend_from_slice(bytes),
        }
    }
}
