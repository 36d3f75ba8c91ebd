//! YAML → JSON values that remember where each field came from.
//!
//! Manifests are read with a YAML 1.2 event parser and turned into `serde_json::Value`s, so
//! validation can use serde, while a side table maps every field path to its line and column
//! for error messages. Hostile input is bounded: total size, nesting depth and alias expansion.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
const MAX_DEPTH: usize = 64;
/// Upper bound on nodes produced, aliases included ("billion laughs" guard).
const MAX_NODES: usize = 1_000_000;

/// A position in a source file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
}

/// One YAML document: its value and where each field path sits in the source.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's content.
    pub value: Value,
    /// Where the document starts.
    pub start: Pos,
    spans: HashMap<String, Pos>,
}

impl Document {
    /// The position of `path` (e.g. `spec.components[1].type`), or of its closest known parent.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }
}

/// A YAML syntax error or a limit exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the problem is.
    pub pos: Pos,
    /// What the problem is.
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    Pos { line: span.start.line(), column: span.start.col() + 1 }
}

/// Parses every document in `source`.
pub fn parse_documents(source: &str) -> Result<Vec<Document>, YamlError> {
    if source.len() > MAX_MANIFEST_BYTES {
        return Err(YamlError {
            pos: Pos { line: 1, column: 1 },
            message: format!("manifest is {} bytes; the limit is {} bytes", source.len(), MAX_MANIFEST_BYTES),
        });
    }
    let mut builder = Builder::default();
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos { line: e.marker().line(), column: e.marker().col() + 1 },
            message: e.info().to_string(),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

enum Frame {
    Seq { anchor: usize, items: Vec<Value>, path: String },
    Map { anchor: usize, map: Map<String, Value>, path: String, key: Option<(String, Pos)> },
}

#[derive(Default)]
struct Builder {
    documents: Vec<Document>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    spans: HashMap<String, Pos>,
    doc_start: Pos,
    nodes: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = pos_of(&span);
        match event {
            Event::DocumentStart(_) => {
                self.spans.clear();
                self.anchors.clear();
                self.doc_start = pos;
            }
            Event::Scalar(text, style, anchor, tag) => {
                // A scalar in key position is a mapping key, not a value.
                if let Some(Frame::Map { key: key @ None, map, .. }) = self.stack.last_mut() {
                    if map.contains_key(text.as_ref()) {
                        return Err(YamlError {
                            pos,
                            message: format!("duplicate key \"{text}\" in mapping"),
                        });
                    }
                    *key = Some((text.into_owned(), pos));
                    return Ok(());
                }
                let tag_suffix = tag.as_ref().map(|t| t.suffix.as_str());
                let value = resolve_scalar(&text, style, tag_suffix);
                self.count(1, pos)?;
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.push_value(value, pos)?;
            }
            Event::Alias(id) => {
                if matches!(self.stack.last(), Some(Frame::Map { key: None, .. })) {
                    return Err(YamlError {
                        pos,
                        message: "aliases as mapping keys are not supported".into(),
                    });
                }
                let (value, size) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or(YamlError { pos, message: "alias refers to an unknown anchor".into() })?;
                self.count(size, pos)?;
                self.push_value(value, pos)?;
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.child_path(pos)?;
                self.enter(pos)?;
                self.stack.push(Frame::Seq { anchor, items: Vec::new(), path });
            }
            Event::MappingStart(anchor, _) => {
                let path = self.child_path(pos)?;
                self.enter(pos)?;
                self.stack.push(Frame::Map { anchor, map: Map::new(), path, key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { anchor, items, .. }) => (Value::Array(items), anchor),
                    Some(Frame::Map { anchor, map, .. }) => (Value::Object(map), anchor),
                    None => return Ok(()),
                };
                if anchor > 0 {
                    let size = count_nodes(&value);
                    self.anchors.insert(anchor, (value.clone(), size));
                }
                self.finish_collection(value, pos)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn enter(&mut self, pos: Pos) -> Result<(), YamlError> {
        if matches!(self.stack.last(), Some(Frame::Map { key: None, .. })) {
            return Err(YamlError {
                pos,
                message: "complex mapping keys (mappings or sequences as keys) are not supported".into(),
            });
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError { pos, message: format!("nesting deeper than {MAX_DEPTH} levels") });
        }
        self.count(1, pos)
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
            });
        }
        Ok(())
    }

    /// The path of the node about to start, recording its position.
    fn child_path(&mut self, pos: Pos) -> Result<String, YamlError> {
        let path = match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Map { key: Some((k, _)), path, .. }) => join(path, k),
            Some(Frame::Map { key: None, .. }) => return Ok(String::new()),
        };
        let at = match self.stack.last() {
            Some(Frame::Map { key: Some((_, key_pos)), .. }) => *key_pos,
            _ => pos,
        };
        self.spans.insert(path.clone(), at);
        Ok(path)
    }

    fn push_value(&mut self, value: Value, pos: Pos) -> Result<(), YamlError> {
        self.child_path(pos)?;
        self.finish_collection(value, pos)
    }

    fn finish_collection(&mut self, value: Value, pos: Pos) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => {
                self.documents.push(Document {
                    value,
                    start: self.doc_start,
                    spans: std::mem::take(&mut self.spans),
                });
                self.nodes = 0;
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some((k, _)) => {
                    map.insert(k, value);
                }
                None => {
                    return Err(YamlError { pos, message: "complex mapping keys are not supported".into() });
                }
            },
        }
        Ok(())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Resolves a scalar by the YAML 1.2 core schema: only plain scalars are typed, so
/// `yes`, `on` and `0777`-style strings that YAML 1.1 would coerce stay as written.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Value {
    match tag {
        Some("str") => return Value::String(text.to_string()),
        Some("null") => return Value::Null,
        _ => {}
    }
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n.into());
    }
    if looks_like_float(text)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let parsed = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        None
    }?;
    Some(if neg { -parsed } else { parsed })
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && t.bytes().any(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_follow_the_core_schema() {
        let docs = parse_documents(
            "a: yes\nb: on\nc: 0777\nd: 1e3\ne: true\nf: ~\ng: '8080'\nh: 0x1F\ni: -4\nj: 1.5\n",
        )
        .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": "yes", "b": "on", "c": 777, "d": 1000.0, "e": true, "f": null,
                   "g": "8080", "h": 31, "i": -4, "j": 1.5})
        );
    }

    #[test]
    fn positions_are_recorded_per_path() {
        let docs = parse_documents("spec:\n  components:\n    - name: a\n      type: x\n").unwrap();
        let d = &docs[0];
        assert_eq!(d.pos("spec.components[0].type"), Pos { line: 4, column: 7 });
        assert_eq!(d.pos("spec.components[0].name"), Pos { line: 3, column: 7 });
        // Unknown deeper paths fall back to the closest parent.
        assert_eq!(d.pos("spec.components[0].type.deeper[3]"), Pos { line: 4, column: 7 });
    }

    #[test]
    fn multiple_documents_are_split() {
        let docs = parse_documents("a: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].value, json!({"b": 2}));
        assert_eq!(docs[1].start.line, 2);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse_documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.message.contains("duplicate key \"a\""), "{err:?}");
        assert_eq!(err.pos.line, 3);
    }

    #[test]
    fn aliases_expand_but_bombs_are_refused() {
        let docs = parse_documents("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(docs[0].value, json!({"a": [1, 2], "b": [1, 2]}));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err:?}");
    }

    #[test]
    fn syntax_errors_and_limits_have_positions() {
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse_documents(&deep).unwrap_err().message.contains("nesting"));
        let huge = "a".repeat(MAX_MANIFEST_BYTES + 1);
        assert!(parse_documents(&huge).unwrap_err().message.contains("limit"));
        assert!(parse_documents("? [a]\n: b\n").is_err());
    }
}
