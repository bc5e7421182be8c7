//! Which harness runs a familiar: the built-in kinds, the ones the host registers, the rules a
//! familiar must follow to use them (argv only for `command`, its program allowlisted), and the
//! checked working directory a run gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::jsonl::JsonLines;
use super::{claude, codex, pty, scripted, Harness, RegisteredHarness};
use crate::error::{Error, Result};
use crate::guard;
use crate::host::{HostRef, Origin};
use crate::model::{Config, Familiar, GroupConversation};
use crate::validate;

/// Harness kinds built into the library.
pub const BUILTIN_HARNESSES: [&str; 4] = ["scripted", "command", "claude", "codex"];
/// Built-in kinds that start processes and so need a checked working directory.
const PROCESS_HARNESSES: [&str; 3] = ["command", "claude", "codex"];

/// What a member's run needs: its harness and its checked working directory.
pub(crate) struct Resolved {
    pub harness: RegisteredHarness,
    pub cwd: Option<String>,
}

/// Every harness by kind name: the built-ins, then whatever the host registers.
pub(crate) struct Harnesses {
    harnesses: RwLock<HashMap<String, RegisteredHarness>>,
    allowed_programs: Vec<String>,
}

impl Harnesses {
    pub fn new(config: &Config) -> Self {
        let scripted = scripted::Scripted {
            delay: Duration::from_millis(config.scripted_delay_ms),
        };
        let builtins: [(&str, Arc<dyn Harness>); 4] = [
            ("scripted", Arc::new(scripted)),
            ("command", Arc::new(pty::Pty)),
            (
                "claude",
                Arc::new(JsonLines::<claude::ClaudeLines>::default()),
            ),
            ("codex", Arc::new(JsonLines::<codex::CodexLines>::default())),
        ];
        let harnesses = builtins
            .into_iter()
            .map(|(name, harness)| (name.to_owned(), HostRef::new(harness, Origin::Rust)))
            .collect();
        Self {
            harnesses: RwLock::new(harnesses),
            allowed_programs: config.allowed_programs.clone(),
        }
    }

    /// Refuses a name a host harness cannot be registered under.
    pub fn check_name(name: &str) -> Result<()> {
        validate::familiar_id("name", name)?;
        if BUILTIN_HARNESSES.contains(&name) {
            return Err(Error::conflict(format!(
                "{name:?} is a built-in harness kind and cannot be replaced"
            )));
        }
        Ok(())
    }

    /// Registers (or replaces) a host harness under a name [`Harnesses::check_name`] accepted.
    pub fn insert(&self, name: &str, harness: Arc<dyn Harness>, origin: Origin) {
        self.harnesses
            .write()
            .insert(name.to_owned(), HostRef::new(harness, origin));
    }

    /// Refuses a familiar that names an unknown harness kind or breaks the argv rules.
    pub fn check_familiar(&self, familiar: &Familiar) -> Result<()> {
        {
            let harnesses = self.harnesses.read();
            if !harnesses.contains_key(&familiar.harness) {
                let mut known: Vec<&str> = harnesses.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(Error::invalid(
                    "familiar.harness",
                    format!(
                        "unknown harness kind {:?}; known kinds: {}",
                        familiar.harness,
                        known.join(", ")
                    ),
                ));
            }
        }
        match (familiar.harness.as_str(), familiar.argv.first()) {
            ("command", None) => Err(Error::invalid(
                "familiar.argv",
                "the command harness needs a program to run",
            )),
            ("command", Some(program)) if !self.allowed_programs.contains(program) => {
                Err(Error::invalid(
                    "familiar.argv",
                    format!(
                        "program {program:?} is not allowlisted (Config::allowed_programs: [{}])",
                        self.allowed_programs.join(", ")
                    ),
                ))
            }
            ("command", Some(_)) => Ok(()),
            (_, Some(_)) => Err(Error::invalid(
                "familiar.argv",
                format!(
                    "only the command harness takes argv, not {:?}",
                    familiar.harness
                ),
            )),
            (_, None) => Ok(()),
        }
    }

    /// The harness and working directory of a member's run in `group`, or why it cannot run
    /// (reported on its reply).
    pub fn resolve(
        &self,
        group: &GroupConversation,
        familiar: &Familiar,
    ) -> std::result::Result<Resolved, String> {
        let cwd = member_cwd(group, familiar)?;
        let harness = self
            .harnesses
            .read()
            .get(&familiar.harness)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "harness {:?} is not registered in this process",
                    familiar.harness
                )
            })?;
        Ok(Resolved { harness, cwd })
    }
}

/// The checked working directory of a member's run. Process harnesses need one: inside the
/// group's project root, or the familiar's own absolute cwd when the group has no root.
fn member_cwd(
    group: &GroupConversation,
    familiar: &Familiar,
) -> std::result::Result<Option<String>, String> {
    let needs_cwd = PROCESS_HARNESSES.contains(&familiar.harness.as_str());
    let resolved = match (&group.project_root, &familiar.cwd) {
        (Some(root), cwd) => guard::resolve_cwd(root, cwd.as_deref()).map(Some),
        (None, Some(cwd)) if Path::new(cwd).is_absolute() => {
            guard::canonical_root(cwd).map(|dir| Some(dir.into()))
        }
        (None, Some(cwd)) => Err(Error::invalid(
            "cwd",
            format!("{cwd:?} is relative but the group has no project root"),
        )),
        (None, None) if needs_cwd => Err(Error::invalid(
            "cwd",
            "the group has no project root and the familiar names no cwd; a process harness needs one",
        )),
        (None, None) => Ok(None),
    };
    match resolved {
        Ok(path) => Ok(path.map(|p: PathBuf| p.to_string_lossy().into_owned())),
        Err(err) if needs_cwd => Err(err.to_string()),
        // In-process harnesses only see the cwd as information.
        Err(_) => Ok(None),
    }
}
