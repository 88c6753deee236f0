#![allow(clippy::indexing_slicing, clippy::unwrap_used)]
//! Each format's answers as its provider documents them, fed whole, split at every byte and byte
//! by byte (STYLE.md 15): the same answer whatever the split.

use super::*;

/// The answer `body` gives, checked to be the same at every split point; and the index of the
/// byte whose chunk first reported the first token, when fed byte by byte.
fn read(framing: Framing, body: &[u8], clean: bool, status: u16) -> (Answer, Option<usize>) {
    let whole = {
        let mut r = Reader::new(framing, 65536);
        r.feed(body);
        r.end(clean, Some(status))
    };
    for cut in 0..=body.len() {
        let (a, b) = body.split_at(cut);
        let mut r = Reader::new(framing, 65536);
        r.feed(a);
        r.feed(b);
        assert_eq!(r.end(clean, Some(status)), whole, "split at {cut}");
    }
    let mut r = Reader::new(framing, 65536);
    let mut first = None;
    for (i, b) in body.chunks(1).enumerate() {
        if r.feed(b) {
            assert!(first.is_none(), "the first token is reported once");
            first = Some(i);
        }
    }
    assert_eq!(r.end(clean, Some(status)), whole, "byte by byte");
    let mut all = Reader::exhaustive(framing, 65536);
    all.feed(body);
    assert_eq!(all.end(clean, Some(status)), whole, "skipping quiet events changed the answer");
    (whole, first)
}

/// An answer's tokens and ending.
fn tf(a: Answer) -> (Tokens, Finish) {
    (a.tokens, a.finish)
}

fn sse(body: &str) -> (Answer, Option<usize>) {
    read(Framing::Sse, body.as_bytes(), true, 200)
}

fn json(body: &str) -> Answer {
    read(Framing::Json, body.as_bytes(), true, 200).0
}

fn tokens(input: u64, output: u64, cached: Option<u64>, reasoning: Option<u64>) -> Tokens {
    Tokens { input: Some(input), output: Some(output), cached, reasoning }
}

const OPENAI_CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn openai_chat_stream_with_usage() {
    let (a, first) = sse(OPENAI_CHAT_STREAM);
    assert_eq!(tf(a), (tokens(12, 7, Some(4), Some(2)), Finish::Length));
    let second_event = OPENAI_CHAT_STREAM.find("\"Hé\"").unwrap();
    assert!(first.unwrap() > second_event, "the role-only chunk carries no token");
    assert_eq!(a.log_line(Some(35)), "in=12 out=7 cached=4 reasoning=2 first_token_ms=35 finish=length");
}

#[test]
fn a_stream_cut_before_its_final_event_is_aborted() {
    let cut = OPENAI_CHAT_STREAM.replace("data: [DONE]\n\n", "");
    let (a, _) = sse(&cut);
    assert_eq!(a.finish, Finish::Aborted);
    assert_eq!(a.tokens.output, Some(7), "what came is still counted");
    let mut r = Reader::new(Framing::Sse, 65536);
    r.feed(OPENAI_CHAT_STREAM.as_bytes());
    assert_eq!(r.end(false, Some(200)).finish, Finish::Length, "a reset after the final event");
    let (a, _) = read(Framing::Sse, b": nothing known\n\ndata: {}\n\n", true, 200);
    assert_eq!(a.finish, Finish::Unknown, "a stream of nothing recognised is unknown, not aborted");
    let (a, _) = read(Framing::Sse, OPENAI_CHAT_STREAM.as_bytes(), true, 503);
    assert_eq!(a.finish, Finish::Error, "a 5xx is an error");
}

#[test]
fn openai_chat_tool_calls_and_crlf_and_comments() {
    let body = concat!(
        ": OPENROUTER PROCESSING\r\n\r\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );
    let (a, first) = sse(body);
    assert_eq!(a.finish, Finish::ToolCalls);
    assert_eq!(a.tokens, Tokens::default(), "no usage asked: no counts");
    assert!(first.unwrap() < body.find("tool_calls\"}").unwrap());
}

#[test]
fn openai_chat_json_and_completions() {
    let chat = r#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"there\"","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    assert_eq!(tf(json(chat)), (tokens(9, 12, Some(0), Some(0)), Finish::Stop));
    let completion = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"x","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":16,"total_tokens":21}}"#;
    assert_eq!(tf(json(completion)), (tokens(5, 16, None, None), Finish::Length));
    let stream = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"x\",\"index\":0,\"finish_reason\":null}]}\n\ndata: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";
    let (a, first) = sse(stream);
    assert_eq!(tf(a), (tokens(5, 1, None, None), Finish::Stop));
    assert!(first.is_some());
    let filtered = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}]}"#;
    assert_eq!(json(filtered).finish, Finish::ContentFilter);
    let function = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{}"}},"finish_reason":"function_call"}]}"#;
    assert_eq!(json(function).finish, Finish::ToolCalls);
}

#[test]
fn a_json_answer_s_first_token_is_its_first_byte_and_a_cut_one_is_aborted() {
    let (_, first) = read(Framing::Json, b"{\"choices\":[]}", true, 200);
    assert_eq!(first, Some(0));
    let (a, _) = read(Framing::Json, b"{\"object\":\"chat.completion\",\"choi", false, 200);
    assert_eq!(a.finish, Finish::Aborted);
    let (a, _) = read(Framing::Json, b"not json", true, 200);
    assert_eq!(tf(a), (Tokens::default(), Finish::Unknown));
    let (a, _) =
        read(Framing::Json, br#"{"error":{"message":"overloaded","type":"server_error"}}"#, true, 500);
    assert_eq!(a.finish, Finish::Error);
    let (a, _) =
        read(Framing::Json, br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#, true, 400);
    assert_eq!(a.finish, Finish::Unknown, "a client's error is not the version's");
}

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"incomplete_details\":null,\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":8},\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":20},\"total_tokens\":123}}}\n\n",
);

#[test]
fn responses_api_stream_and_json() {
    let (a, first) = sse(RESPONSES_STREAM);
    assert_eq!(tf(a), (tokens(36, 87, Some(8), Some(20)), Finish::Stop));
    assert!(first.unwrap() > RESPONSES_STREAM.find("\"delta\":\"Hi\"").unwrap());
    let incomplete = RESPONSES_STREAM.replace("response.completed", "response.incomplete").replace(
        "\"status\":\"completed\",\"incomplete_details\":null",
        "\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"}",
    );
    assert_eq!(sse(&incomplete).0.finish, Finish::Length);
    let filtered = incomplete.replace("max_output_tokens", "content_filter");
    assert_eq!(sse(&filtered).0.finish, Finish::ContentFilter);
    let cut = &RESPONSES_STREAM[..RESPONSES_STREAM.find("event: response.completed").unwrap()];
    assert_eq!(sse(cut).0.finish, Finish::Aborted);
    let body = r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","error":null,"incomplete_details":null,"output":[{"type":"function_call","id":"fc_1","call_id":"call_1","name":"f","arguments":"{}","status":"completed"}],"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":0},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":15}}"#;
    assert_eq!(tf(json(body)), (tokens(10, 5, Some(0), Some(0)), Finish::Stop));
    let error = "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"x\",\"param\":null,\"sequence_number\":1}\n\n";
    assert_eq!(sse(error).0.finish, Finish::Error);
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_messages_stream_and_json() {
    let (a, first) = sse(ANTHROPIC_STREAM);
    assert_eq!(tf(a), (tokens(25, 15, Some(10), None), Finish::Length));
    assert!(first.unwrap() > ANTHROPIC_STREAM.find("\"Hello\"").unwrap(), "an empty text block is no token");
    let thinking = ANTHROPIC_STREAM.replace(
        "{\"type\":\"text_delta\",\"text\":\"Hello\"}",
        "{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}",
    );
    assert_eq!(sse(&thinking).1, None, "thinking is not output");
    let tool = ANTHROPIC_STREAM
        .replace(
            "{\"type\":\"text\",\"text\":\"\"}",
            "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}",
        )
        .replace("max_tokens", "tool_use");
    let (a, first) = sse(&tool);
    assert_eq!(a.finish, Finish::ToolCalls);
    assert!(first.unwrap() < tool.find("event: ping").unwrap(), "a tool_use block starts the output");
    for (reason, want) in
        [("end_turn", Finish::Stop), ("stop_sequence", Finish::Stop), ("refusal", Finish::ContentFilter)]
    {
        let body = format!(
            r#"{{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{{"type":"text","text":"Hi"}}],"stop_reason":"{reason}","stop_sequence":null,"usage":{{"input_tokens":2095,"output_tokens":503,"cache_read_input_tokens":7}}}}"#
        );
        assert_eq!(tf(json(&body)), (tokens(2095, 503, Some(7), None), want));
    }
    let overloaded = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    assert_eq!(sse(overloaded).0.finish, Finish::Error);
}

#[test]
fn dify_streams_and_blocking_answers() {
    let body = concat!(
        "data: {\"event\": \"workflow_started\", \"task_id\": \"t\"}\n\n",
        "data: {\"event\": \"message\", \"task_id\": \"t\", \"message_id\": \"m\", \"conversation_id\": \"c\", \"answer\": \" I\", \"created_at\": 1705395332}\n\n",
        "event: ping\n\n",
        "data: {\"event\": \"message_end\", \"task_id\": \"t\", \"id\": \"m\", \"message_id\": \"m\", \"conversation_id\": \"c\", \"metadata\": {\"usage\": {\"prompt_tokens\": 1033, \"prompt_unit_price\": \"0.001\", \"completion_tokens\": 135, \"total_tokens\": 1168, \"currency\": \"USD\", \"latency\": 1.38}, \"retriever_resources\": []}}\n\n",
    );
    let (a, first) = sse(body);
    assert_eq!(tf(a), (tokens(1033, 135, None, None), Finish::Stop));
    assert!(first.is_some());
    let agent = body.replace("\"event\": \"message\"", "\"event\": \"agent_message\"");
    assert_eq!(sse(&agent).0.finish, Finish::Stop);
    let error = "data: {\"event\": \"message\", \"answer\": \"x\"}\n\ndata: {\"event\": \"error\", \"task_id\": \"t\", \"message_id\": \"m\", \"status\": 400, \"code\": \"invalid_param\", \"message\": \"x\"}\n\n";
    assert_eq!(sse(error).0.finish, Finish::Error);
    let cut = &body[..body.find("data: {\"event\": \"message_end\"").unwrap()];
    assert_eq!(sse(cut).0.finish, Finish::Aborted);
    let blocking = r#"{"event": "message", "task_id": "t", "id": "m", "message_id": "m", "conversation_id": "c", "mode": "chat", "answer": "iPhone 13 Pro Max", "metadata": {"usage": {"prompt_tokens": 1033, "completion_tokens": 128, "total_tokens": 1161}}, "created_at": 1705407629}"#;
    assert_eq!(tf(json(blocking)), (tokens(1033, 128, None, None), Finish::Stop));
}

#[test]
fn an_event_or_answer_longer_than_max_loses_only_its_signals() {
    let long = format!(
        "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
        "w".repeat(5000)
    );
    let body = format!("{long}{}", &OPENAI_CHAT_STREAM[OPENAI_CHAT_STREAM.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap()..]);
    let mut r = Reader::new(Framing::Sse, 4096);
    assert!(!r.feed(body.as_bytes()), "the long event's token is lost");
    assert_eq!(tf(r.end(true, Some(200))), (tokens(12, 7, Some(4), Some(2)), Finish::Length));
    let mut r = Reader::new(Framing::Json, 4096);
    r.feed(format!("{{\"choices\":[],\"pad\":\"{}\"}}", "p".repeat(5000)).as_bytes());
    assert_eq!(tf(r.end(true, Some(200))), (Tokens::default(), Finish::Unknown));
}

#[test]
fn framing_by_content_type_and_encoding() {
    let f = |ct: &str, ce: Option<&str>| Framing::of(Some(ct.as_bytes()), ce.map(str::as_bytes));
    assert_eq!(f("application/json", None), Some(Framing::Json));
    assert_eq!(f("Application/JSON; charset=utf-8", None), Some(Framing::Json));
    assert_eq!(f("text/event-stream;charset=UTF-8", None), Some(Framing::Sse));
    assert_eq!(f("text/event-stream", Some("gzip")), None);
    assert_eq!(f("text/event-stream", Some("identity")), Some(Framing::Sse));
    assert_eq!(f("text/plain", None), None);
    assert_eq!(f("application/jsonl", None), None);
    assert_eq!(Framing::of(None, None), None);
}

#[test]
fn finish_names_round_trip() {
    for f in Finish::ALL {
        assert_eq!(Finish::parse(f.name()), Some(f));
        assert_eq!(Finish::ALL[f.index()], f);
    }
    assert_eq!(Finish::parse("done"), None);
}

#[test]
fn a_too_long_last_event_loses_its_signals_not_the_answer() {
    let long = "x".repeat(5000);
    let responses = format!(
        "{}event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"status\":\"completed\",\"output\":[{{\"text\":\"{long}\"}}],\"usage\":{{\"input_tokens\":1,\"output_tokens\":2}}}}}}\n\n",
        &RESPONSES_STREAM[..RESPONSES_STREAM.find("event: response.completed").unwrap()]
    );
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(responses.as_bytes());
    assert_eq!(tf(r.end(true, Some(200))), (Tokens::default(), Finish::Unknown));
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(responses.as_bytes());
    assert_eq!(r.end(false, Some(200)).finish, Finish::Aborted, "reset after it: it may have been cut");
    let known = format!(
        "{}event: message_stop\ndata: {{\"type\":\"message_stop\",\"pad\":\"{long}\"}}\n\n",
        &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_stop").unwrap()]
    );
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(known.as_bytes());
    assert_eq!(r.end(true, Some(200)).finish, Finish::Length, "an ending already known stays");
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(
        format!("{}data: {{\"pad\":\"{long}\"}}\n\n", &OPENAI_CHAT_STREAM.replace("data: [DONE]\n\n", ""))
            .as_bytes(),
    );
    r.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n");
    assert_eq!(
        r.end(true, Some(200)).finish,
        Finish::Aborted,
        "a long event in the middle: the stream still needs its end"
    );
}

#[test]
fn quiet_events_are_told_apart_by_bytes_alone() {
    let quiet: &[&[u8]] = &[
        br#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"the \"usage\": {1} and \"finish_reason\":\"stop\""},"finish_reason":null}],"usage":null}"#,
        // (A text that is exactly `message_stop` would read as loud: a parse, not a mistake.)
        br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"message_stop now"}}"#,
        br#"{"type":"response.output_text.delta","delta":"an error"}"#,
        br#"{"event": "message", "answer": "usage: none"}"#,
        br#"{"finish_reason" :  null, "usage"	:null}"#,
    ];
    for d in quiet {
        assert!(!may_signal(b"", d), "{}", String::from_utf8_lossy(d));
    }
    let loud: &[(&[u8], &[u8])] = &[
        (b"", br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
        (b"", br#"{"choices":[],"usage": {"prompt_tokens":1}}"#),
        (b"message_delta", br#"{}"#),
        (b"", br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#),
        (b"", br#"{"type":"message_stop"}"#),
        (b"", br#"{"type":"error","error":{}}"#),
        (b"", br#"{"type":"response.completed","response":{}}"#),
        (b"", br#"{"event": "message_end", "metadata": {}}"#),
        (b"", br#"{"event": "error", "status": 400}"#),
        (b"", br#"{"finish_reason" : "length"}"#),
    ];
    for (name, d) in loud {
        assert!(may_signal(name, d), "{}", String::from_utf8_lossy(d));
    }
}

#[test]
fn a_reset_before_any_event_is_aborted_and_a_clean_end_of_nothing_unknown() {
    let r = Reader::new(Framing::Sse, 4096);
    assert_eq!(r.end(false, Some(200)).finish, Finish::Aborted, "the client gave up before the first event");
    let r = Reader::new(Framing::Sse, 4096);
    assert_eq!(r.end(true, Some(200)).finish, Finish::Unknown);
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(b"data: {\"tick\": 1}\n\n");
    assert!(r.unrecognised(), "events, none of a known format");
    assert!(!Reader::new(Framing::Sse, 4096).unrecognised(), "no event yet");
}

#[test]
fn only_a_json_answer_of_a_known_format_below_400_has_a_first_token() {
    let chat = br#"{"object":"chat.completion","choices":[{"index":0,"message":{"content":"x"},"finish_reason":"stop"}]}"#;
    let cases: &[(&[u8], u16, bool)] = &[
        (chat, 200, true),
        (chat, 500, false),
        (br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#, 400, false),
        (br#"{"status":"ok"}"#, 200, false),
        (b"[1,2]", 200, false),
    ];
    for (body, status, want) in cases {
        let mut r = Reader::new(Framing::Json, 4096);
        assert!(r.feed(body), "the first byte is reported as it comes");
        assert_eq!(
            r.end(true, Some(*status)).first_token,
            *want,
            "{} {status}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn an_empty_finish_reason_changes_no_ending() {
    let body = OPENAI_CHAT_STREAM.replace("\"finish_reason\":null}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},", "\"finish_reason\":\"\"}],\"usage\":null}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},");
    assert_ne!(body, OPENAI_CHAT_STREAM);
    let after = format!("{}data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"\"}}]}}\n\ndata: [DONE]\n\n", body.replace("data: [DONE]\n\n", ""));
    assert_eq!(sse(&after).0.finish, Finish::Length);
}

#[test]
fn an_empty_chunk_keeps_a_cr_waiting_for_its_lf() {
    let mut r = Reader::new(Framing::Sse, 4096);
    r.feed(b"data: [DONE]\r");
    r.feed(b"");
    r.feed(b"\n\r\n");
    assert_eq!(r.end(true, Some(200)).finish, Finish::Unknown, "[DONE] alone: recognised, done, no ending");
    let mut s = crate::llm::sse::Splitter::new(4096);
    let mut n = 0;
    s.feed(b"data: a\r", |_| n += 1);
    s.feed(b"", |_| n += 1);
    s.feed(b"\n", |_| n += 1);
    assert_eq!(n, 0, "CR, nothing, LF is one line end, not a blank line");
}

#[test]
fn a_reader_of_the_text_gathers_each_format_s_output_text() {
    let text = |framing: Framing, body: &str| {
        let whole = {
            let mut r = Reader::with_text(framing, 65536, 1 << 20);
            r.feed(body.as_bytes());
            r.end_with_text(true, Some(200))
        };
        let mut r = Reader::with_text(framing, 65536, 1 << 20);
        for c in body.as_bytes().chunks(7) {
            r.feed(c);
        }
        assert_eq!(r.end_with_text(true, Some(200)), whole, "split in pieces of 7");
        let plain = {
            let mut r = Reader::new(framing, 65536);
            r.feed(body.as_bytes());
            r.end(true, Some(200))
        };
        assert_eq!(whole.0, plain, "the same answer as a reader without text");
        whole.1.unwrap().kept
    };
    assert_eq!(text(Framing::Sse, OPENAI_CHAT_STREAM), "Hé");
    assert_eq!(text(Framing::Sse, ANTHROPIC_STREAM), "Hello");
    assert_eq!(text(Framing::Sse, RESPONSES_STREAM), "Hi");
    let dify = "data: {\"event\": \"message\", \"answer\": \" I\"}\n\ndata: {\"event\": \"agent_message\", \"answer\": \" am\"}\n\ndata: {\"event\": \"message_end\", \"metadata\": {}}\n\n";
    assert_eq!(text(Framing::Sse, dify), " I am");
    let chat = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}]}"#;
    assert_eq!(text(Framing::Json, chat), "Hello");
    let r = Reader::new(Framing::Sse, 4096);
    assert_eq!(r.end_with_text(true, Some(200)).1, None, "no text unless asked");
}

#[test]
fn an_answer_of_no_known_format_is_its_body_as_text() {
    use super::text::RawText;
    use sha2::{Digest, Sha256};
    let body = "plain é text, 中文 and more".as_bytes();
    // Fed a byte at a time, characters split across pieces.
    let mut raw = RawText::new(1 << 16);
    for b in body {
        raw.push(std::slice::from_ref(b));
    }
    let t = raw.finish();
    assert_eq!(t.kept, "plain é text, 中文 and more");
    assert_eq!(t.chars, "plain é text, 中文 and more".chars().count() as u64);
    assert_eq!(t.sha256, <[u8; 32]>::from(Sha256::digest(body)));
    // Kept at most `keep` bytes, a character the cap cuts left out, not replaced.
    let mut raw = RawText::new(7);
    raw.push(body);
    let t = raw.finish();
    assert_eq!(t.kept, "plain ", "é's first byte is the 7th");
    assert_eq!(t.chars, 25);
    // Bytes that are not UTF-8: replaced in the text kept, hashed as they came.
    let mut raw = RawText::new(100);
    raw.push(b"a\xffb");
    let t = raw.finish();
    assert_eq!((t.kept.as_str(), t.chars), ("a\u{fffd}b", 3));
    assert_eq!(t.sha256, <[u8; 32]>::from(Sha256::digest(b"a\xffb")));
    assert_eq!(super::text::EMPTY_SHA256, <[u8; 32]>::from(Sha256::digest(b"")));
    assert_eq!(RawText::new(10).finish().sha256, super::text::EMPTY_SHA256);
}
