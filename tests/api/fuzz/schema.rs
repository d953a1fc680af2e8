//! The methods of the four services and the messages and enums their requests
//! use, from the descriptor set the crate embeds.

use std::collections::HashMap;

use loyalty::pb;
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// The request types of every method and the messages and enums they use.
pub(super) struct Schema {
    /// `(path, request type)`, e.g. `("/loyalty.v1.Points/GetBalance", ".loyalty.v1.GetBalanceRequest")`.
    pub(super) methods: Vec<(String, String)>,
    /// The paths of the methods that answer with a stream.
    pub(super) streaming: Vec<String>,
    /// Messages by fully qualified name (with the leading dot).
    pub(super) messages: HashMap<String, DescriptorProto>,
    /// The numbers of each enum, by fully qualified name.
    pub(super) enums: HashMap<String, Vec<i32>>,
}

impl Schema {
    pub(super) fn load() -> Self {
        let set =
            FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes");
        let mut schema = Schema {
            methods: Vec::new(),
            streaming: Vec::new(),
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        for file in &set.file {
            let package = format!(".{}", file.package());
            for message in &file.message_type {
                schema.add_message(&package, message);
            }
            for e in &file.enum_type {
                let numbers = e.value.iter().map(|v| v.number()).collect();
                schema.enums.insert(format!("{package}.{}", e.name()), numbers);
            }
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    if method.server_streaming() {
                        schema.streaming.push(path.clone());
                    }
                    schema.methods.push((path, method.input_type().to_owned()));
                }
            }
        }
        let services = ["Points", "Membership", "Coupons", "Events"];
        for service in services {
            let prefix = format!("/loyalty.v1.{service}/");
            assert!(
                schema.methods.iter().any(|(path, _)| path.starts_with(&prefix)),
                "no method of {service} in the descriptor set"
            );
        }
        schema
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for e in &message.enum_type {
            let numbers = e.value.iter().map(|v| v.number()).collect();
            self.enums.insert(format!("{name}.{}", e.name()), numbers);
        }
        self.messages.insert(name, message.clone());
    }

    /// The field numbers leading from `type_name` to a field `wanted` accepts,
    /// searching nested messages breadth first.
    pub(super) fn path_to(
        &self,
        type_name: &str,
        wanted: fn(&FieldDescriptorProto) -> bool,
    ) -> Option<Vec<u32>> {
        let mut queue = vec![(type_name.to_owned(), Vec::new())];
        let mut next = 0;
        while next < queue.len() && next < 64 {
            let (name, path) = queue[next].clone();
            next += 1;
            let Some(message) = self.messages.get(&name) else {
                continue;
            };
            for field in &message.field {
                let mut here = path.clone();
                here.push(field.number() as u32);
                if wanted(field) {
                    return Some(here);
                }
                if field.r#type() == Type::Message {
                    queue.push((field.type_name().to_owned(), here));
                }
            }
        }
        None
    }
}
