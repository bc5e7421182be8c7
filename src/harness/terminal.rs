//! Turns raw terminal output into reply text: escape sequences (CSI, OSC, DCS, ...) are removed,
//! carriage returns dropped, UTF-8 split across reads joined, invalid bytes replaced by U+FFFD.

use vte::{Parser, Perform};

/// A streaming stripper: feed it reads in order, take the text each one completes.
#[derive(Default)]
pub struct TerminalText {
    parser: Parser,
    out: Collector,
}

#[derive(Default)]
struct Collector {
    text: String,
}

impl Perform for Collector {
    fn print(&mut self, c: char) {
        self.text.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => self.text.push('\n'),
            b'\t' => self.text.push('\t'),
            _ => {}
        }
    }
}

impl TerminalText {
    /// Consumes one read and returns the text it completed (possibly empty).
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.parser.advance(&mut self.out, bytes);
        std::mem::take(&mut self.out.text)
    }
}

/// Strips a whole buffer at once.
#[cfg(test)]
pub fn strip(bytes: &[u8]) -> String {
    TerminalText::default().feed(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_escapes_and_joins_split_utf8() {
        let mut term = TerminalText::default();
        let input = "\u{1b}[1;31mré\u{1b}[0m\r\n\u{1b}]0;title\u{7}done ✓\n".as_bytes();
        let mut text = String::new();
        for byte in input {
            text.push_str(&term.feed(std::slice::from_ref(byte)));
        }
        assert_eq!(text, "ré\ndone ✓\n");
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        assert_eq!(strip(b"a\xffb"), "a\u{fffd}b");
    }
}
