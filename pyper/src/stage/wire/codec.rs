//! Items and outputs as bytes: postcard's format, with the user's own message when a
//! `Serialize` impl fails.
//!
//! postcard drops the message of `serde::ser::Error::custom` (its error is a bare
//! "Serde Serialization Error"), and that message is usually the only useful part. So when
//! postcard reports a custom error, the value is serialized once more into [`Catch`], a
//! serializer that writes nothing and keeps the message. That second pass is on the error
//! path only; a `Serialize` impl that fails is expected to fail the same way twice.

use std::fmt::{self, Display};

use serde::ser::{self, Serialize};

/// The most bytes an encoded item or output may have: what one message between processes
/// carries (256 MiB) less its framing (a tag, and, in a batch, the item's length).
pub(crate) const MAX_BYTES: usize = (256 << 20) - 5;

/// Why `what`, of `bytes` bytes, cannot be sent.
pub(crate) fn too_big(what: &str, bytes: usize) -> String {
    format!("{what} is {bytes} bytes, over the 256 MiB limit of a message between processes")
}

/// Encodes `value`, which is `what` ("the item", "the output") in errors.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>, String> {
    let bytes = postcard::to_stdvec(value).map_err(|error| {
        let why = match error {
            postcard::Error::SerdeSerCustom => custom_message(value),
            _ => None,
        };
        format!(
            "cannot encode {what}: {}",
            why.unwrap_or_else(|| error.to_string())
        )
    })?;
    if bytes.len() > MAX_BYTES {
        return Err(too_big(what, bytes.len()));
    }
    Ok(bytes)
}

/// The message a `Serialize` impl gave `serde::ser::Error::custom`, if it gives one again.
fn custom_message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    value.serialize(Catch).err().map(|Caught(message)| message)
}

/// A serializer that discards what it is given and keeps the message of a custom error.
struct Catch;

/// The message of a custom error.
#[derive(Debug)]
struct Caught(String);

impl Display for Caught {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Caught {}

impl ser::Error for Caught {
    fn custom<T: Display>(message: T) -> Self {
        Caught(message.to_string())
    }
}

/// Serializer methods that take a value and discard it.
macro_rules! discard {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(fn $method(self, _: $type) -> Result<(), Caught> {
            Ok(())
        })*
    };
}

impl ser::Serializer for Catch {
    type Ok = ();
    type Error = Caught;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    discard!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<(), Caught> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Caught> {
        value.serialize(Catch)
    }

    fn serialize_unit(self) -> Result<(), Caught> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), Caught> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Caught> {
        value.serialize(Catch)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Caught> {
        value.serialize(Catch)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Caught> {
        Ok(Catch)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Caught> {
        Ok(Catch)
    }

    /// As postcard says, so that an impl that asks takes the same path.
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The compound serializers: each element goes through [`Catch`] too.
macro_rules! compound {
    ($($trait:ident::$method:ident($($key:ty),*)),* $(,)?) => {
        $(impl ser::$trait for Catch {
            type Ok = ();
            type Error = Caught;

            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)* value: &T) -> Result<(), Caught> {
                value.serialize(Catch)
            }

            fn end(self) -> Result<(), Caught> {
                Ok(())
            }
        })*
    };
}

compound!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl ser::SerializeMap for Catch {
    type Ok = ();
    type Error = Caught;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Caught> {
        key.serialize(Catch)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Caught> {
        value.serialize(Catch)
    }

    fn end(self) -> Result<(), Caught> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails deep inside a value, as a field of a field in a list.
    struct Picky(u32);

    impl Serialize for Picky {
        fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                13 => Err(ser::Error::custom("13 is unlucky")),
                n => serializer.serialize_u32(n),
            }
        }
    }

    #[derive(serde::Serialize)]
    struct Row {
        name: String,
        cells: Vec<Option<Picky>>,
    }

    #[test]
    fn a_custom_error_keeps_its_message() {
        let row = |n| Row {
            name: "row".into(),
            cells: vec![Some(Picky(1)), None, Some(Picky(n))],
        };
        assert!(encode(&row(2), "the item").is_ok());
        let error = encode(&row(13), "the item").unwrap_err();
        assert_eq!(error, "cannot encode the item: 13 is unlucky");
    }
}
