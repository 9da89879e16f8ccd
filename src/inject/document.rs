//! A JSON Patch document written as text while it is built.
//!
//! The webhook sends the patch as bytes, so building it as `json_patch` values first (every
//! container and volume turned into a tree of `serde_json::Value`s, then the tree written out)
//! only costs allocations: on the webhook's hot path that was most of the patch's share of the
//! CPU. Each `add` operation is written once, straight from the typed value; tests and callers
//! that want to look inside parse it back with [`PatchDocument::operations`].

use json_patch::jsonptr::PointerBuf;
use serde::Serialize;

/// A finished JSON Patch: a JSON array of operations, as the API server receives it.
#[derive(Clone, PartialEq, Eq)]
pub struct PatchDocument {
    text: Vec<u8>,
    operations: usize,
}

impl PatchDocument {
    /// The document's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.text
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.operations
    }

    pub fn is_empty(&self) -> bool {
        self.operations == 0
    }

    /// The operations as `json_patch` values (parsed back from the text), to inspect or apply.
    pub fn operations(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(&self.text)
    }
}

impl std::fmt::Debug for PatchDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

/// Writes `add` operations one after the other.
pub(super) struct PatchWriter {
    text: Vec<u8>,
    operations: usize,
}

impl PatchWriter {
    /// Room for a typical injection's patch (3–5 KB) from the start.
    pub fn new() -> Self {
        let mut text = Vec::with_capacity(4096);
        text.push(b'[');
        PatchWriter {
            text,
            operations: 0,
        }
    }

    /// Appends `{"op":"add","path":<path>,"value":<value>}`.
    pub fn add(
        &mut self,
        path: &PointerBuf,
        value: &impl Serialize,
    ) -> Result<(), serde_json::Error> {
        self.open(path)?;
        serde_json::to_writer(&mut self.text, value)?;
        self.close();
        Ok(())
    }

    /// Appends an `add` whose value is `json`, rendered earlier.
    pub fn add_json(&mut self, path: &PointerBuf, json: &[u8]) -> Result<(), serde_json::Error> {
        self.open(path)?;
        self.text.extend_from_slice(json);
        self.close();
        Ok(())
    }

    /// Appends an `add` whose value is the array of `items`, each rendered earlier.
    pub fn add_json_array(
        &mut self,
        path: &PointerBuf,
        items: &[Vec<u8>],
    ) -> Result<(), serde_json::Error> {
        self.open(path)?;
        self.text.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.text.push(b',');
            }
            self.text.extend_from_slice(item);
        }
        self.text.push(b']');
        self.close();
        Ok(())
    }

    /// Everything of an operation before its value.
    fn open(&mut self, path: &PointerBuf) -> Result<(), serde_json::Error> {
        if self.operations > 0 {
            self.text.push(b',');
        }
        self.text.extend_from_slice(br#"{"op":"add","path":"#);
        serde_json::to_writer(&mut self.text, path.as_str())?;
        self.text.extend_from_slice(br#","value":"#);
        Ok(())
    }

    fn close(&mut self) {
        self.text.push(b'}');
        self.operations += 1;
    }

    pub fn finish(mut self) -> PatchDocument {
        self.text.push(b']');
        PatchDocument {
            text: self.text,
            operations: self.operations,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_read_back_as_json_patch_values_with_escaped_paths() {
        let mut writer = PatchWriter::new();
        let labels = PointerBuf::from_tokens(["metadata", "labels", "credvend.io/binding"]);
        writer.add(&labels, &"s3-reader").unwrap();
        writer
            .add(
                &PointerBuf::from_tokens(["spec", "volumes"]),
                &[json!({"name": "a \"quoted\" name"})],
            )
            .unwrap();
        let doc = writer.finish();
        assert_eq!(doc.len(), 2);
        let expected: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/labels/credvend.io~1binding", "value": "s3-reader"},
            {"op": "add", "path": "/spec/volumes", "value": [{"name": "a \"quoted\" name"}]},
        ]))
        .unwrap();
        assert_eq!(doc.operations().unwrap(), expected);
    }

    #[test]
    fn rendered_values_are_written_as_they_are() {
        let mut writer = PatchWriter::new();
        let volumes = PointerBuf::from_tokens(["spec", "volumes"]);
        writer
            .add_json_array(
                &volumes,
                &[br#"{"name":"a"}"#.to_vec(), br#"{"name":"b"}"#.to_vec()],
            )
            .unwrap();
        writer
            .add_json(&volumes.with_trailing_token("-"), br#"{"name":"c"}"#)
            .unwrap();
        writer.add_json_array(&volumes, &[]).unwrap();
        let doc = writer.finish();
        assert_eq!(doc.len(), 3);
        let expected: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/volumes", "value": [{"name": "a"}, {"name": "b"}]},
            {"op": "add", "path": "/spec/volumes/-", "value": {"name": "c"}},
            {"op": "add", "path": "/spec/volumes", "value": []},
        ]))
        .unwrap();
        assert_eq!(doc.operations().unwrap(), expected);
    }

    #[test]
    fn an_empty_document_is_an_empty_array() {
        let doc = PatchWriter::new().finish();
        assert!(doc.is_empty());
        assert_eq!(doc.as_bytes(), b"[]");
        assert_eq!(doc.operations().unwrap(), json_patch::Patch(vec![]));
    }
}
