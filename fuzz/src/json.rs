//! "The patched object still holds everything the user wrote."

use serde_json::Value;

/// Whether `original` survives inside `patched`: every key of an object is still there with a
/// surviving value (or was null), every array's items appear in the same order (items may have been added
/// anywhere), and every scalar is unchanged. A patch of `add`s that neither removes nor
/// rewrites a user's field passes; one that replaces a value, drops a key or reorders a list
/// does not.
pub fn survives(original: &Value, patched: &Value) -> bool {
    match (original, patched) {
        // A null member is an absent one to Kubernetes: filling it in loses nothing.
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| v.is_null() || b.get(k).is_some_and(|w| survives(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            // Earliest-match embedding is optimal for a subsequence test: matching an item
            // as early as possible leaves the most room for the ones after it.
            let mut rest = b.iter();
            a.iter().all(|v| rest.any(|w| survives(v, w)))
        }
        (a, b) => a == b,
    }
}

/// The first path at which `original` does not survive in `patched`, for a failure message.
pub fn first_loss(original: &Value, patched: &Value, path: &str) -> Option<String> {
    match (original, patched) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            _ if v.is_null() => None,
            None => Some(format!("{path}/{k} removed")),
            Some(w) => first_loss(v, w, &format!("{path}/{k}")),
        }),
        _ if survives(original, patched) => None,
        _ => Some(format!("{path}: {original} became {patched}")),
    }
}

/// Checks the oracle itself; the targets call it once.
pub fn self_check() {
    use serde_json::json;
    let a = json!({"m": {"x": 1}, "l": [1, 2], "s": "v"});
    assert!(survives(
        &a,
        &json!({"m": {"x": 1, "y": 2}, "l": [0, 1, 5, 2], "s": "v", "n": 1})
    ));
    assert!(!survives(
        &a,
        &json!({"m": {"x": 2}, "l": [1, 2], "s": "v"})
    ));
    assert!(!survives(
        &a,
        &json!({"m": {"x": 1}, "l": [2, 1], "s": "v"})
    ));
    assert!(!survives(&a, &json!({"m": {"x": 1}, "l": [1, 2]})));
    assert!(first_loss(&a, &json!({"m": {}, "l": [1, 2], "s": "v"}), "").is_some());
}
