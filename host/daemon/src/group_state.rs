//! The probe groups vesperd applied, per guest: what `group list` shows and `group
//! remove NAME` unloads.

use std::collections::HashMap;
use std::sync::Mutex;

/// One group applied to a guest.
pub(crate) struct AppliedGroup {
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) modules: Vec<String>,
}

/// The groups applied per guest, as vesperd applied them (not kept across a restart
/// of vesperd: `group remove` then takes the group file).
#[derive(Default)]
pub(crate) struct Groups {
    pub(crate) applied: Mutex<HashMap<String, Vec<AppliedGroup>>>,
    /// One group operation at a time: a rollback never races another group's load.
    pub(crate) op: tokio::sync::Mutex<()>,
}

impl Groups {
    pub(crate) fn recorded(&self, guest: &str, group: &str) -> Option<(String, Vec<String>)> {
        let applied = self.applied.lock().expect("groups lock");
        applied
            .get(guest)?
            .iter()
            .find(|g| g.name == group)
            .map(|g| (g.source.clone(), g.modules.clone()))
    }

    pub(crate) fn forget(&self, guest: &str, group: &str) {
        let mut applied = self.applied.lock().expect("groups lock");
        if let Some(list) = applied.get_mut(guest) {
            list.retain(|g| g.name != group);
        }
    }
}
