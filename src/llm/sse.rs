//! Server-sent events, sans-I/O: bytes in, whole events out (the WHATWG HTML "event stream
//! interpretation"). Lines end with CRLF, LF or CR, wherever the chunks split them (a CR at
//! the end of one chunk and its LF at the start of the next are one line end); `:` starts a
//! comment; `data:` lines of one event are joined with LF; a blank line dispatches the event;
//! `id` and `retry` are read past. One leading space after the colon is dropped.
//!
//! Memory is bounded: the event being read (its `data` and the line not yet ended) is kept up
//! to `max` bytes. An event that grows past that is dropped whole ([`Event::Oversized`]) and
//! reading goes on at the next one: a reader of signals never needs an event it cannot hold.

/// What a dispatched event was.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `name` is the `event:` field (empty when none: the spec's default "message").
    Data { name: &'a [u8], data: &'a [u8] },
    /// It was longer than `max`: its data is gone.
    Oversized,
}

/// The most of an `event:` name kept (names are short words; a longer one is cut, which can
/// only make it unrecognised).
const MAX_NAME: usize = 64;

/// What a held `data: ` line has beyond its value.
const FIELD_SLACK: usize = 6;

/// An event stream being read.
#[derive(Debug)]
pub struct Splitter {
    max: usize,
    /// The line not yet ended (only the part after the field name for a `data` line, see
    /// `field`).
    line: Vec<u8>,
    /// The current event's data lines, joined.
    data: Vec<u8>,
    name: Vec<u8>,
    /// The last byte was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// The current event grew past `max`: dropped at its dispatch.
    over: bool,
    /// The current event has a data field (the spec dispatches only those).
    has_data: bool,
}

impl Splitter {
    pub fn new(max: usize) -> Self {
        Splitter {
            max,
            line: Vec::new(),
            data: Vec::new(),
            name: Vec::new(),
            after_cr: false,
            over: false,
            has_data: false,
        }
    }

    /// Reads `chunk`, calling `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        if chunk.is_empty() {
            return; // nothing, and a CR before it still waits for its LF
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match super::bytes::find2(chunk, b'\n', b'\r') {
                None => {
                    self.keep(chunk);
                    return;
                }
                Some(end) => {
                    let (line, rest) = chunk.split_at(end);
                    let mut rest = rest.get(1..).unwrap_or_default();
                    if chunk.get(end) == Some(&b'\r') {
                        match rest.first() {
                            Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    if self.line.is_empty() {
                        self.line_ended(line, &mut on_event);
                    } else {
                        self.keep(line);
                        let held = std::mem::take(&mut self.line);
                        self.line_ended(&held, &mut on_event);
                        self.line = held;
                        self.line.clear();
                    }
                    chunk = rest;
                }
            }
        }
    }

    /// Keeps a line's start until its end comes, within `max` with the event's data.
    fn keep(&mut self, part: &[u8]) {
        // A comment is dropped as it comes (servers pad streams with long ones); one `:` held
        // stands for it.
        if self.line.first() == Some(&b':') {
            return;
        }
        if self.line.is_empty() && part.first() == Some(&b':') {
            self.line.push(b':');
            return;
        }
        // The field name and its colon and space are held too; the event's own bound is
        // checked on the value, when the line ends.
        if !self.over && self.line.len() + self.data.len() + part.len() > self.max + FIELD_SLACK {
            self.over = true;
            self.line.clear();
            self.data.clear();
        }
        if self.over {
            // Nothing of the line is needed any more, but its end must not read as a blank
            // line: one byte stands for what was dropped.
            if self.line.is_empty() {
                self.line.push(b'x');
            }
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn line_ended(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if self.over {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                (line.get(..i).unwrap_or_default(), value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    self.over = true;
                    self.data.clear();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value.get(..MAX_NAME).unwrap_or(value));
            }
            _ => {} // id, retry, anything else
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        if self.over {
            on_event(Event::Oversized);
        } else if self.has_data {
            on_event(Event::Data { name: &self.name, data: &self.data });
        }
        self.data.clear();
        self.name.clear();
        self.line.clear();
        self.over = false;
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    /// What `input` dispatches, fed whole and split at every byte (and byte by byte).
    fn events(input: &[u8], max: usize) -> Vec<(String, String)> {
        let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
            let mut s = Splitter::new(max);
            let mut out = Vec::new();
            for c in chunks {
                s.feed(c, |e| {
                    out.push(match e {
                        Event::Data { name, data } => (
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(data).into_owned(),
                        ),
                        Event::Oversized => ("!".into(), String::new()),
                    })
                });
            }
            out
        };
        let whole = run(&mut std::iter::once(input));
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(run(&mut [a, b].into_iter()), whole, "split at {cut} of {input:?}");
        }
        assert_eq!(run(&mut input.chunks(1)), whole, "byte by byte");
        whole
    }

    fn ev(name: &str, data: &str) -> (String, String) {
        (name.into(), data.into())
    }

    #[test]
    fn events_end_at_blank_lines_whatever_the_line_ends() {
        let want = vec![ev("", "a"), ev("x", "b")];
        assert_eq!(events(b"data: a\n\nevent: x\ndata: b\n\n", 4096), want);
        assert_eq!(events(b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n", 4096), want);
        assert_eq!(events(b"data: a\r\revent: x\rdata: b\r\r", 4096), want);
        assert_eq!(events(b"data: a\n\r\nevent: x\r\ndata: b\r\r\n", 4096), want, "mixed");
    }

    #[test]
    fn comments_ids_and_multi_line_data_read_as_the_spec_says() {
        let input = b": keep-alive\nid: 7\nretry: 10\ndata: {\"a\":\ndata:1}\n\n:comment\n\ndata\n\n";
        assert_eq!(events(input, 4096), vec![ev("", "{\"a\":\n1}"), ev("", "")]);
        assert_eq!(events(b"event: ping\n\n", 4096), vec![], "no data: nothing dispatched");
        assert_eq!(events(b"data:  two spaces\n\n", 4096), vec![ev("", " two spaces")]);
        assert_eq!(events(b"data: no end", 4096), vec![], "an event not ended is not dispatched");
    }

    #[test]
    fn a_utf8_character_split_between_chunks_comes_out_whole() {
        let input = "data: {\"t\":\"幻灯片 é\"}\n\n".as_bytes();
        assert_eq!(events(input, 4096), vec![ev("", "{\"t\":\"幻灯片 é\"}")]);
    }

    #[test]
    fn an_event_longer_than_max_is_dropped_and_the_next_one_read() {
        let long = format!("data: {}\n\ndata: next\n\n", "y".repeat(100));
        assert_eq!(events(long.as_bytes(), 64), vec![ev("!", ""), ev("", "next")]);
        let many = format!("{}\ndata: next\n\n", "data: 0123456789\n".repeat(10));
        assert_eq!(events(many.as_bytes(), 64), vec![ev("!", ""), ev("", "next")]);
        let exact = format!("data: {}\n\n", "z".repeat(63));
        assert_eq!(events(exact.as_bytes(), 64), vec![ev("", &"z".repeat(63))]);
    }

    #[test]
    fn memory_stays_within_max_on_a_line_that_never_ends() {
        let mut s = Splitter::new(4096);
        for _ in 0..1000 {
            s.feed(&[b'a'; 1000], |_| {});
        }
        assert!(s.line.capacity() <= 8192 && s.data.capacity() <= 8192);
        let mut s = Splitter::new(4096);
        s.feed(b":", |_| {});
        for _ in 0..1000 {
            s.feed(&[b' '; 1000], |_| {});
        }
        assert!(s.line.capacity() <= 8, "a comment is not held");
        let mut got = Vec::new();
        s.feed(b"\ndata: after\n\n", |e| got.push(format!("{e:?}")));
        assert_eq!(got.len(), 1, "the event after a long comment is read: {got:?}");
    }
}
