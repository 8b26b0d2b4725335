//! The simulator's control panel for tests and the demo: start and stop, portals, users, CRM
//! data, faults to inject, and what was received.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::web;
use rand::Rng;
use serde_json::Value;

use super::events::*;
use super::php_form::*;
use super::*;

impl BitrixSim {
    /// Binds `127.0.0.1:{opts.port}` and runs the simulator on the current actix system.
    pub async fn start(opts: BitrixSimOptions) -> std::io::Result<BitrixSim> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", opts.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State {
            url: url.clone(),
            drain_per_sec: opts.drain_per_sec,
            burst: opts.burst,
            latency: opts.latency,
            ttl: opts.access_token_ttl_secs,
            portals: HashMap::new(),
            by_name: HashMap::new(),
            old_names: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            event_tokens: HashMap::new(),
            forced_redirects: HashMap::new(),
            sign_key: rand::thread_rng().gen(),
            calls: Vec::new(),
            rejections: HashMap::new(),
            outbox: Vec::new(),
            deliveries: Vec::new(),
            pending_deliveries: 0,
            oauth_unavailable: false,
            refresh_answer_delay: Duration::ZERO,
            app_unreachable: false,
            injector: Default::default(),
            lose_this_answer: false,
        }));
        let data = web::Data::from(state.clone());
        let server = crate::sandbox::serve(listener, move |cfg| {
            cfg.app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 << 20))
                .default_service(web::to(super::server::handle));
        })?;
        Ok(BitrixSim { state, url, server })
    }

    /// Stops the server (state stays readable).
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }

    pub(super) fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Base URL, `http://127.0.0.1:PORT`: the app's `B24_OAUTH_URL`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The OAuth server's REST endpoint, `{url}/rest/` (`SERVER_ENDPOINT`).
    pub fn server_endpoint(&self) -> String {
        format!("{}/rest/", self.url)
    }

    /// Creates portal `{name}.bitrix24.test` with user 1 as its administrator.
    ///
    /// # Panics
    /// If a portal with this name already exists.
    pub fn create_portal(&self, name: &str) -> SimPortal {
        let mut st = self.st();
        assert!(
            !st.by_name.contains_key(name),
            "bitrix sim: portal {name} already exists"
        );
        let member_id = rand_hex(16);
        let application_token = rand_hex(16);
        let mut users = BTreeMap::new();
        users.insert(1, true);
        st.portals.insert(
            member_id.clone(),
            Portal {
                member_id: member_id.clone(),
                name: name.to_string(),
                application_token: application_token.clone(),
                iframe_app_token: true,
                install_finished: false,
                users,
                contacts: BTreeMap::new(),
                deals: BTreeMap::new(),
                robots: Vec::new(),
                bindings: Vec::new(),
                comments: Vec::new(),
                event_sends: Vec::new(),
                bucket_level: 0.0,
                bucket_at: Instant::now(),
                faults: VecDeque::new(),
                lost_answers: HashMap::new(),
                method_faults: HashMap::new(),
                refreshes: 0,
                next_contact: 0,
                next_deal: 0,
                next_misc: 100,
            },
        );
        st.by_name.insert(name.to_string(), member_id.clone());
        st.old_names.remove(name);
        SimPortal {
            member_id,
            name: name.to_string(),
            domain: format!("{name}.bitrix24.test"),
            client_endpoint: format!("{}/p/{name}/rest/", st.url),
            application_token,
            admin_user_id: 1,
        }
    }

    /// Current state of a portal as a [`SimPortal`] (after renames and application token rotations).
    pub fn portal(&self, member_id: &str) -> SimPortal {
        let st = self.st();
        let p = st.portal(member_id);
        SimPortal {
            member_id: p.member_id.clone(),
            name: p.name.clone(),
            domain: st.domain(p),
            client_endpoint: st.client_endpoint(p),
            application_token: p.application_token.clone(),
            admin_user_id: 1,
        }
    }

    /// Adds (or changes) a user of the portal.
    pub fn add_user(&self, member_id: &str, user_id: u64, admin: bool) {
        self.st().portal_mut(member_id).users.insert(user_id, admin);
    }

    /// A fresh token chain for a user, as when the user opens the app in the iframe.
    pub fn login(&self, member_id: &str, user_id: u64) -> UserAuth {
        let mut st = self.st();
        st.portal(member_id);
        st.issue_chain(member_id, user_id)
    }

    /// What Bitrix24's browser POSTs to the app / installer URL, with a fresh token chain.
    pub fn iframe_request(
        &self,
        member_id: &str,
        user_id: u64,
        placement: &str,
        lang: &str,
    ) -> IframeRequest {
        let mut st = self.st();
        let chain = st.issue_chain(member_id, user_id);
        let p = st.portal(member_id);
        let domain = st.domain(p);
        let app_token = p.application_token.clone();
        let with_app_token = p.iframe_app_token;
        let s = |a: &str, b: String| (a.to_string(), b);
        let mut req = IframeRequest {
            query: vec![
                s("DOMAIN", domain),
                s("PROTOCOL", "1".into()),
                s("LANG", lang.into()),
                s("APP_SID", rand_hex(16)),
            ],
            form: vec![
                s("AUTH_ID", chain.access_token),
                s("AUTH_EXPIRES", st.ttl.to_string()),
                s("REFRESH_ID", chain.refresh_token),
                s("SERVER_ENDPOINT", st.server_endpoint()),
                s("member_id", member_id.into()),
                s("status", "F".into()),
                s("PLACEMENT", placement.into()),
                s("PLACEMENT_OPTIONS", "{}".into()),
                s("APPLICATION_TOKEN", app_token),
                s("APPLICATION_SCOPE", SANDBOX_SCOPE.into()),
            ],
        };
        if !with_app_token {
            req.form.retain(|(k, _)| k != "APPLICATION_TOKEN");
        }
        req
    }

    /// Whether this portal's iframe / installer POSTs carry `APPLICATION_TOKEN` (default yes;
    /// Bitrix24 documented the field only recently and portals may leave it out).
    pub fn set_iframe_application_token(&self, member_id: &str, sent: bool) {
        self.st().portal_mut(member_id).iframe_app_token = sent;
    }

    /// What `BX24.installFinish()` in the installer page triggers: the app counts as installed
    /// and ONAPPINSTALL goes, asynchronously, to every handler bound for it, with the installing
    /// administrator's (user 1's) full auth: tokens, `expires_in`, endpoints, `user_id` and the
    /// `application_token`. Returns how many deliveries were queued; await [`BitrixSim::settle`].
    pub fn finish_install(&self, member_id: &str) -> usize {
        let (n, outbox) = {
            let mut st = self.st();
            st.portal_mut(member_id).install_finished = true;
            let data = [
                ("VERSION", "1"),
                ("ACTIVE", "Y"),
                ("INSTALLED", "Y"),
                ("LANGUAGE_ID", "ru"),
            ];
            let n = st.queue_event(member_id, "ONAPPINSTALL", &data, 1, true);
            (n, std::mem::take(&mut st.outbox))
        };
        deliver_later(self.state.clone(), outbox);
        n
    }

    /// Whether `BX24.installFinish()` ran ([`BitrixSim::finish_install`]).
    pub fn install_finished(&self, member_id: &str) -> bool {
        self.st().portal(member_id).install_finished
    }

    /// Waits until every queued event delivery has been attempted.
    ///
    /// # Panics
    /// If deliveries are still pending after 30 s.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.st().pending_deliveries > 0 {
            assert!(
                Instant::now() < deadline,
                "bitrix sim: event deliveries did not finish within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every asynchronous event delivery (see [`Delivery`]), in order; [`BitrixSim::send_event`]
    /// returns its statuses itself and is not listed.
    pub fn deliveries(&self, member_id: &str) -> Vec<Delivery> {
        self.st()
            .deliveries
            .iter()
            .filter(|d| d.member_id == member_id)
            .cloned()
            .collect()
    }

    /// While `true`, the OAuth server (`/oauth/token/`, `/rest/app.info`) answers 503.
    pub fn set_oauth_unavailable(&self, unavailable: bool) {
        self.st().oauth_unavailable = unavailable;
    }

    /// The token endpoint consumes a refresh token at once but answers only after `d`
    /// (`Duration::ZERO` turns it off): a slow Bitrix24, or, when the client gives up or dies
    /// first, a refresh whose answer is lost.
    pub fn delay_refresh_answers(&self, d: Duration) {
        self.st().refresh_answer_delay = d;
    }

    /// While `true`, event deliveries fail as if the app's public URL could not be reached
    /// (a firewall, a wrong `APP_PUBLIC_URL`); they are recorded without a status.
    pub fn set_app_unreachable(&self, unreachable: bool) {
        self.st().app_unreachable = unreachable;
    }

    /// Form-urlencoded ONAPPINSTALL event with a fresh token chain for user 1.
    pub fn onappinstall_body(&self, member_id: &str) -> String {
        let mut st = self.st();
        let mut pairs = vec![
            ("event".to_string(), "ONAPPINSTALL".to_string()),
            ("data[VERSION]".into(), "1".into()),
            ("data[ACTIVE]".into(), "Y".into()),
            ("data[INSTALLED]".into(), "Y".into()),
            ("data[LANGUAGE_ID]".into(), "ru".into()),
            ("ts".into(), now_ts().to_string()),
        ];
        pairs.extend(st.auth_pairs(member_id, 1, true, true));
        encode_pairs(&pairs, false)
    }

    /// The app's current `application_token` on the portal.
    pub fn application_token(&self, member_id: &str) -> String {
        self.st().portal(member_id).application_token.clone()
    }

    /// Adds a contact with phones `(VALUE_TYPE, VALUE)`; returns its id.
    pub fn add_contact(&self, member_id: &str, phones: &[(&str, &str)]) -> u64 {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.next_contact += 1;
        let id = p.next_contact;
        let mut list = Vec::new();
        for (t, v) in phones {
            p.next_misc += 1;
            list.push((p.next_misc, t.to_string(), v.to_string()));
        }
        p.contacts.insert(
            id,
            Contact {
                phones: list,
                created: chrono::Utc::now().to_rfc3339(),
            },
        );
        id
    }

    /// Adds a deal, optionally with a (primary) contact; returns its id.
    pub fn add_deal(&self, member_id: &str, contact_id: Option<u64>) -> u64 {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.next_deal += 1;
        let id = p.next_deal;
        p.deals.insert(
            id,
            Deal {
                contacts: contact_id.into_iter().collect(),
                created: chrono::Utc::now().to_rfc3339(),
            },
        );
        id
    }

    /// Deletes a deal, as a user in the CRM would: reading it or commenting on it then fails.
    pub fn delete_deal(&self, member_id: &str, deal_id: u64) {
        self.st().portal_mut(member_id).deals.remove(&deal_id);
    }

    /// Links one more contact to a deal (the first linked one is primary).
    pub fn link_contact(&self, member_id: &str, deal_id: u64, contact_id: u64) {
        let mut st = self.st();
        if let Some(d) = st.portal_mut(member_id).deals.get_mut(&deal_id) {
            if !d.contacts.contains(&contact_id) {
                d.contacts.push(contact_id);
            }
        }
    }

    /// Every access token of the portal now answers 401 `expired_token`.
    pub fn expire_access_tokens(&self, member_id: &str) {
        let mut st = self.st();
        for t in st.access.values_mut() {
            if t.member_id == member_id {
                t.expired = true;
            }
        }
    }

    /// Delay before every answer.
    pub fn set_latency(&self, d: Duration) {
        self.st().latency = d;
    }

    /// From now on a seeded fraction of REST calls to any portal get a peer fault (503, 500, no
    /// answer, dropped connection, a late answer); the counts so far stay.
    pub fn set_faults(&self, plan: crate::sandbox::faults::FaultPlan) {
        self.st().injector.set_plan(plan);
    }

    /// The peer faults injected so far, and how many REST calls were drawn for.
    pub fn fault_counts(&self) -> crate::sandbox::faults::FaultCounts {
        self.st().injector.counts()
    }

    /// The next `n` REST calls to the portal fail with `fault`.
    pub fn fail_next(&self, member_id: &str, n: usize, fault: Fault) {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` calls of `method` on the portal fail with `fault`: a call on its own with that
    /// HTTP answer, a command inside a `batch` with that error in `result_error`.
    pub fn fail_method_next(&self, member_id: &str, method: &str, n: usize, fault: Fault) {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        p.method_faults
            .entry(method.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` successful calls of `method` on the portal are carried out (a comment is
    /// added, an event accepted) but their answers are lost: the connection is cut, as when a
    /// proxy or the network fails after Bitrix24 did the work. The app cannot know it happened.
    /// Inside a `batch`, the whole batch's answer is lost.
    pub fn lose_answers(&self, member_id: &str, method: &str, n: usize) {
        let mut st = self.st();
        let p = st.portal_mut(member_id);
        *p.lost_answers.entry(method.to_owned()).or_default() += n;
    }

    /// Renames the portal; its old endpoint answers 302 to the same method on the new one.
    pub fn rename_portal(&self, member_id: &str, new_name: &str) {
        let mut st = self.st();
        let old = st.portal(member_id).name.clone();
        if old == new_name {
            return;
        }
        st.by_name.remove(&old);
        st.old_names.insert(old, member_id.to_string());
        st.old_names.remove(new_name);
        st.by_name
            .insert(new_name.to_string(), member_id.to_string());
        st.portal_mut(member_id).name = new_name.to_string();
    }

    /// Makes the portal's REST endpoint answer every call with a 302 to `base` (e.g. another
    /// portal's `client_endpoint`) while the OAuth server's app.info keeps reporting the
    /// portal's real endpoint: a redirect that Bitrix24 itself does not confirm.
    pub fn redirect_portal_to(&self, member_id: &str, base: &str) {
        let mut st = self.st();
        let name = st.portal(member_id).name.clone();
        st.forced_redirects.insert(name, base.to_string());
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.st().calls.clone()
    }

    /// Requests for one method (`crm.deal.get`, `batch`, `oauth.token`, `oauth.app.info`…).
    pub fn calls_to(&self, method: &str) -> Vec<RecordedCall> {
        self.st()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Registered robots: `(CODE, fields with upper-case top-level keys)`.
    pub fn robots(&self, member_id: &str) -> Vec<(String, Value)> {
        self.st()
            .portal(member_id)
            .robots
            .iter()
            .map(|r| (r.code.clone(), Value::Object(r.fields.clone())))
            .collect()
    }

    /// Event bindings: `(EVENT, handler)`.
    pub fn bound_events(&self, member_id: &str) -> Vec<(String, String)> {
        self.st()
            .portal(member_id)
            .bindings
            .iter()
            .map(|b| (b.event.clone(), b.handler.clone()))
            .collect()
    }

    /// Accepted `bizproc.event.send` parameters, in order.
    pub fn event_sends(&self, member_id: &str) -> Vec<Value> {
        self.st().portal(member_id).event_sends.clone()
    }

    /// Accepted `bizproc.event.send`s and timeline comments on every portal: cheap enough to
    /// poll many times a second (the bench waits on it instead of on the app's database).
    pub fn reports_received(&self) -> (usize, usize) {
        let st = self.st();
        st.portals.values().fold((0, 0), |(sends, comments), p| {
            (sends + p.event_sends.len(), comments + p.comments.len())
        })
    }

    /// Timeline comments added to a deal, in order.
    pub fn timeline_comments(&self, member_id: &str, deal_id: u64) -> Vec<String> {
        self.st()
            .portal(member_id)
            .comments
            .iter()
            .filter(|(_, d, _)| *d == deal_id)
            .map(|(_, _, c)| c.clone())
            .collect()
    }

    /// Number of successful `refresh_token` grants for the portal.
    pub fn refresh_count(&self, member_id: &str) -> usize {
        self.st().portal(member_id).refreshes
    }

    /// Every access and refresh token issued for the portal so far (including refresh grants):
    /// the secrets a test looks for where they must not appear, such as the app's logs.
    pub fn issued_tokens(&self, member_id: &str) -> Vec<String> {
        let st = self.st();
        let access = st.access.iter().filter(|(_, t)| t.member_id == member_id);
        let refresh = st.refresh.iter().filter(|(_, t)| t.member_id == member_id);
        access
            .map(|(k, _)| k.clone())
            .chain(refresh.map(|(k, _)| k.clone()))
            .collect()
    }

    /// Every `event_token` issued with a robot call on the portal so far.
    pub fn issued_event_tokens(&self, member_id: &str) -> Vec<String> {
        self.st()
            .event_tokens
            .iter()
            .filter(|(_, m)| m.as_str() == member_id)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// How many answers (including batch sub-answers) carried this `error` code.
    pub fn rejections(&self, error: &str) -> usize {
        self.st().rejections.get(error).copied().unwrap_or(0)
    }
}

impl IframeRequest {
    /// The form as an `application/x-www-form-urlencoded` body.
    pub fn to_form_body(&self) -> String {
        encode_pairs(&self.form, true)
    }

    /// The query parameters as a query string (without `?`).
    pub fn query_string(&self) -> String {
        encode_pairs(&self.query, true)
    }

    /// Value of one form field.
    pub fn form_value(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
