//! Maps field paths (`routes[2].ttl`) to their line and column in the YAML source, so
//! errors found after deserialisation still point at the input.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Positions of every mapping value and sequence item, by field path.
#[derive(Debug, Default)]
pub struct Locations {
    positions: HashMap<String, (usize, usize)>,
}

impl Locations {
    pub fn index(source: &str) -> Self {
        let mut recv = Recorder::default();
        // A syntax error is reported by yaml_serde with its own location; the index is
        // then simply incomplete.
        let _ = Parser::new_from_str(source).load(&mut recv, false);
        Locations {
            positions: recv.positions,
        }
    }

    /// Position of `path`, or of its nearest ancestor that exists in the source.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(pos) = self.positions.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Recorder {
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(k) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => path.push_str(&format!("[{index}]")),
            }
        }
        path
    }

    /// True when the next node is a mapping key rather than a value.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }

    fn record_value(&mut self, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        self.positions.entry(self.path()).or_insert(pos);
    }

    /// A value has been consumed: the parent moves to its next key or item.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if self.expecting_key() {
                    // A mapping is located at its first key.
                    self.record_value(mark);
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                } else {
                    self.record_value(mark);
                    self.advance();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expecting_key() {
                    // Complex keys do not occur in routes.yaml; treat as a value.
                    return;
                }
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    self.record_value(mark);
                    Frame::Seq { index: 0 }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields_and_falls_back_to_ancestors() {
        let src = "listen: 1\nroutes:\n  - path: /a\n    ttl: 5 m\n  - path: /b\n    key: { query: [x, y] }\n";
        let loc = Locations::index(src);
        assert_eq!(loc.find("listen"), Some((1, 9)));
        assert_eq!(loc.find("routes[0].ttl"), Some((4, 10)));
        assert_eq!(loc.find("routes[1].path"), Some((5, 11)));
        assert_eq!(loc.find("routes[1].key.query[1]"), Some((6, 23)));
        // Missing field: the enclosing mapping.
        assert_eq!(loc.find("routes[1].upstream"), Some((5, 5)));
    }
}
