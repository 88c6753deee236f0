//! graysplit: an Envoy proxy-wasm HTTP filter that decides, per request, whether the stable or
//! a gray version of an application serves it, and writes the decision into a routing header
//! that Envoy's route table (or an Istio VirtualService) matches on.
//!
//! The rooms (README "Layout"):
//! - [`filter`]: the proxy-wasm glue on the SDK (root and HTTP contexts, host calls); nothing
//!   in it decides. Only built for the wasm target.
//! - [`config`]: the raw serde structs of the plugin configuration, their validation, and the
//!   compiled [`config::Plan`] that request handling reads.
//! - [`decide`]: the decision (override, rules, splits, session pins) and the user id.
//! - [`request`]: how a request is read: the [`request::Host`] trait the glue implements (and a
//!   map-backed fake for tests and the CLI), cookies, query strings, header pairs, claims.
//! - [`body`]: JSON request bodies: which to read, the fields a plan's pointers name (no
//!   whole-document tree), and the watchdog deciding whether Envoy delivers bodies at all.
//! - [`guard`]: what a rule's guard knows (a sliding window of each version's responses, its
//!   trips), shared by the worker VMs through the proxy's shared data, and the trip condition.
//! - [`llm`]: LLM answers read as they pass (tokens, first token, ending, text).
//! - [`shadow`]: the shadow's similarity, paired records, and `graysplit compare`.
//! - [`lane`]: the decision carried in a signed W3C baggage member (issued, followed).
//!
//! - [`matcher`]: value matchers and CIDR ranges; [`bucket`]: the bucketing contract; [`text`]:
//!   how values are quoted and numbers written.
//!
//! Everything but [`filter`] is pure: it never calls the host and is unit-tested on the host. The
//! pure modules form no cycle: `text` <- `matcher` <- `body` <- `config` <- `request` <-
//! `decide`, with `bucket` beside them and `guard` on `config`.

pub mod body;
pub mod bucket;
pub mod config;
pub mod decide;
pub mod guard;
pub mod lane;
pub mod llm;
pub mod matcher;
pub mod request;
pub mod shadow;
pub mod text;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    filter::start();
}}
