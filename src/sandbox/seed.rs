//! The Mango account the tests and the demo set up the same way: its groups and line on the
//! simulated Mango, and the portal settings that point at them, so the two never drift apart.

use super::mango::MangoSim;
use crate::context::Shared;
use crate::crypto::Slot;
use crate::portal::{store, PortalSettings};

/// A Mango account: its API keys, the line that calls go out on, and the extensions of the
/// trainee and experienced groups.
#[derive(Clone, Copy)]
pub struct MangoAccount<'a> {
    pub key: &'a str,
    pub salt: &'a str,
    pub line: &'a str,
    pub trainees: &'a str,
    pub experienced: &'a str,
}

impl MangoAccount<'_> {
    /// Adds the account to the simulated Mango: the trainee group (id 1), the experienced group
    /// (id 2) and the line, as "Load from Mango" will list them.
    pub fn add_to(&self, mango: &MangoSim) {
        mango.add_account(self.key, self.salt);
        mango.add_group(self.key, 1, "Стажёры / Trainees", self.trainees);
        mango.add_group(self.key, 2, "Опытные / Experienced", self.experienced);
        mango.add_line(self.key, self.line, "Main line");
    }

    /// The portal's settings using this account: the defaults, its key, its salt sealed for the
    /// portal, its line and its groups. Not saved; see [`seed_mango`].
    pub fn settings(&self, shared: &Shared, member_id: &str) -> PortalSettings {
        let mut s = PortalSettings::defaults(member_id, shared.clock.now());
        s.mango_api_key = Some(self.key.into());
        s.mango_api_salt = Some(
            shared
                .cipher
                .seal(Slot::mango_api_salt(member_id), self.salt),
        );
        s.line_number = self.line.into();
        s.trainee_extension = self.trainees.into();
        s.experienced_extension = self.experienced.into();
        s
    }
}

/// Adds `account` to the simulated Mango and saves the portal's settings using it, after
/// `adjust` (the demo shortens its windows; the tests keep the defaults).
pub async fn seed_mango(
    shared: &Shared,
    mango: &MangoSim,
    account: MangoAccount<'_>,
    member_id: &str,
    adjust: impl FnOnce(&mut PortalSettings),
) -> Result<(), crate::db::DbError> {
    account.add_to(mango);
    let mut settings = account.settings(shared, member_id);
    adjust(&mut settings);
    shared
        .db
        .run(move |c| store::save_settings(c, &settings))
        .await
}
