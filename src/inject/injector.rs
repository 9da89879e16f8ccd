//! Deciding many pods with one operator's settings, as the webhook does: the agent container
//! and credvend's volumes are rendered to JSON once per set of bindings instead of per pod.
//!
//! Both depend only on the bindings the pod's agent serves, the credentials port and the
//! settings, never on the pod; building the typed container, serializing it and dropping it
//! again was about a fifth of an injection's review in instruction counts. An [`Injector`]
//! keeps the rendered JSON under the served bindings' uids and resourceVersions and the port.
//! The settings are the injector's own, fixed for its life, so a render can never be served
//! under other settings. Any change to a binding (its status included) gives it a new
//! resourceVersion, so a changed binding is rendered afresh; a binding without uid or
//! resourceVersion (never one from the API server) is rendered every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::Pod;

use super::patch::Served;
use super::{Candidates, Decision, InjectSettings, agent};

/// Renders kept at most; when full, the memo starts over. Each is a few kilobytes, and a
/// cluster reuses far fewer combinations of bindings and port than this between changes.
const MAX_RENDERS: usize = 256;

/// The agent container and credvend's four volumes, as the JSON the patch carries.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AgentJson {
    pub container: Vec<u8>,
    pub volumes: Vec<Vec<u8>>,
}

impl AgentJson {
    /// Renders what [`agent::container`] and [`agent::volumes`] build.
    pub fn render(
        bindings: &[Served<'_>],
        port: u16,
        settings: &InjectSettings,
    ) -> Result<AgentJson, serde_json::Error> {
        let container = serde_json::to_vec(&agent::container(bindings, port, settings))?;
        let volumes = agent::volumes(bindings, settings)
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()?;
        Ok(AgentJson { container, volumes })
    }
}

/// Which render a pod gets: each served binding's uid and resourceVersion, in order (the
/// default binding first), and the credentials port.
type RenderKey = (Vec<(String, String)>, u16);

/// [`super::decide`] for one operator's settings, remembering the agent's renders.
pub struct Injector {
    settings: InjectSettings,
    renders: Mutex<HashMap<RenderKey, Arc<AgentJson>>>,
}

impl Injector {
    pub fn new(settings: InjectSettings) -> Self {
        Injector {
            settings,
            renders: Mutex::new(HashMap::new()),
        }
    }

    /// The same decision as [`super::decide`] with these settings.
    pub fn decide(&self, pod: &Pod, candidates: &Candidates<'_>) -> Decision {
        super::decide_with(pod, candidates, &self.settings, Some(self))
    }

    /// The agent's JSON for `bindings` and `port`, rendered now or earlier.
    pub(super) fn agent_json(
        &self,
        bindings: &[Served<'_>],
        port: u16,
    ) -> Result<Arc<AgentJson>, serde_json::Error> {
        let Some(key) = key(bindings, port) else {
            return AgentJson::render(bindings, port, &self.settings).map(Arc::new);
        };
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.clone());
        }
        // Rendered outside the lock: two reviews may both render the same key, and the
        // second insert replaces an equal value.
        let rendered = Arc::new(AgentJson::render(bindings, port, &self.settings)?);
        let mut renders = self.lock();
        if renders.len() >= MAX_RENDERS {
            renders.clear();
        }
        renders.insert(key, rendered.clone());
        Ok(rendered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RenderKey, Arc<AgentJson>>> {
        // Each use is one lookup or one insert, so a panic elsewhere cannot leave it torn.
        self.renders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(super) fn renders_kept(&self) -> usize {
        self.lock().len()
    }
}

fn key(bindings: &[Served<'_>], port: u16) -> Option<RenderKey> {
    let ids = bindings
        .iter()
        .map(|served| {
            let meta = &served.binding.metadata;
            Some((meta.uid.clone()?, meta.resource_version.clone()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((ids, port))
}
