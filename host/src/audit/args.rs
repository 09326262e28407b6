//! A call's arguments in the log: always their digest, their contents only on a rule's opt-in,
//! with the parts it names erased or masked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The sha256 of the arguments' canonical JSON (sorted keys, no spaces): the same arguments
/// give the same digest however the client spelled them.
pub fn args_sha256(args: &Value) -> String {
    crate::digest::sha256_hex(&crate::canonical::to_vec(args))
}

/// A rule's `log_args`: log this tool's arguments, without what these JSON pointers name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgsLogging {
    /// Removed from the logged arguments (`/apiKey`, `/headers/authorization`).
    #[serde(default)]
    pub erase: Vec<String>,
    /// Kept as `"***"`: the reader sees the member was there, not what it held.
    #[serde(default)]
    pub mask: Vec<String>,
}

/// Arguments as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedArgs {
    /// The arguments, erased and masked.
    pub value: Value,
    /// The pointers that were erased (those that named something).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
    /// The pointers that were masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
}

impl ArgsLogging {
    /// Checks the pointers: each must be empty or start with `/`.
    pub fn check(&self) -> Result<(), String> {
        for pointer in self.erase.iter().chain(&self.mask) {
            if pointer.is_empty() || !pointer.starts_with('/') {
                return Err(format!(
                    "`{pointer}` is not a JSON pointer into the arguments: write `/name` or `/outer/inner`"
                ));
            }
        }
        Ok(())
    }

    /// `args` as the log shows them.
    pub fn apply(&self, args: &Value) -> LoggedArgs {
        let mut value = args.clone();
        let mut erased = Vec::new();
        let mut masked = Vec::new();
        for pointer in &self.erase {
            if erase(&mut value, pointer) {
                erased.push(pointer.clone());
            }
        }
        for pointer in &self.mask {
            if let Some(slot) = value.pointer_mut(pointer) {
                *slot = Value::String("***".into());
                masked.push(pointer.clone());
            }
        }
        LoggedArgs {
            value,
            erased,
            masked,
        }
    }
}

/// Removes what `pointer` names: a member of an object, or an element of an array.
fn erase(value: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(object)) => object.shift_remove(&key).is_some(),
        Some(Value::Array(items)) => match key.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn erased_and_masked_parts_never_reach_the_log_and_are_listed() {
        let logging = ArgsLogging {
            erase: vec!["/apiKey".into(), "/nested/a~1b".into(), "/absent".into()],
            mask: vec!["/token".into(), "/list/0".into()],
        };
        let args = json!({"apiKey": "sk-secret", "token": "t-secret", "keep": 1,
            "nested": {"a/b": "x-secret", "c": 2}, "list": ["l-secret", "ok"]});
        let logged = logging.apply(&args);
        let text = serde_json::to_string(&logged).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(
            logged.value,
            json!({"token": "***", "keep": 1, "nested": {"c": 2}, "list": ["***", "ok"]})
        );
        assert_eq!(logged.erased, ["/apiKey", "/nested/a~1b"]);
        assert_eq!(logged.masked, ["/token", "/list/0"]);
    }

    #[test]
    fn the_digest_ignores_spelling() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": "\u00e9"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"é","b":1}"#).unwrap();
        assert_eq!(args_sha256(&a), args_sha256(&b));
        assert_ne!(args_sha256(&a), args_sha256(&json!({"a": "é", "b": 2})));
    }

    #[test]
    fn pointers_are_checked() {
        let bad = ArgsLogging {
            erase: vec!["apiKey".into()],
            mask: vec![],
        };
        assert!(bad.check().unwrap_err().contains("JSON pointer"));
    }
}
