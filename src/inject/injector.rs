//! Deciding many pods with one operator's settings, as the webhook does: the agent container
//! and credvend's volumes are rendered to JSON once per set of bindings instead of per pod,
//! and each binding is validated once per version instead of per pod.
//!
//! Both depend only on the bindings the pod's agent serves, the credentials port and the
//! settings, never on the pod; building the typed container, serializing it and dropping it
//! again was about a fifth of an injection's review in instruction counts, validating the
//! binding (its ARNs, duration, policies and STS endpoint against the allowlist) a twentieth.
//! An [`Injector`] keeps the rendered JSON under the served bindings' uids and
//! resourceVersions and the port, and a binding's validated form under its uid and
//! resourceVersion. The settings are the injector's own, fixed for its life, so nothing can be
//! served under other settings. Any change to a binding (its status included) gives it a new
//! resourceVersion, so a changed binding is validated and rendered afresh; a binding without
//! uid or resourceVersion (never one from the API server) is handled afresh every time. Only
//! bindings that pass are remembered: a refusal is rare, and its message names the namespace
//! of the pod at hand.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::Pod;

use super::patch::Served;
use super::{Candidates, Decision, InjectSettings, agent};
use crate::crd::{AWSRoleBinding, Validated};

/// Entries kept at most in each memo; when full, it starts over. A render is a few kilobytes,
/// a validated binding less, and a cluster reuses far fewer combinations of bindings and port
/// than this between changes.
const MAX_KEPT: usize = 256;

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
type RenderKey = (Vec<Version>, u16);

/// One version of one binding: its uid and resourceVersion.
type Version = (String, String);

/// [`super::decide`] for one operator's settings, remembering the agent's renders and the
/// bindings' validations.
pub struct Injector {
    settings: InjectSettings,
    renders: Memo<RenderKey, AgentJson>,
    validations: Memo<Version, Validated>,
}

impl Injector {
    pub fn new(settings: InjectSettings) -> Self {
        Injector {
            settings,
            renders: Memo::default(),
            validations: Memo::default(),
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
        let key = bindings
            .iter()
            .map(|served| version(served.binding))
            .collect::<Option<Vec<_>>>()
            .map(|ids| (ids, port));
        self.renders
            .get_or_try(key, || AgentJson::render(bindings, port, &self.settings))
    }

    /// `binding`'s validated form, from `validate` now or from an earlier call for the same
    /// version of the binding.
    pub(super) fn validated<E>(
        &self,
        binding: &AWSRoleBinding,
        validate: impl FnOnce() -> Result<Validated, E>,
    ) -> Result<Arc<Validated>, E> {
        self.validations.get_or_try(version(binding), validate)
    }

    #[cfg(test)]
    pub(super) fn renders_kept(&self) -> usize {
        self.renders.len()
    }

    #[cfg(test)]
    pub(super) fn validations_kept(&self) -> usize {
        self.validations.len()
    }
}

fn version(binding: &AWSRoleBinding) -> Option<Version> {
    let meta = &binding.metadata;
    Some((meta.uid.clone()?, meta.resource_version.clone()?))
}

/// A bounded map of computed values shared by the webhook's concurrent reviews.
struct Memo<K, V>(Mutex<HashMap<K, Arc<V>>>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq, V> Memo<K, V> {
    /// The value kept under `key`, or `compute`'s, kept when it succeeds. Without a key,
    /// `compute`'s value, kept nowhere.
    fn get_or_try<E>(
        &self,
        key: Option<K>,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let Some(key) = key else {
            return compute().map(Arc::new);
        };
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.clone());
        }
        // Computed outside the lock: two reviews may both compute the same key, and the
        // second insert replaces an equal value.
        let computed = Arc::new(compute()?);
        let mut kept = self.lock();
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(key, computed.clone());
        Ok(computed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<V>>> {
        // Each use is one lookup or one insert, so a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}
