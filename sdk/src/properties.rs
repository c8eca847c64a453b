use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Plugin-specific properties as the host passed them: JSON text.
///
/// ```
/// #[derive(serde::Deserialize, Debug)]
/// #[serde(deny_unknown_fields)]
/// struct Props { size: u32 }
///
/// let p = infrakit_sdk::Properties::new(r#"{"size": "big"}"#);
/// let err = p.parse::<Props>().unwrap_err();
/// assert!(err.to_string().contains("`size`"), "{err}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(String);

impl Properties {
    /// Wraps JSON text.
    ///
    /// ```
    /// let p = infrakit_sdk::Properties::new("{}");
    /// assert_eq!(p.as_str(), "{}");
    /// ```
    pub fn new(json: impl Into<String>) -> Self {
        Properties(json.into())
    }

    /// The JSON text.
    ///
    /// ```
    /// assert_eq!(infrakit_sdk::Properties::new("[]").as_str(), "[]");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads the properties into `T`. Empty text (or `null`) reads as `{}`, so a type whose fields
    /// all have defaults accepts "no properties". A failure is [`Error::Invalid`] naming the field
    /// path, the problem and where in the text it is.
    ///
    /// ```
    /// #[derive(serde::Deserialize, Default)]
    /// #[serde(default, deny_unknown_fields)]
    /// struct Props { tags: Vec<String> }
    ///
    /// let p: Props = infrakit_sdk::Properties::new("").parse().unwrap();
    /// assert!(p.tags.is_empty());
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self.0.trim();
        let text = if text.is_empty() || text == "null" {
            "{}"
        } else {
            text
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                Error::Invalid(format!("properties: {inner}"))
            } else {
                Error::Invalid(format!("properties at `{path}`: {inner}"))
            }
        })
    }
}

impl From<String> for Properties {
    fn from(s: String) -> Self {
        Properties(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Props {
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn nested_field_is_named() {
        let err = Properties::new(r#"{"inner": {"count": -1}}"#)
            .parse::<Props>()
            .unwrap_err();
        assert!(err.to_string().contains("`inner.count`"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Properties::new(r#"{"inner": {"count": 1, "cuont": 2}}"#)
            .parse::<Props>()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cuont") && msg.contains("`inner"), "{msg}");
    }

    #[test]
    fn malformed_json_is_invalid() {
        let err = Properties::new("{").parse::<Props>().unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
    }
}
