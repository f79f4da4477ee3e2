//! Where each field of a YAML file is, by field path.
//!
//! serde reports positions only for the values it fails on. Airlock also refuses
//! fields that parse fine but that this build does not act on, and semantic errors
//! (a duplicate channel, a bad image reference) found after parsing; those errors
//! must point at the line too. This index maps every field path, written the way
//! `serde_yaml_ng` writes it in its own errors (`mirror.additionalImages[0].name`), to
//! the position of its key, so both kinds of error read the same.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Field positions of one YAML document.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    fields: HashMap<String, Pos>,
    start: Option<Pos>,
}

impl Positions {
    /// The position of `path`, or of its nearest ancestor that has one, or of the
    /// document start: an error always gets a line, if not always the exact one.
    pub fn of(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.fields.get(p) {
                return Some(*pos);
            }
            match p.rfind(['.', '[']) {
                Some(cut) if cut > 0 => p = &p[..cut],
                _ => return self.start,
            }
        }
    }

    /// Every field path of the document.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.fields.keys()
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Indexer {
    docs: Vec<Positions>,
    stack: Vec<Frame>,
}

fn pos(span: Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

impl Indexer {
    /// The path of the node that starts now, and records where it starts.
    fn node_path(&mut self, at: Pos) -> String {
        let doc = self.docs.last_mut();
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { key, .. }) => key.take().unwrap_or_default(),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                if let Some(doc) = doc {
                    doc.fields.insert(p.clone(), at);
                }
                p
            }
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Indexer {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let at = pos(span);
        match ev {
            Event::DocumentStart(_) => {
                self.docs.push(Positions {
                    start: Some(at),
                    ..Positions::default()
                });
                self.stack.clear();
            }
            Event::MappingStart(..) => {
                let path = self.node_path(at);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(at);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let full = if path.is_empty() {
                        value.to_string()
                    } else {
                        format!("{path}.{value}")
                    };
                    if let Some(doc) = self.docs.last_mut() {
                        doc.fields.insert(full.clone(), at);
                    }
                    *key = Some(full);
                } else {
                    self.node_path(at);
                }
            }
            Event::Alias(_) => {
                self.node_path(at);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}

/// Indexes every document of `text`. A syntax error yields the documents read so far;
/// the serde pass reports the error itself with its position.
pub fn index(text: &str) -> Vec<Positions> {
    let mut indexer = Indexer::default();
    let _ = Parser::new_from_str(text).load(&mut indexer, true);
    indexer.docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_sequence_items_like_serde_paths() {
        let text = "# comment\n---\napiVersion: v\nmirror:\n  additionalImages:\n  - name: a\n  - name: b\n    targetTag: t\n---\nkind: K\n";
        let docs = index(text);
        assert_eq!(docs.len(), 2);
        let d = &docs[0];
        assert_eq!(d.of("apiVersion"), Some(Pos { line: 3, column: 1 }));
        assert_eq!(
            d.of("mirror.additionalImages"),
            Some(Pos { line: 5, column: 3 })
        );
        assert_eq!(
            d.of("mirror.additionalImages[1]"),
            Some(Pos { line: 7, column: 5 })
        );
        assert_eq!(
            d.of("mirror.additionalImages[1].targetTag"),
            Some(Pos { line: 8, column: 5 })
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(
            d.of("mirror.additionalImages[1].nope"),
            Some(Pos { line: 7, column: 5 })
        );
        assert_eq!(
            docs[1].of("kind"),
            Some(Pos {
                line: 10,
                column: 1
            })
        );
    }
}
