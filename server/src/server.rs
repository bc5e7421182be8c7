//! Running a server: the store, the tokens, the listener (a Unix socket of mode 0600 by default,
//! or TCP), and a graceful shutdown.
//!
//! Shutdown (on SIGTERM or SIGINT, or [`Running::shutdown`]): the listener stops accepting, every
//! SSE stream ends (a send stream with an `error` frame `unavailable`; its turn goes on until the
//! store closes), requests in flight finish, then the store closes as `Coven::close` defines
//! (turns still running end cancelled with their partial text), and the socket file is removed.

use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coven_group::Coven;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::auth::{self, Tokens};
use crate::routes::{self, AppState, Limits, Transport};

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A Unix socket at this path, mode 0600.
    Unix(PathBuf),
    /// TCP at this address; every request but the handshake needs a token.
    Tcp(SocketAddr),
}

/// Where the owner token and the shares live for a store at `store`: `<store>.token` (the
/// owner token, plain, mode 0600) and `<store>.shares.json` (share digests, mode 0600).
pub fn token_paths(store: &Path) -> (PathBuf, PathBuf) {
    let mut token = store.as_os_str().to_owned();
    token.push(".token");
    let mut shares = store.as_os_str().to_owned();
    shares.push(".shares.json");
    (PathBuf::from(token), PathBuf::from(shares))
}

/// A bound listener, before serving.
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Bound {
    /// Binds `listen`. A Unix socket is bound in a private directory, made mode 0600 and then
    /// renamed into place, so it is never reachable with wider permissions; a socket file left
    /// by a server that is gone is replaced, one a live server answers on is refused, and a
    /// path that is not a socket is never touched.
    pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
        match listen {
            Listen::Tcp(addr) => Ok(Bound::Tcp(TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                if let Ok(existing) = fs::symlink_metadata(path) {
                    // Only a socket is ever replaced: a path naming anything else is refused.
                    if !existing.file_type().is_socket() {
                        return Err(std::io::Error::new(
                            ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::new(
                            ErrorKind::AddrInUse,
                            format!("a server is already listening on {}", path.display()),
                        ));
                    }
                    fs::remove_file(path)?;
                }
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let private = tempfile::Builder::new()
                    .prefix(".coven-group-socket")
                    .tempdir_in(parent)?;
                fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700))?;
                let staged = private.path().join("s");
                let listener = UnixListener::bind(&staged)?;
                fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
                fs::rename(&staged, path)?;
                Ok(Bound::Unix(listener, path.clone()))
            }
        }
    }

    /// The TCP address bound (port 0 resolved), if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(listener) => listener.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }
}

/// A server's parts: the store, its tokens and its limits.
pub struct Server {
    pub coven: Arc<Coven>,
    pub tokens: Arc<Tokens>,
    pub limits: Limits,
}

impl Server {
    /// Tokens for a store at `store_path`: the owner token is read, or created at first start.
    pub fn tokens_for(store_path: &Path) -> std::io::Result<(Arc<Tokens>, String)> {
        let (token_path, shares_path) = token_paths(store_path);
        let owner = auth::owner_token(&token_path)?;
        Ok((Arc::new(Tokens::load(&owner, Some(shares_path))?), owner))
    }

    /// Serves on `bound` until `stop` resolves, then shuts down as the module describes. The
    /// store is closed before this returns.
    pub async fn serve(
        self,
        bound: Bound,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stopping, shutdown) = watch::channel(false);
        let state = AppState {
            coven: self.coven.clone(),
            tokens: self.tokens,
            streams: Arc::new(Semaphore::new(self.limits.max_streams)),
            limits: self.limits,
            shutdown,
        };
        // Streams end as soon as the stop arrives; axum's graceful shutdown then waits only for
        // ordinary requests in flight.
        let (stopped_sender, stopped) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stopping.send(true);
            let _ = stopped_sender.send(true);
        });
        let graceful = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        };
        let result = match bound {
            Bound::Tcp(listener) => {
                tracing::info!(addr = ?listener.local_addr().ok(), "listening on TCP");
                axum::serve(listener, routes::router(state, Transport::Tcp))
                    .with_graceful_shutdown(graceful)
                    .await
            }
            Bound::Unix(listener, path) => {
                tracing::info!(socket = %path.display(), "listening on a Unix socket");
                let result = axum::serve(listener, routes::router(state, Transport::Unix))
                    .with_graceful_shutdown(graceful)
                    .await;
                let _ = fs::remove_file(&path);
                result
            }
        };
        let coven = self.coven;
        tokio::task::spawn_blocking(move || coven.close())
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!("server stopped");
        result
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
