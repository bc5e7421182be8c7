//! Turns raw terminal output into reply text: escape sequences (CSI, OSC, DCS, ...) are removed,
//! carriage returns dropped, UTF-8 split across reads joined, invalid bytes replaced by U+FFFD.

use vte::{Parser, Perform};

/// A streaming stripper: feed it reads in order, take the text each one completes.
#[derive(Default)]
pub struct TerminalText {
    parser: Parser,
    out: Collector,
    /// The start of a UTF-8 character that the last read cut off, held until the rest arrives
    /// (the parser itself must only ever see whole characters).
    carry: Vec<u8>,
}

#[derive(Default)]
struct Collector {
    text: String,
}

impl Perform for Collector {
    fn print(&mut self, c: char) {
        // The parser prints DEL and C1 controls (U+0080..=U+009F, which some terminals still
        // obey, e.g. U+009B as CSI); reply text keeps no control character but newline and tab.
        if !c.is_control() {
            self.text.push(c);
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => self.text.push('\n'),
            b'\t' => self.text.push('\t'),
            _ => {}
        }
    }
}

/// How many trailing bytes form the beginning of a UTF-8 character that is not complete yet.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let width = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if back < width { back } else { 0 };
    }
    0
}

impl TerminalText {
    /// Consumes one read and returns the text it completed (possibly empty).
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        let mut joined;
        let whole: &[u8] = if self.carry.is_empty() {
            bytes
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(bytes);
            &joined
        };
        let cut = whole.len() - incomplete_tail(whole);
        self.parser.advance(&mut self.out, &whole[..cut]);
        self.carry = whole[cut..].to_vec();
        std::mem::take(&mut self.out.text)
    }

    /// Ends the stream: a character still cut off becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            return String::new();
        }
        self.carry.clear();
        '\u{fffd}'.to_string()
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
    fn joins_characters_cut_between_reads_without_losing_neighbours() {
        let mut term = TerminalText::default();
        let mut text = String::new();
        for read in [
            &b"caf\xc3"[..],
            b"\xa9 \xe2\x9c",
            b"\x93 \xf0\x9f",
            b"\xa6\x80!\n",
        ] {
            text.push_str(&term.feed(read));
        }
        text.push_str(&term.finish());
        assert_eq!(text, "caf\u{e9} \u{2713} \u{1f980}!\n");
        assert_eq!(term.feed(b"x\xe2\x9c"), "x");
        assert_eq!(term.finish(), "\u{fffd}");
    }

    #[test]
    fn drops_del_and_c1_controls() {
        assert_eq!(
            strip("a\u{9b}31mb\u{85}c\u{7f}d\u{8}e\r\n".as_bytes()),
            "a31mbcde\n"
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        assert_eq!(strip(b"a\xffb"), "a\u{fffd}b");
    }
}
