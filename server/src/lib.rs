//! coven-group-server: the coven-group library's API over HTTP and server-sent events, for web
//! pages, terminals and other processes, and the `coven-group` CLI that talks to it.
//!
//! The endpoints, shapes, frames and error codes are specified in `docs/API-CONTRACT.md`; the
//! OpenAPI document is served at `/api/openapi.json`. The server is built only over the
//! library's public API, so tokio and HTTP stay out of the library and its bindings.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use coven_group::{Config, Coven};
//! use coven_group_server::{Bound, Limits, Listen, Server};
//!
//! let store = std::path::Path::new("chat.redb");
//! let coven = Arc::new(Coven::open(store, Config::default()).map_err(std::io::Error::other)?);
//! let (tokens, _owner_token) = Server::tokens_for(store)?;
//! let bound = Bound::bind(&Listen::Unix("coven-group.sock".into())).await?;
//! Server { coven, tokens, limits: Limits::default() }
//!     .serve(bound, coven_group_server::termination())
//!     .await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod client;
pub mod error;
pub mod routes;
pub mod server;
pub mod stream;
pub mod web;

pub use routes::{route_list, Limits, API_VERSION};
pub use server::{termination, token_paths, Bound, Listen, Server};
