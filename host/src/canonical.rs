//! Canonical JSON: keys sorted by their bytes, no whitespace, numbers and strings as
//! serde_json writes them. One value has one encoding, so a digest or a signature over it
//! covers exactly one reading: a plugin's manifest, and the arguments an approval is bound to.

use serde_json::Value;

/// JSON with keys sorted by their bytes and no whitespace.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec");
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec"),
    }
}

/// `value` in canonical form.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_at_every_depth_and_nothing_else_changes() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b": [ {"z": 1, "a": "é"} ], "a": 1.5, "B": null}"#).unwrap();
        assert_eq!(
            String::from_utf8(super::to_vec(&value)).unwrap(),
            r#"{"B":null,"a":1.5,"b":[{"a":"é","z":1}]}"#
        );
    }
}
