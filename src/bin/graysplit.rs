//! `graysplit`: the operator CLI, built from the same crate as the filter (feature `cli`), so
//! `check` runs the filter's own validation and `explain` / `simulate` its own decision.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use graysplit::bucket::{bucket, BUCKETS};
use graysplit::config::time::{format_rfc3339, parse_rfc3339};
use graysplit::config::{self, Plan, ShadowSpec, Share};
use graysplit::decide::pin::Refused;
use graysplit::decide::{
    decide, decide_traced, DecidedBy, Decision, OverrideVerdict, PinOutcome, RuleVerdict, Tracer,
};
use graysplit::request::claims::Claims;
use graysplit::request::fake::StaticRequest;
use graysplit::shadow::read::Pairs;

const USAGE: &str = "\
graysplit: check, explain and simulate graysplit configurations; compare shadowed answers

Usage:
  graysplit check [--at TIME] CONFIG...
                                       validate configs (exit 1 if any is invalid); print
                                       each schedule as a timeline and each guard
  graysplit explain CONFIG [REQUEST]   which version a request gets, and why
  graysplit simulate CONFIG --users N [REQUEST]
                                       share per rule and version over N distinct users
  graysplit bucket SALT USER           the bucket (0..9999) of USER under SALT
  graysplit compare [--json] [--seed N] FILE...
                                       per rule, the paired records' primary against shadow

CONFIG is the plugin configuration as JSON, or a YAML file of recipes: a WasmPlugin's
spec.pluginConfig, a TrafficExtension's spec.wasm.pluginConfig, an EnvoyExtensionPolicy's
spec.wasm[i].config, or the configuration of the Wasm extension config an EnvoyFilter adds
(with several, pick one with --plugin). Every such config in the file is read as graysplit's.
`-` reads stdin.

REQUEST facts (all optional, repeatable where it makes sense):
  --user ID              the user id, put where the config reads it first
  --header NAME:VALUE    a request header      --cookie NAME=VALUE  a cookie
  --query NAME=VALUE     a query parameter     --path PATH          default /
  --method METHOD        default GET           --source IP          downstream address
  --scheme http|https    default http          --at RFC3339         the time, default now
                                                (schedules step by it)
  --tripped VERSION      as if the guard had tripped VERSION (repeatable)
  --claim NAME=VALUE     a verified JWT claim (repeatable; VALUE as JSON when it is: 42,
                         true, [\"a\",\"b\"]; else a string)
  --body FILE            the JSON request body (as if held in full; one longer than
                         body.max_bytes, as the filter does, counts as none): its fields,
                         its prompt (when.prompt) and its model (versions.<v>.model)
  --pin [NAME=]VALUE     a session pin cookie the request carries (bare: for every split rule)
  --plugin SEL           which config of a YAML file: NAME (metadata.name), KIND/NAME, or
                         KIND/NAME/wasm[i] (NAME/configPatches[j]) for one of several

compare reads the records shadow_sink received: OTLP/JSON logs, one ExportLogsServiceRequest
per line as the OpenTelemetry Collector's file exporter writes them, or POSTed bodies (one or
more per file, pretty-printed or not; a file is read line by line when its first line is a
whole JSON document). `-` reads stdin; several files are merged, records without
graysplit.rule ignored. Per rule: pairs by result; status agreement (of the records with both
statuses); over the paired records, total ms p50/p95 per side, output tokens per answer per
side (records with both counts) with the ratio shadow / primary and its 95% bootstrap interval,
and ending mismatches; similarity p10/p50/p90. Percentiles are nearest-rank. The bootstrap
draws 1000 resamples of the pairs, in the order read, with SplitMix64 seeded by --seed
(default 0): index = next % pairs. --json prints DESIGN.md's shape (null: no data). A line
that is not JSON or not an OTLP logs request: FILE:LINE: problem on stderr, exit status 1
(also for a file that cannot be read).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("graysplit: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "check" => check(rest),
        "explain" => explain(rest),
        "simulate" => simulate(rest),
        "compare" => compare(rest),
        "bucket" => match rest {
            [salt, user] => {
                let mut prefix = salt.clone().into_bytes();
                prefix.push(b':');
                println!("{}", bucket(&prefix, user.as_bytes()));
                Ok(ExitCode::SUCCESS)
            }
            _ => Err("usage: graysplit bucket SALT USER".into()),
        },
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}; see graysplit --help")),
    }
}

/// A plugin configuration found in a file: where it came from, and its JSON text.
struct Found {
    path: String,
    /// kind and metadata.name of the resource it came from (empty for a JSON file)
    kind: String,
    name: String,
    /// which of the resource's configs: `wasm[1]`, `configPatches[0]`, or empty for the only one
    part: String,
    json: String,
}

impl Found {
    /// Where it came from, for messages: `PATH`, or `PATH: KIND NAME[ PART]`.
    fn origin(&self) -> String {
        match (self.kind.is_empty(), self.part.is_empty()) {
            (true, _) => self.path.clone(),
            (false, true) => format!("{}: {} {}", self.path, self.kind, self.name),
            (false, false) => format!("{}: {} {} {}", self.path, self.kind, self.name, self.part),
        }
    }

    /// The most specific `--plugin` selector for it: KIND/NAME[/PART].
    fn selector(&self) -> String {
        match self.part.as_str() {
            "" => format!("{}/{}", self.kind, self.name),
            part => format!("{}/{}/{part}", self.kind, self.name),
        }
    }

    /// Whether `--plugin sel` picks it: NAME, KIND/NAME, NAME/PART or KIND/NAME/PART.
    fn selected_by(&self, sel: &str) -> bool {
        let by_name = |rest: &str| {
            rest == self.name || (!self.part.is_empty() && rest == format!("{}/{}", self.name, self.part))
        };
        by_name(sel) || sel.strip_prefix(&format!("{}/", self.kind)).is_some_and(by_name)
    }
}

fn read_input(path: &str) -> Result<String, String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| format!("stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// The configurations in `path`: the file itself when it is JSON, else, in every YAML document,
/// a WasmPlugin's `spec.pluginConfig`, a TrafficExtension's `spec.wasm.pluginConfig`, an
/// EnvoyExtensionPolicy's `spec.wasm[i].config`, or the `configuration` string of a Wasm
/// extension config an EnvoyFilter ADDs (istio/envoyfilter-body-*.yaml).
fn configs_in(path: &str) -> Result<Vec<Found>, String> {
    let text = read_input(path)?;
    if text.trim_start().starts_with('{') {
        return Ok(vec![Found {
            path: path.to_string(),
            kind: String::new(),
            name: String::new(),
            part: String::new(),
            json: text,
        }]);
    }
    let mut found = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("{path}: document {}: not YAML: {e}", i + 1))?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let name = value.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("?");
        let origin = format!("{path}: {kind} {name}");
        let mut push = |part: String, json: String| {
            found.push(Found {
                path: path.to_string(),
                kind: kind.to_string(),
                name: name.to_string(),
                part,
                json,
            });
        };
        let at = match kind {
            "WasmPlugin" => Some("/spec/pluginConfig"),
            // a Lua extension has no graysplit config
            "TrafficExtension" if value.pointer("/spec/wasm").is_some() => Some("/spec/wasm/pluginConfig"),
            _ => None,
        };
        if let Some(at) = at {
            let Some(cfg) = value.pointer(at) else {
                return Err(format!("{origin}: has no {}", at[1..].replace('/', ".")));
            };
            push(String::new(), cfg.to_string());
        }
        match kind {
            "EnvoyExtensionPolicy" => {
                let wasm = value.pointer("/spec/wasm").and_then(|w| w.as_array());
                for (j, w) in wasm.into_iter().flatten().enumerate() {
                    let Some(cfg) = w.get("config") else {
                        return Err(format!("{origin}: spec.wasm[{j}] has no config"));
                    };
                    push(format!("wasm[{j}]"), cfg.to_string());
                }
            }
            "EnvoyFilter" => {
                let patches = value.pointer("/spec/configPatches").and_then(|p| p.as_array());
                for (j, cp) in patches.into_iter().flatten().enumerate() {
                    // protobuf JSON: typed_config or typedConfig
                    let tc = cp
                        .pointer("/patch/value/typed_config")
                        .or_else(|| cp.pointer("/patch/value/typedConfig"));
                    let is_wasm = tc.and_then(|t| t.get("@type")).and_then(|t| t.as_str())
                        == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
                    let cfg = tc.and_then(|t| t.pointer("/config/configuration/value"));
                    if let (true, Some(cfg)) = (is_wasm, cfg) {
                        let Some(cfg) = cfg.as_str() else {
                            return Err(format!(
                                "{origin}: configPatches[{j}].patch.value.typed_config.config.configuration.value must be a string"
                            ));
                        };
                        push(format!("configPatches[{j}]"), cfg.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if found.is_empty() {
        return Err(format!(
            "{path}: neither JSON nor YAML with a WasmPlugin, TrafficExtension, EnvoyExtensionPolicy or Wasm EnvoyFilter"
        ));
    }
    Ok(found)
}

fn check(args: &[String]) -> Result<ExitCode, String> {
    let mut now = now_nanos();
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--at" => {
                let v = it.next().ok_or("--at needs a value")?;
                now = parse_rfc3339(v).map_err(|e| format!("--at {e}"))?;
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag} for check")),
            path => paths.push(path.to_string()),
        }
    }
    if paths.is_empty() {
        return Err("usage: graysplit check [--at RFC3339] CONFIG...".into());
    }
    let mut bad = 0;
    for path in &paths {
        for f in configs_in(path)? {
            match config::parse_in(f.json.as_bytes(), &cli_env) {
                Ok(plan) => {
                    println!(
                        "{}: ok: stable {}, {} rules, versions {}",
                        f.origin(),
                        plan.versions.first().map_or("", String::as_str),
                        plan.rule_count(),
                        plan.versions.join(", ")
                    );
                    print!("{}", describe_v2(&plan, now));
                }
                Err(e) => {
                    bad += 1;
                    println!("{}: invalid config: {e}", f.origin());
                }
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The CLI does not see the proxy's environment: a variable a config names (`lane.key_env`,
/// `lane.previous_keys_env`) is this process's when it is set here, else a stand-in key, and
/// stderr says so (the proxy checks the real one when it applies the config).
fn cli_env(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        eprintln!("note: {name} is not set here: the proxy reads the key from it; checked with a stand-in");
        Some(format!("a stand-in for the key in {name}, 32 characters or more"))
    })
}

/// Each schedule as a timeline (every step's start and percent, and the one live at `now`),
/// and each guard, in words.
fn describe_v2(plan: &Plan, now: i64) -> String {
    let mut out = String::new();
    for (i, name) in plan.rule_names().enumerate() {
        for (version, share, _) in plan.split_entries(i) {
            let Share::Schedule(steps) = share else { continue };
            let live = share.live_step(now);
            out += &format!("  rules[{i}] {name}: {version} by schedule:\n");
            if live.is_none() {
                out += &format!("    {:<24} {:>7}   <- now: before the first step\n", "(before)", "0%");
            }
            for (k, step) in steps.iter().enumerate() {
                let mark = if live == Some(k) { "   <- now" } else { "" };
                out += &format!(
                    "    {:<24} {:>7}{mark}\n",
                    format_rfc3339(step.at),
                    format!("{}%", fmt_bp(step.bp))
                );
            }
        }
        if let Some(g) = plan.rule_guard(i) {
            let mut statuses = Vec::new();
            if g.statuses.any_5xx {
                statuses.push("5xx".to_string());
            }
            if g.statuses.any_4xx {
                statuses.push("4xx".to_string());
            }
            statuses.extend(g.statuses.codes.iter().map(u16::to_string));
            let slow = g.slow_ms.map_or(String::new(), |ms| format!(" or slower than {ms} ms"));
            out += &format!(
                "  rules[{i}] {name}: guard: a version trips when more than {}% of at least {} responses in {} s are errors (status {}{slow}) and stable's do not explain it; attempt {}\n",
                fmt_bp(g.max_error_bp),
                g.min_requests,
                g.window_s,
                statuses.join(", "),
                g.attempt
            );
        }
    }
    out
}

/// Basis points as a percent, without trailing zeros: `1`, `12.5`, `0.01`.
fn fmt_bp(bp: u32) -> String {
    let s = format!("{}.{:02}", bp / 100, bp % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Request facts and options shared by `explain` and `simulate`.
struct Opts {
    config: String,
    plugin: Option<String>,
    users: Option<usize>,
    user: Option<String>,
    request: StaticRequest,
    path: String,
    query: Vec<(String, String)>,
    cookies: Vec<String>,
    tripped: Vec<String>,
    claims: Vec<(String, serde_json::Value)>,
    pin: Option<String>,
}

fn parse_opts(args: &[String], cmd: &str) -> Result<Opts, String> {
    let mut it = args.iter();
    let mut o = Opts {
        config: String::new(),
        plugin: None,
        users: None,
        user: None,
        request: StaticRequest::default(),
        path: "/".into(),
        query: Vec::new(),
        cookies: Vec::new(),
        tripped: Vec::new(),
        claims: Vec::new(),
        pin: None,
    };
    o.request.source = None;
    o.request.now = now_nanos();
    o.request.random_byte = 0x5a;
    let mut method = "GET".to_string();
    let mut scheme = "http".to_string();
    while let Some(a) = it.next() {
        let mut val = |flag: &str| it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--user" => o.user = Some(val(a)?),
            "--header" => {
                let v = val(a)?;
                let (k, v) =
                    v.split_once(':').ok_or_else(|| format!("--header wants NAME:VALUE, got {v:?}"))?;
                o.request.headers.push((k.trim().to_ascii_lowercase(), v.trim_start().as_bytes().to_vec()));
            }
            "--cookie" => o.cookies.push(val(a)?),
            "--query" => {
                let v = val(a)?;
                let (k, v) =
                    v.split_once('=').ok_or_else(|| format!("--query wants NAME=VALUE, got {v:?}"))?;
                o.query.push((k.to_string(), v.to_string()));
            }
            "--path" => o.path = val(a)?,
            "--method" => method = val(a)?,
            "--scheme" => scheme = val(a)?,
            "--claim" => {
                let v = val(a)?;
                let (k, v) =
                    v.split_once('=').ok_or_else(|| format!("--claim wants NAME=VALUE, got {v:?}"))?;
                // JSON when it reads as JSON (42, true, ["a","b"]), else a string.
                let value =
                    serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
                o.claims.push((k.to_string(), value));
            }
            "--body" => {
                let path = val(a)?;
                o.request.body = Some(std::fs::read(&path).map_err(|e| format!("--body {path}: {e}"))?);
            }
            "--pin" => o.pin = Some(val(a)?),
            "--source" => {
                let v = val(a)?;
                v.parse::<std::net::IpAddr>()
                    .map_err(|_| format!("--source wants an IP address, got {v:?}"))?;
                o.request.source = Some(v);
            }
            "--at" => {
                let v = val(a)?;
                o.request.now = parse_rfc3339(&v).map_err(|e| format!("--at {e}"))?;
            }
            "--plugin" => o.plugin = Some(val(a)?),
            "--tripped" => o.tripped.push(val(a)?),
            "--users" if cmd == "simulate" => {
                let v = val(a)?;
                o.users = Some(v.parse().map_err(|_| format!("--users wants a count, got {v:?}"))?);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag} for {cmd}")),
            path if o.config.is_empty() => o.config = path.to_string(),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    if o.config.is_empty() {
        return Err(format!("usage: graysplit {cmd} CONFIG [options]; see graysplit --help"));
    }
    o.request.headers.insert(0, (":scheme".into(), scheme.into_bytes()));
    o.request.headers.insert(0, (":method".into(), method.into_bytes()));
    Ok(o)
}

fn load_plan(o: &Opts) -> Result<(String, Plan), String> {
    let found = configs_in(&o.config)?;
    fn selectors<'a>(fs: impl IntoIterator<Item = &'a Found>) -> String {
        fs.into_iter().map(Found::selector).collect::<Vec<_>>().join(", ")
    }
    let mut picked: Vec<&Found> =
        found.iter().filter(|f| o.plugin.as_deref().map_or(true, |sel| f.selected_by(sel))).collect();
    let f = match picked.len() {
        1 => picked.remove(0),
        0 => {
            return Err(format!(
                "{}: --plugin {:?} selects none of: {}",
                o.config,
                o.plugin.as_deref().unwrap_or(""),
                selectors(&found)
            ));
        }
        _ => return Err(format!("several configs, pick one with --plugin: {}", selectors(picked))),
    };
    let plan = config::parse_in(f.json.as_bytes(), &cli_env)
        .map_err(|e| format!("{}: invalid config: {e}", f.origin()))?;
    if let (Some(body), Some(spec)) = (&o.request.body, &plan.body) {
        if body.len() > spec.max_bytes {
            eprintln!(
                "note: --body is {} bytes, longer than body.max_bytes {}: the filter reads no body, nor does this",
                body.len(),
                spec.max_bytes
            );
        }
    }
    for v in &o.tripped {
        if !plan.watches.iter().any(|w| !w.stable && plan.version_name(w.version) == v) {
            return Err(format!("--tripped {v}: no guarded rule of {} splits to {v:?}", f.origin()));
        }
    }
    Ok((f.origin(), plan))
}

/// The request for user `user` (or none): the user id goes where the config reads it first.
fn build_request(o: &Opts, plan: &Plan, user: Option<&str>) -> StaticRequest {
    let mut r = o.request.clone();
    if plan.body.as_ref().is_some_and(|spec| r.body.as_ref().is_some_and(|b| b.len() > spec.max_bytes)) {
        r.body = None;
    }
    r.tripped = plan
        .watches
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.stable && o.tripped.iter().any(|v| v == plan.version_name(w.version)))
        .map(|(i, _)| i)
        .collect();
    let mut cookies = o.cookies.clone();
    let mut query = o.query.clone();
    let mut claims = o.claims.clone();
    if let (Some(u), Some((kind, name))) = (user, plan.first_identity_source()) {
        match kind {
            "header" => r.headers.push((name, u.as_bytes().to_vec())),
            "cookie" => cookies.insert(0, format!("{name}={u}")),
            "claim" => claims.insert(0, (name, serde_json::Value::String(u.to_string()))),
            "body" => {
                // The user id at its pointer, in the body given (or a new one).
                let mut doc = r
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(serde_json::json!({}));
                set_pointer(&mut doc, &name, serde_json::Value::String(u.to_string()));
                r.body = serde_json::to_vec(&doc).ok();
            }
            _ => query.insert(0, (name, u.to_string())),
        }
    }
    if !claims.is_empty() {
        r.claims = Some(Claims::from_json(claims));
    }
    if let (Some(pin), Some(spec)) = (&o.pin, &plan.pin) {
        if pin.contains('=') {
            cookies.push(pin.clone());
        } else if pin.starts_with("1:") {
            cookies.push(format!("{}={pin}", spec.cookie)); // a v2-format pin: one cookie for all
        } else {
            cookies.extend(plan.pin_cookie_names().map(|name| format!("{name}={pin}")));
        }
    }
    if !cookies.is_empty() {
        r.headers.push(("cookie".into(), cookies.join("; ").into_bytes()));
    }
    let mut path = o.path.clone();
    for (i, (k, v)) in query.iter().enumerate() {
        path.push(if i == 0 && !path.contains('?') { '?' } else { '&' });
        path.push_str(&encode(k));
        path.push('=');
        path.push_str(&encode(v));
    }
    r.headers.insert(1, (":path".into(), path.into_bytes()));
    r
}

/// Sets the field at JSON pointer `pointer` (objects made on the way).
fn set_pointer(doc: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut at = doc;
    for part in pointer.split('/').skip(1) {
        let key = part.replace("~1", "/").replace("~0", "~");
        if !at.is_object() {
            *at = serde_json::json!({});
        }
        let Some(obj) = at.as_object_mut() else { return };
        at = obj.entry(key).or_insert(serde_json::Value::Null);
    }
    *at = value;
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Default)]
struct Steps {
    override_header: Option<OverrideVerdict>,
    rules: Vec<(usize, RuleVerdict)>,
}

impl Tracer for Steps {
    fn override_header(&mut self, v: OverrideVerdict) {
        self.override_header = Some(v);
    }
    fn rule(&mut self, i: usize, v: RuleVerdict) {
        self.rules.push((i, v));
    }
}

fn explain(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_opts(args, "explain")?;
    let (origin, plan) = load_plan(&o)?;
    let r = build_request(&o, &plan, o.user.as_deref());
    let mut steps = Steps::default();
    let d = decide_traced(&plan, &r, &mut steps);
    let names: Vec<&str> = plan.rule_names().collect();
    println!("config:  {origin}");
    println!("version: {}", d.version_name(&plan));
    println!("rule:    {}", d.rule_name(&plan));
    if let Some(b) = d.bucket {
        println!("bucket:  {b} of {}", BUCKETS);
    }
    if let Some(outcome) = d.pin {
        let what = match outcome {
            PinOutcome::Kept => "kept (the pin's version holds for this session)".to_string(),
            PinOutcome::Renewed => "kept and renewed (less than half of idle_s was left)".to_string(),
            PinOutcome::Issued => "none sent; one is issued for this version".to_string(),
            PinOutcome::Replaced(why) => {
                format!("ignored ({}); the hash decided, a new one is issued", refused(why))
            }
        };
        println!("pin:     {what}");
        for c in &d.pin_cookies {
            println!("         Set-Cookie: {c}");
        }
    }
    if let Some(c) = &d.set_cookie {
        let attrs = c.split_once(';').map_or("", |(_, a)| a);
        let name = c.split('=').next().unwrap_or("");
        println!("user id: none sent; the filter mints one (Set-Cookie: {name}=<32 random hex>;{attrs})");
    } else if let Some(u) = &o.user {
        println!("user id: {u:?}");
    }
    if plan.reads_prompt {
        let body = readable_body(&o, &plan);
        let line = match body.as_deref().map(graysplit::body::prompt::extract) {
            None => "none: no JSON body within body.max_bytes (every prompt matcher fails)".to_string(),
            Some(None) => {
                "none: the body has no user message, input or query (every prompt matcher fails)".to_string()
            }
            Some(Some(p)) => {
                let n = p.chars().count();
                let shown: String = p.chars().take(120).collect();
                let more =
                    if n > 120 { format!("... ({n} characters)") } else { format!(" ({n} characters)") };
                format!("{}{more}", graysplit::text::quote(&shown))
            }
        };
        println!("prompt:  {line}");
    }
    match plan.model(d.version) {
        Some(m) => println!("model:   {}", explain_model(&o, &plan, m)),
        None if !plan.models.is_empty() => {
            println!("model:   as the client sent it ({} has no model in versions)", d.version_name(&plan))
        }
        None => {}
    }
    if let Some(lane) = &d.lane {
        // The counter's result label says what the lane did.
        let result = plan.metrics.get(lane.metric).and_then(|m| m.rsplit('.').next()).unwrap_or("");
        let baggage = match &lane.baggage {
            None => "kept as it came".to_string(),
            Some(None) => "removed".to_string(),
            Some(Some(v)) => format!("baggage: {}", String::from_utf8_lossy(v)),
        };
        println!("lane:    {result}; {baggage}");
    }
    println!("why:");
    match (plan.override_header(), steps.override_header) {
        (Some(h), None) => println!("  override header {h}: not sent"),
        (Some(h), Some(OverrideVerdict::Accepted)) => {
            println!("  override header {h}: accepted (known version, trusted source)")
        }
        (Some(h), Some(OverrideVerdict::UnknownVersion)) => {
            println!("  override header {h}: ignored, not a known version ({})", plan.versions.join(", "))
        }
        (Some(h), Some(OverrideVerdict::UntrustedSource)) => println!(
            "  override header {h}: ignored, source {} is not in trusted_cidrs",
            o.request.source.as_deref().unwrap_or("(none; pass --source)")
        ),
        (None, _) => {}
    }
    for (i, v) in &steps.rules {
        let name = names.get(*i).copied().unwrap_or("?");
        let line = match v {
            RuleVerdict::Disabled => "skipped: enabled is false".to_string(),
            RuleVerdict::NotStarted => "skipped: starts_at is in the future".to_string(),
            RuleVerdict::Expired => "skipped: expires_at has passed".to_string(),
            RuleVerdict::ConditionFailed(c) => {
                format!("skipped: not true that {}", plan.describe_condition(*i, *c))
            }
            RuleVerdict::Decided => match plan.split_bands(*i, o.request.now) {
                None => "matched: decides".to_string(),
                Some(bands) => match d.bucket {
                    None => "matched: split, but no user id, so stable".to_string(),
                    Some(b) => {
                        let (v, lo, hi) = bands
                            .iter()
                            .find(|(_, lo, hi)| (*lo..*hi).contains(&b))
                            .copied()
                            .unwrap_or(("", 0, 0));
                        let at =
                            if plan.split_entries(*i).iter().any(|(_, s, _)| matches!(s, Share::Schedule(_)))
                            {
                                format!(" at {}", format_rfc3339(o.request.now))
                            } else {
                                String::new()
                            };
                        let trip = if o.tripped.iter().any(|t| t == v) && plan.rule_guard(*i).is_some() {
                            format!(", but {v}'s guard has tripped: stable")
                        } else {
                            String::new()
                        };
                        format!("matched: split, bucket {b} is in {v}'s range [{lo}, {hi}){at}{trip}")
                    }
                },
            },
        };
        println!("  rules[{i}] {name}: {line}");
    }
    if d.by == DecidedBy::Default {
        println!("  no rule decided: stable");
    }
    if let DecidedBy::Rule(i) = d.by {
        if let Some(s) = plan.rule_shadow(i) {
            println!("shadow:  {}", explain_shadow(&plan, s, &d, o.user.as_deref(), &o.path));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The request's body as the filter would read it: JSON within `body.max_bytes`.
fn readable_body(o: &Opts, plan: &Plan) -> Option<Vec<u8>> {
    let max = plan.body.as_ref().map_or(0, |b| b.max_bytes);
    o.request.body.clone().filter(|b| b.len() <= max)
}

/// What becomes of the body's `model` for a request decided to a version with one.
fn explain_model(o: &Opts, plan: &Plan, m: &config::ModelSpec) -> String {
    use graysplit::body::model::{rewrite, Skipped};
    let Some(body) = readable_body(o, plan) else {
        let why = if o.request.body.is_some() { "longer than body.max_bytes" } else { "no --body given" };
        return format!(
            "{:?} would replace the body's model, but the body passes unchanged ({why}; counted skipped)",
            m.name
        );
    };
    match rewrite(&body, &m.literal) {
        Ok(new) => {
            let asked = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("model").and_then(|x| x.as_str()).map(str::to_string))
                .unwrap_or_default();
            format!(
                "the upstream is asked for {:?} (the body said {asked:?}; only that value changes: {} -> {} bytes)",
                m.name,
                body.len(),
                new.len()
            )
        }
        Err(Skipped::NotJson) => {
            format!("{:?} not written: the body is not JSON; it passes unchanged (counted skipped)", m.name)
        }
        Err(Skipped::NoModel) => format!(
            "{:?} not written: the body has no top-level model string; it passes unchanged (counted skipped)",
            m.name
        ),
    }
}

/// What the deciding rule's shadow does with the request (DESIGN.md "Shadow").
fn explain_shadow(plan: &Plan, s: &ShadowSpec, d: &Decision, user: Option<&str>, path: &str) -> String {
    let version = plan.version_name(s.version);
    let bound = fmt_bp(s.bound_bp);
    if let Some(pick) = &d.shadow {
        let b = user.map_or(0, |u| bucket(&s.salt_colon, u.as_bytes()));
        return format!(
            "also sent to cluster {} as {version} (shadow bucket {b} of {BUCKETS}, below {} = {bound}%); its record's user_hash {}",
            s.cluster,
            s.bound_bp,
            graysplit::text::hex(&pick.user_hash)
        );
    }
    if d.version != 0 {
        return format!("not shadowed: only requests decided for stable are ({version} at {bound}%)");
    }
    let Some(u) = user else { return "not shadowed: no user id".to_string() };
    if !s.covers(path.as_bytes()) {
        return format!("not shadowed: path {path} is not under its path_prefixes");
    }
    let b = bucket(&s.salt_colon, u.as_bytes());
    if b >= s.bound_bp {
        return format!(
            "not shadowed: shadow bucket {b} of {BUCKETS} is not below {} = {bound}%",
            s.bound_bp
        );
    }
    "not shadowed: the request carries x-graysplit-shadow (it is a shadow already)".to_string()
}

fn refused(why: Refused) -> &'static str {
    match why {
        Refused::Malformed => "not a pin",
        Refused::OtherRule => "a pin of another rule",
        Refused::BadSignature => "its signature does not verify for this user, rule and salt",
        Refused::Expired => "expired: the session idled out",
        Refused::SessionOver => "its session began more than session_pin.max_s ago",
        Refused::Unavailable => {
            "the rule cannot give its version now (stable at 100 %, percent 0, tripped, or gone)"
        }
    }
}

fn simulate(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_opts(args, "simulate")?;
    let n = o.users.ok_or("simulate needs --users N")?;
    let (origin, plan) = load_plan(&o)?;
    let mut by_rule: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..n {
        let user = format!("sim-user-{i}");
        let d = decide(&plan, &build_request(&o, &plan, Some(&user)));
        *by_rule.entry((d.rule_name(&plan).to_string(), d.version_name(&plan).to_string())).or_default() += 1;
        *by_version.entry(d.version_name(&plan).to_string()).or_default() += 1;
    }
    let pct = |c: usize| if n == 0 { 0.0 } else { 100.0 * c as f64 / n as f64 };
    println!("{origin}: {n} simulated users (ids sim-user-0 .. sim-user-{})", n.saturating_sub(1));
    println!("{:<24} {:<16} {:>9} {:>8}", "rule", "version", "users", "share");
    for ((rule, version), c) in &by_rule {
        println!("{rule:<24} {version:<16} {c:>9} {:>7.2}%", pct(*c));
    }
    println!();
    for (version, c) in &by_version {
        println!("{:<24} {version:<16} {c:>9} {:>7.2}%", "(all rules)", pct(*c));
    }
    let models: Vec<String> = by_version
        .keys()
        .filter_map(|v| {
            let m = plan.model(plan.version_id(v.as_bytes())?)?;
            let what = match readable_body(&o, &plan).map(|b| graysplit::body::model::rewrite(&b, &m.literal))
            {
                Some(Ok(_)) => "the body's model rewritten",
                Some(Err(_)) => "the body passes unchanged: it has no top-level model string",
                None => "no --body: the upstream would be asked for it in a JSON body's model",
            };
            Some(format!("{v}: model {:?} ({what})", m.name))
        })
        .collect();
    if !models.is_empty() {
        println!();
        for line in models {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `graysplit compare`: reads every FILE, then prints the figures (DESIGN.md "Shadow"). A file
/// that cannot be read, or a bad line, is reported on stderr with exit status 1.
fn compare(args: &[String]) -> Result<ExitCode, String> {
    let mut json = false;
    let mut seed = 0u64;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            "--seed" => {
                let v = it.next().ok_or("--seed needs a value")?;
                seed = v.parse().map_err(|_| format!("--seed wants a whole number 0..2^64-1, got {v:?}"))?;
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag} for compare")),
            file => files.push(file.to_string()),
        }
    }
    if files.is_empty() {
        return Err("usage: graysplit compare [--json] [--seed N] FILE...".into());
    }
    let mut pairs = Pairs::default();
    for file in &files {
        let read = read_input(file).and_then(|text| {
            let name = if file == "-" { "stdin" } else { file.as_str() };
            pairs.read(name, &text).map_err(|e| e.to_string())
        });
        if let Err(e) = read {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let report = graysplit::shadow::compare::compare(&pairs, seed);
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}
