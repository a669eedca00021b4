//! Decoding JSON whose shape matters.
//!
//! A struct that serde derives also accepts a JSON array, taking its elements as the fields
//! in declaration order: `["1.1", {...}]` decodes as `{"revision": "1.1", "value": {...}}`. What
//! the plugins and the CLI read from others — another plugin's result, `prevResult`, the local
//! store's object files, `apply -f` documents — must be an object wherever an object is meant,
//! so these decoders refuse anything else and say what they found.
//!
//! - [`from_value`] decodes a [`Value`] with every struct, at any depth, read from an object
//!   only, and names the path of what was wrong (`ips[0]: invalid type: sequence, expected
//!   struct IpConfig`);
//! - [`object`] (for `#[serde(deserialize_with)]`) and [`Object`] make one level of a
//!   streaming decode object-only. (Structs with a `#[serde(flatten)]` field, as every model
//!   spec has, are read from objects only by serde itself.)
//!
//! Enums are decoded as serde_json decodes them; none of the types read this way has an enum
//! carrying a struct.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Unexpected, Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::Value;

/// What a JSON value is, for messages: `a JSON array`, `a string`, ...
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a JSON array",
        Value::Object(_) => "a JSON object",
    }
}

/// Decodes `value` as `T`, reading every struct from a JSON object only. The error names the
/// path of the value that was wrong (`.` for the whole document).
pub fn from_value<T: DeserializeOwned>(
    value: &Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(Strict(value))
}

/// A [`Value`] as a deserializer that gives structs only objects.
struct Strict<'a>(&'a Value);

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Strict));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => {
                let mut map =
                    MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))));
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
            scalar => scalar.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// For `#[serde(deserialize_with = "crate::strict::object")]`: the field is read from a JSON
/// object only (`invalid type: sequence, expected a JSON object` otherwise).
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    d.deserialize_map(ObjectVisitor(PhantomData))
}

/// `T`, read from a JSON object only (see [`object`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Inner {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Outer {
        name: String,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[test]
    fn serde_alone_reads_a_struct_from_an_array() {
        // Why this module exists.
        let positional: Outer =
            serde_json::from_value(json!(["x", [[7, null]], null])).expect("positional");
        assert_eq!(positional.items, vec![Inner { a: 7, b: None }]);
    }

    #[test]
    fn structs_are_read_from_objects_only_at_any_depth() {
        let ok: Outer =
            from_value(&json!({"name": "x", "items": [{"a": 1}], "inner": {"a": 2, "b": "y"}}))
                .expect("objects");
        assert_eq!(ok.items, vec![Inner { a: 1, b: None }]);
        assert_eq!(
            ok.inner,
            Some(Inner {
                a: 2,
                b: Some("y".into())
            })
        );
        for (doc, says) in [
            (
                json!(["x", [], null]),
                "invalid type: sequence, expected struct Outer",
            ),
            (json!(7), "invalid type: integer `7`, expected struct Outer"),
            (
                json!("x"),
                "invalid type: string \"x\", expected struct Outer",
            ),
            (json!(null), "invalid type: null, expected struct Outer"),
            (
                json!({"name": "x", "items": [[1, null]]}),
                "items[0]: invalid type: sequence, expected struct Inner",
            ),
            (
                json!({"name": "x", "inner": [2]}),
                "inner: invalid type: sequence, expected struct Inner",
            ),
            (
                json!({"name": "x", "items": [{"a": "1"}]}),
                "items[0].a: invalid type: string \"1\", expected u32",
            ),
        ] {
            let e = from_value::<Outer>(&doc).expect_err("refused").to_string();
            assert!(e.contains(says), "{doc}: {e}");
        }
    }

    #[test]
    fn object_refuses_a_streamed_array() {
        let ok: Object<Inner> = serde_json::from_str(r#"{"a": 3}"#).expect("object");
        assert_eq!(ok.0.a, 3);
        for bad in ["[3, null]", "3", "\"a\"", "null"] {
            let e = serde_json::from_str::<Object<Inner>>(bad)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("expected a JSON object"), "{bad}: {e}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(&json!([1])), "a JSON array");
        assert_eq!(kind_of(&json!(null)), "null");
        assert_eq!(kind_of(&json!({})), "a JSON object");
    }
}
